package declarative

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/jackc/pgx/v5"
	"go.yaml.in/yaml/v3"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/internal/pgsql"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/query"
)

// Spec is a declarative projection as written in YAML.
type Spec struct {
	// Name and Version: as projections.Projection's.
	Name    string `yaml:"name"`
	Version int    `yaml:"version"`
	// Streams lists the stream prefixes the projection reads ("order-").
	Streams []string `yaml:"streams"`
	// Segments splits the projection's streams among that many segments,
	// applied in parallel (projections.Segmenter); 0 or 1: not split.
	// The handlers of a segmented projection must not depend on the order
	// of events across streams.
	Segments int `yaml:"segments"`
	// Tables maps each table to the SQL that creates it. Table names in all
	// SQL are unqualified: they resolve to the projection's own schema.
	Tables map[string]string `yaml:"tables"`
	// Handlers maps an event type to the SQL run for each event of it.
	// The SQL names event fields as :stream_id, :revision, :position,
	// :event_id, :type, :data (jsonb), :metadata (jsonb) and :created_at.
	Handlers map[string]string `yaml:"handlers"`
	// Queries are the projection's declared queries, by name, in the order
	// QueryOrder gives (the file's; by name when it is empty).
	Queries    map[string]QuerySpec `yaml:"queries"`
	QueryOrder []string             `yaml:"-"`
}

// QuerySpec is a declared query as written in YAML; see query.Query.
type QuerySpec struct {
	Description string               `yaml:"description"`
	Params      map[string]ParamSpec `yaml:"params"`
	// ParamOrder is the params' order: the file's, by name when empty.
	ParamOrder []string `yaml:"-"`
	SQL        string   `yaml:"sql"`
	One        bool     `yaml:"one"`
	PageBy     []string `yaml:"page_by"`
	Stream     string   `yaml:"stream"`
	Route      string   `yaml:"route"`
}

// ParamSpec is a query's parameter as written in YAML; see query.Param.
type ParamSpec struct {
	Type        query.Type `yaml:"type"`
	Required    bool       `yaml:"required"`
	Default     string     `yaml:"default"`
	Enum        []string   `yaml:"enum"`
	Description string     `yaml:"description"`
}

// query is the spec as a query.Query.
func (q QuerySpec) query(name string) query.Query {
	out := query.Query{Name: name, Description: q.Description, SQL: q.SQL, One: q.One, PageBy: q.PageBy, Stream: q.Stream, Route: q.Route}
	for _, p := range ordered(q.Params, q.ParamOrder) {
		ps := q.Params[p]
		out.Params = append(out.Params, query.Param{Name: p, Type: ps.Type, Required: ps.Required, Default: ps.Default, Enum: ps.Enum, Description: ps.Description})
	}
	return out
}

// ordered is m's keys in order, then any others by name.
func ordered[V any](m map[string]V, order []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, k := range order {
		if _, ok := m[k]; ok && !seen[k] {
			out = append(out, k)
			seen[k] = true
		}
	}
	var rest []string
	for k := range m {
		if !seen[k] {
			rest = append(rest, k)
		}
	}
	sort.Strings(rest)
	return append(out, rest...)
}

// params are the event fields a handler may name, with their SQL types.
var params = map[string]string{
	"stream_id": "text", "revision": "bigint", "position": "text", "event_id": "uuid",
	"type": "text", "data": "jsonb", "metadata": "jsonb", "created_at": "timestamptz",
}

func (e paramValues) value(name string) any {
	switch name {
	case "stream_id":
		return e.StreamID
	case "revision":
		return int64(e.Revision)
	case "position":
		return e.Position.String()
	case "event_id":
		return e.EventID
	case "type":
		return e.Type
	case "data":
		return string(e.Data)
	case "metadata":
		return string(e.Metadata)
	case "created_at":
		return e.CreatedAt
	}
	panic("declarative: unknown parameter " + name) // names are checked at load
}

type paramValues eventstore.RecordedEvent

// handler is one event type's SQL with its named parameters made positional.
type handler struct {
	sql    string
	params []string
}

// Projection runs a Spec.
type Projection struct {
	spec     Spec
	source   string // the file, when it came from one
	tables   []string
	handlers map[string]handler
	queries  []query.Query
	prepared prepared // the handler statements prepared on each connection
}

var (
	_ projections.Projection = (*Projection)(nil)
	_ projections.Queryable  = (*Projection)(nil)
	_ projections.SQLChecker = (*Projection)(nil)
	_ projections.Sourced    = (*Projection)(nil)
)

// Load reads a projection from a YAML file.
func Load(path string) (*Projection, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var spec Spec
	if err := dec.Decode(&spec); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	spec.QueryOrder = keys(&doc, "queries")
	for name, q := range spec.Queries {
		q.ParamOrder = keys(&doc, "queries", name, "params")
		spec.Queries[name] = q
	}
	p, err := New(spec)
	if err != nil {
		return nil, prefixEach(path+": ", err)
	}
	p.source = path
	return p, nil
}

// keys are the keys, in order, of the mapping at path in a YAML document.
func keys(n *yaml.Node, path ...string) []string {
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	for _, step := range path {
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == step {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	if n.Kind != yaml.MappingNode {
		return nil
	}
	var out []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		out = append(out, n.Content[i].Value)
	}
	return out
}

// LoadDir reads every *.yaml and *.yml file of dir, in name order.
func LoadDir(dir string) ([]projections.Projection, error) {
	var files []string
	for _, pattern := range []string{"*.yaml", "*.yml"} {
		m, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return nil, err
		}
		files = append(files, m...)
	}
	sort.Strings(files)
	var out []projections.Projection
	var errs []error
	for _, f := range files {
		p, err := Load(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...) // every file's problems at once
	}
	return out, nil
}

// prefixEach prefixes each of the errors err joins, or err itself.
func prefixEach(prefix string, err error) error {
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return fmt.Errorf("%s%w", prefix, err)
	}
	var out []error
	for _, e := range joined.Unwrap() {
		out = append(out, prefixEach(prefix, e))
	}
	return errors.Join(out...)
}

// New checks spec and returns its projection.
func New(spec Spec) (*Projection, error) {
	switch {
	case spec.Name == "":
		return nil, errors.New("projection has no name")
	case len(spec.Streams) == 0:
		return nil, fmt.Errorf("projection %s: streams lists no stream prefix", spec.Name)
	case len(spec.Tables) == 0:
		return nil, fmt.Errorf("projection %s: tables is empty", spec.Name)
	case len(spec.Handlers) == 0:
		return nil, fmt.Errorf("projection %s: handlers is empty", spec.Name)
	case spec.Segments < 0 || spec.Segments > projections.MaxSegments:
		return nil, fmt.Errorf("projection %s: segments must be from 1 to %d, not %d", spec.Name, projections.MaxSegments, spec.Segments)
	}
	p := &Projection{spec: spec, handlers: map[string]handler{}}
	for t := range spec.Tables {
		p.tables = append(p.tables, t)
	}
	sort.Strings(p.tables)
	for typ, sql := range spec.Handlers {
		h, err := compile(sql)
		if err != nil {
			return nil, fmt.Errorf("projection %s, handler %s: %w", spec.Name, typ, err)
		}
		p.handlers[typ] = h
	}
	var errs []error
	for _, name := range ordered(spec.Queries, spec.QueryOrder) {
		q := spec.Queries[name].query(name)
		if _, err := query.Compile(spec.Name, q); err != nil { // checked again, against the tables, by projections.Check
			errs = append(errs, fmt.Errorf("projection %s, query %s: %w", spec.Name, name, err))
		}
		p.queries = append(p.queries, q)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return p, nil
}

// Queries are the projection's declared queries, in the file's order.
func (p *Projection) Queries() []query.Query { return p.queries }

// Source is the file the projection was loaded from.
func (p *Projection) Source() string { return p.source }

// CheckSQL prepares each handler's statement against the tables: a
// handler that names a column or table the projection does not have, or
// does not parse, is found at load rather than at its first event.
func (p *Projection) CheckSQL(ctx context.Context, tx pgx.Tx, _ string) error {
	var errs []error
	for _, typ := range sortedKeys(p.handlers) {
		// Each in a savepoint: a handler that fails leaves the others to
		// be checked, and the queries after them.
		if _, err := tx.Exec(ctx, `SAVEPOINT sightline_handler_check`); err != nil {
			return err
		}
		_, err := tx.Conn().PgConn().Prepare(ctx, "", p.handlers[typ].sql, nil)
		if _, rerr := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT sightline_handler_check`); rerr != nil {
			return rerr
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("handler %s: %w", typ, err))
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// compile makes a handler's :name parameters positional, each cast to its
// type. Colons inside literals, quoted identifiers, comments, dollar
// quoting and :: casts are left alone (internal/pgsql lexes as PostgreSQL
// does).
func compile(sql string) (handler, error) {
	toks, err := pgsql.Scan(sql)
	if err != nil {
		return handler{}, err
	}
	n, err := pgsql.Bind(toks, func(name string) (string, error) {
		typ, ok := params[name]
		if !ok {
			return "", fmt.Errorf("unknown parameter :%s (want one of :stream_id, :revision, :position, :event_id, :type, :data, :metadata, :created_at)", name)
		}
		return typ, nil
	})
	if err != nil {
		return handler{}, err
	}
	return handler{sql: n.SQL, params: n.Params}, nil
}

func (p *Projection) Name() string     { return p.spec.Name }
func (p *Projection) Version() int     { return p.spec.Version }
func (p *Projection) Tables() []string { return p.tables }

// Segments is the number of segments the projection is split into.
func (p *Projection) Segments() int { return max(p.spec.Segments, 1) }
func (p *Projection) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: p.spec.Streams}
}

// Setup runs each table's SQL with the projection's schema first on the
// search path.
func (p *Projection) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	var old string
	if err := tx.QueryRow(ctx, `SELECT current_setting('search_path')`).Scan(&old); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, searchPath(schema)); err != nil {
		return err
	}
	for _, t := range p.tables {
		if _, err := tx.Exec(ctx, p.spec.Tables[t]); err != nil {
			return fmt.Errorf("create table %s: %w", t, err)
		}
	}
	_, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, old)
	return err
}

// searchPath puts the projection's schema first, then public for the
// functions and types of extensions.
func searchPath(schema string) string { return pgx.Identifier{schema}.Sanitize() + ", public" }

// Apply queues each event's handler SQL; the projector sends them all in
// one round trip with the checkpoint, behind the search path, queued
// first. The statements are prepared ahead (see prepareFirst), so that
// their table names resolve to the schema of the batch. (PostgreSQL
// re-plans a prepared statement when the search path differs, so
// generations do not mix.)
func (p *Projection) Apply(ctx context.Context, b *projections.Batch) error {
	b.Queue(`SELECT set_config('search_path', $1, true)`, searchPath(b.Schema))
	first := prepareFirst{prepared: &p.prepared, schema: b.Schema}
	for _, e := range b.Events {
		h, ok := p.handlers[e.Type]
		if !ok {
			continue
		}
		args := make([]any, 1+len(h.params))
		args[0] = first
		for i, name := range h.params {
			args[1+i] = paramValues(e).value(name)
		}
		b.Queue(h.sql, args...)
	}
	return nil
}
