package query

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/sightlinehq/sightline/internal/pgsql"
)

// Type is the SQL type of a parameter.
type Type string

// Parameter types.
const (
	Text        Type = "text"
	Integer     Type = "integer"
	Bigint      Type = "bigint"
	Numeric     Type = "numeric"
	Boolean     Type = "boolean"
	Date        Type = "date"
	Timestamptz Type = "timestamptz"
	UUID        Type = "uuid"
)

// Types lists the parameter types, in the order the docs give them.
var Types = []Type{Text, Integer, Bigint, Numeric, Boolean, Date, Timestamptz, UUID}

// Param is one named parameter of a query, :name in its SQL.
type Param struct {
	// Name is how the SQL names it (:name) and how a request gives it
	// (?name=): lower case letters, digits and _.
	Name string
	// Type is its SQL type; a request's value must parse as one.
	Type Type
	// Required: a request without it is refused. Otherwise a request
	// without it (or with it empty) gets Default, or NULL.
	Required bool
	// Default is the value of an optional parameter a request does not
	// give, written as a request would give it; "" for NULL.
	Default string
	// Enum, when set, lists the only values a request may give.
	Enum []string
	// Description is for the docs and the OpenAPI document.
	Description string
}

// Query is a named read of a projection's tables. The same type
// declares queries in Go (projections.Queryable) and in YAML.
type Query struct {
	// Name identifies the query within its projection: lower case
	// letters, digits and _.
	Name string
	// Description is for the docs and the OpenAPI document.
	Description string
	// Params are the :name parameters the SQL and Stream use.
	Params []Param
	// SQL is one SELECT (or WITH … SELECT) statement over the
	// projection's own tables, named unqualified. Parameters are :name;
	// a value is always bound, never spliced into the text.
	SQL string
	// One: the query answers a single object, or 404 when there is no
	// row. Otherwise it answers a page of items.
	One bool
	// PageBy orders the items of a list query and pages them by keyset:
	// columns of the result, each optionally followed by asc or desc,
	// together unique (end with a primary key). A list query needs it.
	PageBy []string
	// Stream, when set, is an SQL expression over the parameters naming
	// the one stream the query reads, such as 'order-' || :id. It makes
	// per-stream read-your-writes possible and tells when a parked event
	// holds that stream.
	Stream string
	// Route, when set, is one more path that serves the query, in echo's
	// syntax: /v1/orders/:id. Its :segments are parameters.
	Route string
}

// Names a parameter may not take: the query routes' own.
var Reserved = []string{"limit", "cursor", "min_position", "min_revision"}

// Page sizes of list queries.
const (
	LimitDefault = 50
	LimitMax     = 1000
)

var validName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,62}$`)

// sideEffecting are built-in functions a declared query may not call.
// Some act whatever the transaction's access mode (creating and reading
// large objects, advisory locks, settings, other sessions, the server's
// files and state); some run SQL given as text, which would let a
// request's value become a statement, or read whole schemas past the check
// of the query's tables; the rest a read-only transaction refuses anyway,
// and are refused here at load instead of on every request.
var sideEffecting = regexp.MustCompile(`^(lo_\w+|lowrite|loread|nextval|setval|set_config|pg_notify|pg_(try_)?advisory_\w+|` +
	`pg_terminate_backend|pg_cancel_backend|pg_reload_conf|pg_rotate_logfile|pg_switch_wal|pg_promote|pg_create_restore_point|` +
	`pg_file_\w+|pg_read_\w*file|pg_ls_\w+|pg_logical_emit_message|pg_replication_\w+|pg_(create|drop)_\w*slot|pg_stat_reset\w*|dblink\w*|` +
	`(query|cursor|table|schema|database)_to_xml\w*|ts_stat|ts_rewrite)$`)

// sideEffects refuses a call of a sideEffecting function in toks.
func sideEffects(toks []pgsql.Token) error {
	for i, t := range toks {
		if t.Kind != pgsql.Word && t.Kind != pgsql.Quoted {
			continue
		}
		name := t.Text
		if len(name) > 2 && (name[0] == 'u' || name[0] == 'U') && name[1] == '&' {
			if t.Kind == pgsql.Quoted && strings.ContainsAny(name, `\`) || i+2 < len(toks) && toks[i+2].Is("uescape") {
				return fmt.Errorf("identifier %s: write names without Unicode escapes", name)
			}
			name = name[2:]
		}
		if strings.HasPrefix(name, `"`) {
			name = strings.ReplaceAll(strings.Trim(name, `"`), `""`, `"`)
		} else {
			name = strings.ToLower(name)
		}
		if !sideEffecting.MatchString(name) {
			continue
		}
		for _, n := range toks[i+1:] {
			if n.Significant() {
				if n.Text == "(" {
					return fmt.Errorf("calls %s(), which a declared query may not: it acts beyond reading its projection's tables", name)
				}
				break
			}
		}
	}
	return nil
}

// hasOuterJoin reports whether toks join LEFT, RIGHT or FULL.
func hasOuterJoin(toks []pgsql.Token) bool {
	for _, t := range toks {
		if t.Is("left") || t.Is("right") || t.Is("full") {
			return true // also a call of left() or right(): safe, only slower pages
		}
	}
	return false
}

// key is one column of a list query's ordering.
type key struct {
	column string
	desc   bool
}

// Compiled is a query checked on its own, before the database has seen it.
type Compiled struct {
	Query
	// Projection is the projection the query belongs to.
	Projection string

	sql         string // SQL with $n placeholders
	args        []int  // the index in Params of each $n
	stream      string // SELECT (Stream)::text, numbered on its own
	streamArgs  []int
	pageBy      []key
	routeParams []string
	outerJoin   bool // the SQL has a LEFT, RIGHT or FULL join
}

// Compile checks q on its own: names, types, defaults, the SQL's shape and
// parameters, the ordering and the route.
func Compile(projection string, q Query) (*Compiled, error) {
	if !validName.MatchString(q.Name) {
		return nil, fmt.Errorf("query name %q: want lower case letters, digits and _, starting with a letter, at most 63", q.Name)
	}
	c := &Compiled{Query: q, Projection: projection}
	byName := map[string]int{}
	for i, p := range q.Params {
		switch {
		case !validName.MatchString(p.Name):
			return nil, fmt.Errorf("param %q: want lower case letters, digits and _, starting with a letter", p.Name)
		case slices.Contains(Reserved, p.Name):
			return nil, fmt.Errorf("param %s: the name is the route's own (%s); choose another", p.Name, strings.Join(Reserved, ", "))
		case !slices.Contains(Types, p.Type):
			return nil, fmt.Errorf("param %s: type %q: want one of %s", p.Name, p.Type, typeList())
		case p.Required && p.Default != "":
			return nil, fmt.Errorf("param %s: a required param has no default", p.Name)
		}
		if _, dup := byName[p.Name]; dup {
			return nil, fmt.Errorf("param %s is declared twice", p.Name)
		}
		byName[p.Name] = i
		for _, v := range p.Enum {
			if _, err := parse(p.Type, v); err != nil {
				return nil, fmt.Errorf("param %s: enum value %q: %w", p.Name, v, err)
			}
		}
		if p.Default != "" {
			if _, err := parse(p.Type, p.Default); err != nil {
				return nil, fmt.Errorf("param %s: default %q: %w", p.Name, p.Default, err)
			}
			if len(p.Enum) > 0 && !slices.Contains(p.Enum, p.Default) {
				return nil, fmt.Errorf("param %s: default %q is not among its enum values", p.Name, p.Default)
			}
		}
	}
	typeOf := func(name string) (string, error) {
		i, ok := byName[name]
		if !ok {
			return "", fmt.Errorf("names :%s, which is not a declared param (%s)", name, c.paramList())
		}
		return string(q.Params[i].Type), nil
	}
	used := map[string]bool{}

	toks, err := pgsql.Statement(q.SQL)
	if err != nil {
		return nil, fmt.Errorf("sql: %w", err)
	}
	if first := toks[0]; !(first.Is("select") || first.Is("with") || first.Is("values") || first.Is("table") || first.Text == "(") {
		return nil, fmt.Errorf("sql: a query is one SELECT (or WITH … SELECT) statement; this one starts with %s", first.Text)
	}
	if err := sideEffects(toks); err != nil {
		return nil, fmt.Errorf("sql: %w", err)
	}
	c.outerJoin = hasOuterJoin(toks)
	named, err := pgsql.Bind(toks, typeOf)
	if err != nil {
		return nil, fmt.Errorf("sql: %w", err)
	}
	c.sql = named.SQL
	for _, name := range named.Params {
		c.args = append(c.args, byName[name])
		used[name] = true
	}

	if q.Stream != "" {
		toks, err := pgsql.Scan(q.Stream)
		if err != nil {
			return nil, fmt.Errorf("stream: %w", err)
		}
		for _, t := range toks {
			if t.Kind == pgsql.Semicolon {
				return nil, errors.New("stream: one SQL expression, without ;")
			}
		}
		if err := sideEffects(toks); err != nil {
			return nil, fmt.Errorf("stream: %w", err)
		}
		named, err := pgsql.Bind(toks, typeOf)
		if err != nil {
			return nil, fmt.Errorf("stream: %w", err)
		}
		c.stream = "SELECT (" + named.SQL + "\n)::text"
		for _, name := range named.Params {
			c.streamArgs = append(c.streamArgs, byName[name])
			used[name] = true
		}
	}
	for _, p := range q.Params {
		if !used[p.Name] {
			return nil, fmt.Errorf("param %s is declared but neither sql nor stream uses it (:%s)", p.Name, p.Name)
		}
	}

	switch {
	case q.One && len(q.PageBy) > 0:
		return nil, errors.New("page_by: a query of one row has no pages")
	case !q.One && len(q.PageBy) == 0:
		return nil, errors.New("page_by: a list query needs a unique ordering to page by, such as [id]")
	}
	seen := map[string]bool{}
	for _, s := range q.PageBy {
		k, err := parseKey(s)
		if err != nil {
			return nil, fmt.Errorf("page_by: %w", err)
		}
		if seen[k.column] {
			return nil, fmt.Errorf("page_by: %s appears twice", k.column)
		}
		seen[k.column] = true
		c.pageBy = append(c.pageBy, k)
	}

	if q.Route != "" {
		if err := c.checkRoute(byName); err != nil {
			return nil, fmt.Errorf("route %q: %w", q.Route, err)
		}
	}
	return c, nil
}

func parseKey(s string) (key, error) {
	f := strings.Fields(s)
	if len(f) == 0 || len(f) > 2 {
		return key{}, fmt.Errorf("%q: want a column, optionally followed by asc or desc", s)
	}
	k := key{column: f[0]}
	if !validName.MatchString(k.column) {
		return key{}, fmt.Errorf("%q: %q is not a column name (lower case letters, digits and _)", s, k.column)
	}
	if len(f) == 2 {
		switch strings.ToLower(f[1]) {
		case "asc":
		case "desc":
			k.desc = true
		default:
			return key{}, fmt.Errorf("%q: want asc or desc after the column", s)
		}
	}
	return k, nil
}

var routeSegment = regexp.MustCompile(`^(:[a-z][a-z0-9_]*|[A-Za-z0-9._~-]+)$`)

func (c *Compiled) checkRoute(byName map[string]int) error {
	r := c.Route
	if !strings.HasPrefix(r, "/") || strings.HasSuffix(r, "/") && r != "/" {
		return errors.New("a path starting with / and not ending with one")
	}
	for _, own := range serverPaths {
		if r == own || strings.HasPrefix(r, own+"/") {
			return errors.New("that path is the server's own")
		}
	}
	for _, seg := range strings.Split(r[1:], "/") {
		if !routeSegment.MatchString(seg) {
			return fmt.Errorf("segment %q: want a word or a :param", seg)
		}
		if name, ok := strings.CutPrefix(seg, ":"); ok {
			i, declared := byName[name]
			if !declared {
				return fmt.Errorf("segment :%s is not a declared param (%s)", name, c.paramList())
			}
			if slices.Contains(c.routeParams, name) {
				return fmt.Errorf("segment :%s appears twice", name)
			}
			if !c.Params[i].Required {
				return fmt.Errorf("segment :%s names an optional param; a path segment is always given: make it required", name)
			}
			c.routeParams = append(c.routeParams, name)
		}
	}
	return nil
}

// serverPaths are the API's own paths, and those under them: no query's
// route may take one.
var serverPaths = []string{"/v1/projections", "/v1/streams", "/ui", "/healthz", "/readyz", "/metrics", "/openapi.json"}

// RouteParams are the params the Route's path segments give.
func (c *Compiled) RouteParams() []string { return c.routeParams }

func (c *Compiled) paramList() string {
	if len(c.Params) == 0 {
		return "it declares none"
	}
	names := make([]string, len(c.Params))
	for i, p := range c.Params {
		names[i] = p.Name
	}
	return strings.Join(names, ", ")
}

func typeList() string {
	s := make([]string, len(Types))
	for i, t := range Types {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}
