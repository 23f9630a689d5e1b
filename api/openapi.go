package api

import (
	"fmt"
	"net/http"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3gen"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sightlinehq/sightline/query"
)

// The OpenAPI document is built, when the server is, from what the server
// serves: the route table (routes.go), whose entries register the handlers
// and describe them, the Go types the handlers answer with, and each
// declared query's params and result columns. Nothing is kept by hand.

// doc describes one route.
type doc struct {
	id, summary, description string
	// params are the route's query-string and header parameters; path
	// parameters come from its path.
	params []*openapi3.ParameterRef
	// body is the request body's schema, if it takes one.
	body *openapi3.SchemaRef
	// ok is the status and schema of its success; problems the statuses
	// of the problem documents it may answer.
	okStatus int
	ok       *openapi3.SchemaRef
	okType   string   // the success's media type; JSON when empty
	okTypes  []string // other media types it may answer with, as text
	problems []int
	// fresh: the answer carries the staleness headers; headers names
	// more it may carry.
	fresh   bool
	headers []string
	// admin: needs the API token when one is set; read: the read token
	// (or the API token) when a read token is set.
	admin, read bool
	// readOpen: no read token is set, so the reads are open.
	readOpen bool
	// page: a page of the console, whose errors are pages too.
	page bool
}

// schemas generates the components' schemas from Go types.
type schemas struct {
	all openapi3.Schemas
	gen *openapi3gen.Generator
	err error
}

func newSchemas() *schemas {
	return &schemas{all: openapi3.Schemas{}, gen: openapi3gen.NewGenerator(openapi3gen.SchemaCustomizer(customize))}
}

// customize writes what the generator leaves in OpenAPI 3.0's terms in
// 3.1's: null as a type, raw JSON as any value.
func customize(_ string, t reflect.Type, _ reflect.StructTag, s *openapi3.Schema) error {
	if t == reflect.TypeFor[[]byte]() || t.Name() == "RawMessage" {
		*s = openapi3.Schema{Description: "any JSON value"}
		return nil
	}
	if s.Nullable {
		s.Nullable = false
		if s.Type != nil {
			s.Type.With("null")
		}
	}
	return nil
}

// ref returns a reference to v's type's schema, named name.
func (sc *schemas) ref(name string, v any) *openapi3.SchemaRef {
	if _, ok := sc.all[name]; !ok {
		s, err := sc.gen.NewSchemaRefForValue(v, sc.all)
		if err != nil && sc.err == nil {
			sc.err = fmt.Errorf("schema %s: %w", name, err)
		}
		sc.all[name] = s
	}
	return openapi3.NewSchemaRef("#/components/schemas/"+name, nil)
}

var pathParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// openAPIPath writes an echo path in OpenAPI's terms.
func openAPIPath(p string) string { return pathParam.ReplaceAllString(p, "{$1}") }

// buildOpenAPI describes every route, the declared queries included.
func buildOpenAPI(routes []route, sc *schemas) (*openapi3.T, error) {
	t := &openapi3.T{
		OpenAPI: "3.1.0",
		Info: &openapi3.Info{Title: "sightline", Version: "1",
			Description: "PostgreSQL read models kept in step with an event store. Every read-model answer says how fresh it is (Projection-* headers); " +
				"reads can wait for a write (Projection-Min-Position, Projection-Min-Revision). Errors are RFC 9457 problem documents."},
		Paths: openapi3.NewPaths(),
		Components: &openapi3.Components{
			Schemas:    sc.all,
			Headers:    stalenessHeaders(),
			Parameters: readYourWritesParams(),
			SecuritySchemes: openapi3.SecuritySchemes{
				"token":     {Value: openapi3.NewJWTSecurityScheme().WithBearerFormat("SIGHTLINE_API_TOKEN")},
				"readToken": {Value: openapi3.NewJWTSecurityScheme().WithBearerFormat("SIGHTLINE_READ_TOKEN")},
			},
		},
	}
	sc.all["Problem"] = openapi3.NewSchemaRef("", openapi3.NewObjectSchema().
		WithProperty("type", openapi3.NewStringSchema()).WithProperty("title", openapi3.NewStringSchema()).
		WithProperty("status", openapi3.NewIntegerSchema()).WithProperty("detail", openapi3.NewStringSchema()).
		WithRequired([]string{"title", "status", "detail"}))
	for _, r := range routes {
		if r.doc == nil {
			continue
		}
		path := openAPIPath(r.path)
		item := t.Paths.Value(path)
		if item == nil {
			item = &openapi3.PathItem{}
			t.Paths.Set(path, item)
		}
		item.SetOperation(r.method, operation(r.path, r.doc))
	}
	if sc.err != nil {
		return nil, sc.err
	}
	return t, nil
}

func operation(path string, d *doc) *openapi3.Operation {
	op := &openapi3.Operation{OperationID: d.id, Summary: d.summary, Description: d.description, Responses: openapi3.NewResponses()}
	for _, m := range pathParam.FindAllStringSubmatch(path, -1) {
		if !slices.ContainsFunc(d.params, func(p *openapi3.ParameterRef) bool {
			return p.Value != nil && p.Value.In == openapi3.ParameterInPath && p.Value.Name == m[1]
		}) {
			op.AddParameter(openapi3.NewPathParameter(m[1]).WithSchema(openapi3.NewStringSchema()))
		}
	}
	op.Parameters = append(op.Parameters, d.params...)
	if d.fresh {
		for _, name := range []string{"min_position", "wait"} {
			op.Parameters = append(op.Parameters, &openapi3.ParameterRef{Ref: "#/components/parameters/" + name})
		}
	}
	if d.body != nil {
		op.RequestBody = &openapi3.RequestBodyRef{Value: openapi3.NewRequestBody().WithRequired(true).
			WithContent(openapi3.NewContentWithJSONSchemaRef(d.body))}
	}
	switch {
	case d.admin:
		op.Security = &openapi3.SecurityRequirements{{"token": {}}}
	case d.read && d.readOpen:
		op.Security = &openapi3.SecurityRequirements{{}} // no read token set: open
	case d.read:
		op.Security = &openapi3.SecurityRequirements{{"readToken": {}}, {"token": {}}}
	}
	ok := openapi3.NewResponse().WithDescription(http.StatusText(cmpInt(d.okStatus, http.StatusOK)))
	if d.ok != nil {
		ok.Content = openapi3.NewContent()
		ok.Content[cmpStr(d.okType, "application/json")] = openapi3.NewMediaType().WithSchemaRef(d.ok)
		for _, t := range d.okTypes {
			ok.Content[t] = openapi3.NewMediaType().WithSchema(openapi3.NewStringSchema())
		}
	}
	if d.fresh {
		ok.Headers = freshHeaderRefs()
		for _, h := range d.headers {
			ok.Headers[h] = &openapi3.HeaderRef{Ref: "#/components/headers/" + h}
		}
	}
	op.AddResponse(cmpInt(d.okStatus, http.StatusOK), ok)
	for _, status := range d.problems {
		resp := openapi3.NewResponse().WithDescription(http.StatusText(status)).
			WithContent(openapi3.Content{"application/problem+json": openapi3.NewMediaType().WithSchemaRef(openapi3.NewSchemaRef("#/components/schemas/Problem", nil))})
		if d.page {
			resp.Content = openapi3.Content{"text/html": openapi3.NewMediaType().WithSchema(openapi3.NewStringSchema())}
		}
		if d.fresh {
			resp.Headers = freshHeaderRefs()
		}
		op.AddResponse(status, resp)
	}
	return op
}

func cmpInt(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func cmpStr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

func stalenessHeaders() openapi3.Headers {
	h := func(desc string, s *openapi3.Schema) *openapi3.HeaderRef {
		return &openapi3.HeaderRef{Value: &openapi3.Header{Parameter: openapi3.Parameter{Description: desc, Schema: openapi3.NewSchemaRef("", s)}}}
	}
	return openapi3.Headers{
		HeaderPosition:     h("The checkpoint the data reflects (a position token).", openapi3.NewStringSchema()),
		HeaderHead:         h("The newest position the event store has.", openapi3.NewStringSchema()),
		HeaderLagMs:        h("Age in ms of the oldest event the data does not reflect yet; 0 when caught up.", openapi3.NewIntegerSchema()),
		HeaderStatus:       h("The projection's status.", openapi3.NewStringSchema().WithEnum("live", "catching-up", "rebuilding", "stalled", "failed", "degraded", "stopped")),
		HeaderStreamParked: h("On a query that names its stream: the parked event holding that stream.", openapi3.NewStringSchema()),
		"Link":             h(`The next page, as rel="next" (list queries).`, openapi3.NewStringSchema()),
	}
}

func freshHeaderRefs() openapi3.Headers {
	out := openapi3.Headers{}
	for _, name := range []string{HeaderPosition, HeaderHead, HeaderLagMs, HeaderStatus} {
		out[name] = &openapi3.HeaderRef{Ref: "#/components/headers/" + name}
	}
	return out
}

func readYourWritesParams() openapi3.ParametersMap {
	return openapi3.ParametersMap{
		"min_position": {Value: openapi3.NewHeaderParameter(HeaderMinPosition).
			WithDescription("Wait until the projection has applied this position (an append's position), up to " + HeaderWaitMs + "; also ?min_position=.").
			WithSchema(openapi3.NewStringSchema())},
		"wait": {Value: openapi3.NewHeaderParameter(HeaderWaitMs).
			WithDescription("How long a read-your-writes request waits, in ms: default 2000, at most 30000; past it, 503 with Retry-After.").
			WithSchema(openapi3.NewIntegerSchema().WithMin(0))},
		"min_revision": {Value: openapi3.NewHeaderParameter(HeaderMinRevision).
			WithDescription("On a query that names its stream: wait until that stream's revision is applied (an append's next_revision - 1); also ?min_revision=. 409 when a parked event holds the stream at or below it.").
			WithSchema(openapi3.NewIntegerSchema().WithMin(0))},
	}
}

// queryDoc describes a declared query: its params, and its rows as the
// JSON contract writes each column's type. At its alias (its own Route),
// the route's params are path segments.
func queryDoc(q *query.Prepared, sc *schemas, alias bool) *doc {
	d := &doc{id: q.Projection + "." + q.Name, summary: q.Description, fresh: true,
		description: fmt.Sprintf("Declared query %s of projection %s.", q.Name, q.Projection),
		problems:    []int{http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusServiceUnavailable, http.StatusGatewayTimeout}}
	if alias {
		d.id += ".route"
		d.description += fmt.Sprintf(" The same as %s.", openAPIPath(queryPath(q)))
	}
	if d.summary == "" {
		d.summary = d.description
	}
	for _, p := range q.Params {
		var param *openapi3.Parameter
		if alias && slices.Contains(q.RouteParams(), p.Name) {
			param = openapi3.NewPathParameter(p.Name)
		} else {
			param = openapi3.NewQueryParameter(p.Name)
			param.Required = p.Required
		}
		d.params = append(d.params, &openapi3.ParameterRef{Value: param.WithSchema(paramSchema(p)).WithDescription(p.Description)})
	}
	if q.HasStream() {
		d.params = append(d.params, &openapi3.ParameterRef{Ref: "#/components/parameters/min_revision"})
		d.headers = append(d.headers, HeaderStreamParked)
	}
	row := openapi3.NewObjectSchema()
	var required []string
	for _, c := range q.Columns {
		row.WithProperty(c.Name, columnSchema(c))
		required = append(required, c.Name)
	}
	row.WithRequired(required)
	name := "query." + q.Projection + "." + q.Name
	sc.all[name] = openapi3.NewSchemaRef("", row)
	rowRef := openapi3.NewSchemaRef("#/components/schemas/"+name, nil)
	if q.One {
		d.ok = rowRef
		d.problems = append(d.problems, http.StatusNotAcceptable) // text/csv asked of one object
		return d
	}
	d.okTypes = []string{"text/csv"}
	d.headers = append(d.headers, "Link")
	d.params = append(d.params,
		&openapi3.ParameterRef{Value: openapi3.NewQueryParameter("limit").WithSchema(openapi3.NewIntegerSchema().WithMin(1).WithMax(query.LimitMax).WithDefault(query.LimitDefault)).
			WithDescription("Items per page.")},
		&openapi3.ParameterRef{Value: openapi3.NewQueryParameter("cursor").WithSchema(openapi3.NewStringSchema()).WithDescription("The next of the page before, as it was.")})
	page := openapi3.NewObjectSchema().
		WithProperty("next", &openapi3.Schema{Type: &openapi3.Types{"string", "null"}, Description: "The cursor of the next page; null on the last."}).
		WithRequired([]string{"items", "next"})
	page.Properties["items"] = openapi3.NewSchemaRef("", &openapi3.Schema{Type: &openapi3.Types{"array"}, Items: rowRef})
	d.ok = openapi3.NewSchemaRef("", page)
	return d
}

func paramSchema(p query.Param) *openapi3.Schema {
	var s *openapi3.Schema
	switch p.Type {
	case query.Integer:
		s = openapi3.NewInt32Schema()
	case query.Bigint:
		s = openapi3.NewInt64Schema()
	case query.Numeric:
		s = openapi3.NewStringSchema().WithPattern(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$`)
	case query.Boolean:
		s = openapi3.NewBoolSchema()
	case query.Date:
		s = openapi3.NewStringSchema().WithFormat("date")
	case query.Timestamptz:
		s = openapi3.NewDateTimeSchema()
	case query.UUID:
		s = openapi3.NewUUIDSchema()
	default:
		s = openapi3.NewStringSchema().WithMaxLength(query.MaxValueLen)
	}
	if len(p.Enum) > 0 {
		vals := make([]any, len(p.Enum))
		for i, v := range p.Enum {
			vals[i] = v
		}
		s.WithEnum(vals...)
	}
	if p.Default != "" {
		s.WithDefault(p.Default)
	}
	return s
}

// columnSchema is a result column's JSON, as query's encoders write it.
func columnSchema(c query.Column) *openapi3.Schema {
	var s *openapi3.Schema
	switch c.OID {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID:
		s = openapi3.NewIntegerSchema()
	case pgtype.Float4OID, pgtype.Float8OID:
		s = &openapi3.Schema{Type: &openapi3.Types{"number", "string"}, Description: "a number; NaN and infinities as strings"}
	case pgtype.BoolOID:
		s = openapi3.NewBoolSchema()
	case pgtype.NumericOID:
		s = described(openapi3.NewStringSchema(), "numeric, as a string: no digit lost")
	case pgtype.TimestamptzOID:
		s = described(openapi3.NewStringSchema(), "RFC 3339, UTC; or infinity, -infinity")
	case pgtype.DateOID:
		s = described(openapi3.NewStringSchema(), "YYYY-MM-DD; or infinity, -infinity")
	case pgtype.UUIDOID:
		s = openapi3.NewUUIDSchema()
	case pgtype.JSONOID, pgtype.JSONBOID:
		s = &openapi3.Schema{Description: "JSON"}
	case pgtype.ByteaOID:
		s = described(openapi3.NewStringSchema(), "base64")
	default:
		if strings.HasSuffix(c.Type, "[]") {
			s = openapi3.NewArraySchema().WithItems(&openapi3.Schema{})
		} else {
			s = openapi3.NewStringSchema()
		}
	}
	if s.Description == "" {
		s.Description = c.Type
	} else {
		s.Description = c.Type + ": " + s.Description
	}
	if !c.NotNull && s.Type != nil {
		s.Type.With("null")
	}
	return s
}

func described(s *openapi3.Schema, desc string) *openapi3.Schema {
	s.Description = desc
	return s
}
