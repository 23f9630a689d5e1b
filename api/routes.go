package api

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sightlinehq/sightline/console"
	"github.com/sightlinehq/sightline/query"
)

// route is one entry of the route table: what echo serves, and what the
// OpenAPI document says of it. A route without a doc is left out of the
// document.
type route struct {
	method, path string
	handler      echo.HandlerFunc
	mw           []echo.MiddlewareFunc
	doc          *doc
}

// Health is GET /healthz; Readiness GET /readyz.
type (
	Health struct {
		Status string `json:"status"`
	}
	Readiness struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
)

// ProjectionList is GET /v1/projections.
type ProjectionList struct {
	Projections []ProjectionStatus `json:"projections"`
}

// ParkedList is GET /v1/projections/{name}/parked: NextAfter, when set,
// is the ?after= of the next page.
type ParkedList struct {
	Parked    []ParkedEvent `json:"parked"`
	NextAfter *int64        `json:"next_after,omitempty"`
}

// routes is every route the server serves: its own, then each declared
// query at the general route and at its alias, if it has one.
func (s *Server) routes(sc *schemas) []route {
	admin := []echo.MiddlewareFunc{s.requireToken}
	read := []echo.MiddlewareFunc{s.requireRead}
	write := []echo.MiddlewareFunc{s.requireToken, s.limitBody}
	queryParam := func(name, desc string, schema *openapi3.Schema) *openapi3.ParameterRef {
		return &openapi3.ParameterRef{Value: openapi3.NewQueryParameter(name).WithDescription(desc).WithSchema(schema)}
	}
	page, html := echo.WrapHandler(s.console), openapi3.NewSchemaRef("", openapi3.NewStringSchema())
	rs := []route{
		// The probes and this document are open; the reads take the read
		// token, when one is set; admin routes the API token.
		{http.MethodGet, "/healthz", s.healthz, nil, &doc{id: "healthz", summary: "The process is alive.", ok: sc.ref("Health", Health{})}},
		{http.MethodGet, "/livez", s.healthz, nil, &doc{id: "livez", summary: "The process is alive (whatever the database, the source and the projections are doing).", ok: sc.ref("Health", Health{})}},
		{http.MethodGet, "/readyz", s.readyz, nil, &doc{id: "readyz", summary: "The database is reachable, the event source connected, no projection failed and, with a maximum lag set, none lags more.",
			ok: sc.ref("Readiness", Readiness{}), problems: []int{http.StatusServiceUnavailable}}},
		{http.MethodGet, "/metrics", echo.WrapHandler(promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{})), read,
			&doc{id: "metrics", summary: "Prometheus metrics, in the text exposition format.", ok: openapi3.NewSchemaRef("", openapi3.NewStringSchema()), okType: "text/plain"}},
		// The console is open: its pages hold no data, which their script
		// reads from the routes below with the token the operator gives.
		{http.MethodGet, "/", redirect(console.Prefix), nil, &doc{id: "root", summary: "Redirects to the operator console, /ui/.", okStatus: http.StatusFound}},
		{http.MethodGet, strings.TrimSuffix(console.Prefix, "/"), redirect(console.Prefix), nil, &doc{id: "consoleRedirect", summary: "Redirects to /ui/.", okStatus: http.StatusFound}},
		{http.MethodGet, console.Prefix, page, nil, &doc{id: "console", summary: "The operator console: every projection, live.", ok: html, okType: "text/html", page: true}},
		{http.MethodGet, console.Prefix + "projections/:name", page, nil, &doc{id: "consoleProjection",
			summary: "The operator console's page of a projection: its lag and rate, parked events, rebuild, last verify and declared queries.",
			ok:      html, okType: "text/html", problems: []int{http.StatusNotFound}, page: true}},
		{http.MethodGet, console.Prefix + "static/:file", page, nil, &doc{id: "consoleAsset", summary: "The console's script and stylesheet.",
			ok: openapi3.NewSchemaRef("", openapi3.NewStringSchema()), okType: "text/javascript", okTypes: []string{"text/css"}, problems: []int{http.StatusNotFound}, page: true}},
		{http.MethodGet, "/openapi.json", s.openAPIDoc, nil, &doc{id: "openapi", summary: "This document: OpenAPI 3.1 of every route, the declared queries included.",
			ok: openapi3.NewSchemaRef("", openapi3.NewObjectSchema())}},
		{http.MethodGet, "/v1/projections", s.listProjections, read, &doc{id: "listProjections", summary: "Every projection's status.",
			ok: sc.ref("ProjectionList", ProjectionList{})}},
		{http.MethodGet, "/v1/projections/events", s.streamStatus, read, &doc{id: "streamStatus",
			summary: "Server-Sent Events: a status event (JSON as GET /v1/projections/{name}) each time a projection's status changes, at most every 250 ms; " +
				"every projection's status first. Resume with Last-Event-ID (or ?last_event_id=); ?projection= (repeated, or comma-separated) narrows it.",
			params: []*openapi3.ParameterRef{
				queryParam("projection", "Only these projections.", openapi3.NewStringSchema()),
				{Value: openapi3.NewHeaderParameter(HeaderLastEventID).WithDescription("The id of the last event received.").WithSchema(openapi3.NewStringSchema())},
			},
			ok: openapi3.NewSchemaRef("", openapi3.NewStringSchema()), okType: "text/event-stream", problems: []int{http.StatusNotFound, http.StatusServiceUnavailable}}},
		{http.MethodGet, "/v1/projections/:name", s.getProjection, read, &doc{id: "getProjection",
			summary: "A projection's status: version, status, position, head, lag, events per second, parked events, the rebuild under way.",
			ok:      sc.ref("ProjectionStatus", ProjectionStatus{}), problems: []int{http.StatusNotFound}}},
		{http.MethodGet, "/v1/projections/:name/history", s.projectionHistory, read, &doc{id: "projectionHistory",
			summary: "The projection's lag, rate, parked events and status as this process saw them, a sample a second for the last ten minutes.",
			ok:      sc.ref("History", History{}), problems: []int{http.StatusNotFound}}},
		{http.MethodGet, "/v1/projections/:name/verify", s.lastVerify, read, &doc{id: "lastVerify",
			summary: "A projection's last verify (sightline verify): where it compared, each table's rows, how many drifted and the first of them, or why it failed.",
			ok:      sc.ref("VerifyResult", VerifyResult{}), problems: []int{http.StatusNotFound}}},
		{http.MethodGet, "/v1/projections/:name/queries", s.listQueries, read, &doc{id: "listQueries", summary: "A projection's declared queries.",
			ok: sc.ref("QueryList", QueryList{}), problems: []int{http.StatusNotFound}}},
		{http.MethodGet, "/v1/projections/:name/queries/:query", s.namedQuery, read, nil}, // each query is described at its own path, below

		// Writing routes: the token (when set) and a body limit, per
		// route, so that unknown paths still answer 404.
		{http.MethodPost, "/v1/streams/:stream", s.appendEvents, write, &doc{id: "append", admin: true,
			summary:  "Append events to a stream of the embedded store. Expected-Revision: any, no-stream, exists, or the stream's last revision.",
			params:   []*openapi3.ParameterRef{{Value: openapi3.NewHeaderParameter(HeaderExpectedRevision).WithSchema(openapi3.NewStringSchema())}},
			body:     sc.ref("AppendRequest", appendBodyDoc{}),
			okStatus: http.StatusCreated, ok: sc.ref("AppendResponse", AppendResponse{}),
			problems: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable}}},
		// Dead letters carry whole events (data, metadata, errors): admin only.
		{http.MethodGet, "/v1/projections/:name/parked", s.listParked, admin, &doc{id: "listParked", admin: true,
			summary: "Parked events and those held behind them, by id.",
			params: []*openapi3.ParameterRef{
				queryParam("all", "Also those applied or skipped.", openapi3.NewBoolSchema()),
				queryParam("limit", "At most this many.", openapi3.NewIntegerSchema().WithMin(1).WithMax(ParkedLimitMax)),
				queryParam("after", "The next_after of the page before.", openapi3.NewInt64Schema()),
			},
			ok: sc.ref("ParkedList", ParkedList{}), problems: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound}}},
		{http.MethodGet, "/v1/projections/:name/parked/:id", s.getParked, admin, &doc{id: "getParked", admin: true, summary: "One parked event.",
			ok: sc.ref("ParkedEvent", ParkedEvent{}), problems: []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound}}},
		{http.MethodPost, "/v1/projections/:name/parked/:id/retry", s.retryParked, write, &doc{id: "retryParked", admin: true,
			summary: "Apply a parked event again, then those held behind it.",
			ok:      sc.ref("Release", ReleaseJSON{}), problems: []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusConflict, http.StatusUnprocessableEntity}}},
		{http.MethodPost, "/v1/projections/:name/parked/:id/skip", s.skipParked, write, &doc{id: "skipParked", admin: true,
			summary: "Never apply a parked event; apply those held behind it.",
			ok:      sc.ref("Release", ReleaseJSON{}), problems: []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusConflict}}},
		{http.MethodPost, "/v1/projections/:name/rebuild", s.rebuildProjection, write, &doc{id: "rebuild", admin: true,
			summary:  "Start a blue/green rebuild; the active generation serves until it takes over.",
			okStatus: http.StatusAccepted, ok: sc.ref("Rebuild", Rebuild{}), problems: []int{http.StatusUnauthorized, http.StatusNotFound, http.StatusConflict}}},
	}
	for _, q := range s.cfg.Queries {
		rs = append(rs, route{http.MethodGet, queryPath(q), s.servePrepared(q), read, queryDoc(q, sc, false)})
		if q.Route != "" {
			rs = append(rs, route{http.MethodGet, q.Route, s.aliasQuery(q), read, queryDoc(q, sc, true)})
		}
	}
	// The reads are the routes given the read slice itself (its one
	// backing array): the document says they take the read token.
	for i := range rs {
		if len(rs[i].mw) == 1 && &rs[i].mw[0] == &read[0] && rs[i].doc != nil {
			rs[i].doc.read, rs[i].doc.readOpen = true, s.cfg.ReadToken == ""
			if !rs[i].doc.readOpen {
				rs[i].doc.problems = append(rs[i].doc.problems, http.StatusUnauthorized)
			}
		}
	}
	return rs
}

// appendBodyDoc is the body of an append, for the document: one event, or
// {"events": [...]}.
type appendBodyDoc struct {
	AppendEvent
	Events []AppendEvent `json:"events,omitempty"`
}

// servePrepared serves q at the general route's own path, so that echo's
// router finds it without a lookup by name.
func (s *Server) servePrepared(q *query.Prepared) echo.HandlerFunc {
	return func(c echo.Context) error { return s.serveQuery(c, q, nil) }
}

// checkRoutes refuses two routes at one method and path, which echo would
// let the later replace: a declared query's route on one of the server's
// own, or on another query's.
func checkRoutes(rs []route) error {
	seen := map[string]bool{}
	for _, r := range rs {
		k := r.method + " " + pathParam.ReplaceAllString(r.path, ":")
		if seen[k] {
			return fmt.Errorf("two routes at %s %s: a declared query's route may not take a path the server or another query serves", r.method, r.path)
		}
		seen[k] = true
	}
	return nil
}

// redirect answers 302 Found to to.
func redirect(to string) echo.HandlerFunc {
	return func(c echo.Context) error { return c.Redirect(http.StatusFound, to) }
}

func (s *Server) openAPIDoc(c echo.Context) error { return c.JSONBlob(http.StatusOK, s.openapi) }
