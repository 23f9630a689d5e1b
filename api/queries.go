package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/query"
)

// HeaderMinRevision asks a query that reads one stream to wait until that
// stream's revision is in the read model: the revision just written, an
// append's next_revision - 1.
const HeaderMinRevision = "Projection-Min-Revision"

// QueryTimeoutDefault is how long a declared query may run.
const QueryTimeoutDefault = 5 * time.Second

// QueryInfo describes a declared query, as GET /v1/projections/{name}/queries
// lists them.
type QueryInfo struct {
	Name        string      `json:"name"`
	Description string      `json:"description,omitempty"`
	Path        string      `json:"path"`
	Route       string      `json:"route,omitempty"`
	One         bool        `json:"one"`
	PageBy      []string    `json:"page_by,omitempty"`
	Stream      bool        `json:"stream"`
	Params      []ParamInfo `json:"params"`
	Columns     []string    `json:"columns"`
}

// ParamInfo is one parameter of a QueryInfo.
type ParamInfo struct {
	Name        string     `json:"name"`
	Type        query.Type `json:"type"`
	Required    bool       `json:"required"`
	Default     string     `json:"default,omitempty"`
	Enum        []string   `json:"enum,omitempty"`
	Description string     `json:"description,omitempty"`
}

// QueryList is GET /v1/projections/{name}/queries.
type QueryList struct {
	Projection string      `json:"projection"`
	Queries    []QueryInfo `json:"queries"`
}

// queryPath is where the general route serves q.
func queryPath(q *query.Prepared) string {
	return "/v1/projections/" + q.Projection + "/queries/" + q.Name
}

func queryInfo(q *query.Prepared) QueryInfo {
	info := QueryInfo{Name: q.Name, Description: q.Description, Path: queryPath(q), Route: q.Route, One: q.One,
		PageBy: q.PageBy, Stream: q.HasStream(), Params: []ParamInfo{}}
	for _, p := range q.Params {
		info.Params = append(info.Params, ParamInfo{Name: p.Name, Type: p.Type, Required: p.Required, Default: p.Default, Enum: p.Enum, Description: p.Description})
	}
	for _, c := range q.Columns {
		info.Columns = append(info.Columns, c.Name)
	}
	return info
}

func (s *Server) listQueries(c echo.Context) error {
	name := c.Param("name")
	if s.runner(name) == nil && len(s.queries[name]) == 0 {
		return problem(c, http.StatusNotFound, "Projection not found", "no projection named "+name)
	}
	out := QueryList{Projection: name, Queries: []QueryInfo{}}
	for _, q := range s.queries[name] {
		out.Queries = append(out.Queries, queryInfo(q))
	}
	return c.JSON(http.StatusOK, out)
}

// namedQuery serves the general route: the query its path names.
func (s *Server) namedQuery(c echo.Context) error {
	name, qname := c.Param("name"), c.Param("query")
	qs := s.queries[name]
	i := slices.IndexFunc(qs, func(q *query.Prepared) bool { return q.Name == qname })
	if i < 0 {
		if s.runner(name) == nil && len(qs) == 0 {
			return problem(c, http.StatusNotFound, "Projection not found", "no projection named "+name)
		}
		names := make([]string, len(qs))
		for i, q := range qs {
			names[i] = q.Name
		}
		have := "it declares none"
		if len(names) > 0 {
			have = "it has: " + strings.Join(names, ", ")
		}
		return problem(c, http.StatusNotFound, "Query not found", fmt.Sprintf("projection %s has no query %s; %s (GET /v1/projections/%s/queries)", name, qname, have, name))
	}
	return s.serveQuery(c, qs[i], nil)
}

// aliasQuery serves q at its own Route, its path segments as params.
func (s *Server) aliasQuery(q *query.Prepared) echo.HandlerFunc {
	return func(c echo.Context) error {
		path := map[string]string{}
		for _, name := range q.RouteParams() {
			path[name] = c.Param(name)
		}
		return s.serveQuery(c, q, path)
	}
}

// serveQuery answers one declared query. It waits for the position (or,
// for a query of one stream, the revision) the request asks for, sets the
// staleness headers from the projection's state before the query runs, so
// that the data is at least as fresh as they say, and runs the query, with
// the stream's state, in one round trip to the read pool.
func (s *Server) serveQuery(c echo.Context, q *query.Prepared, path map[string]string) error {
	r := s.runner(q.Projection)
	if r == nil {
		return problem(c, http.StatusServiceUnavailable, "Projection not running", "projection "+q.Projection+" is not running in this process")
	}
	values := url.Values{}
	for k, v := range c.QueryParams() {
		values[k] = v
	}
	for k, v := range path {
		values[k] = append(values[k], v)
	}
	args, err := q.Bind(values)
	if err != nil {
		var pe *query.ParamError
		if errors.As(err, &pe) {
			return problem(c, http.StatusBadRequest, "Bad parameter", err.Error())
		}
		return err
	}
	page, err := pageOf(c, q)
	if err != nil {
		return err
	}
	format := query.JSON
	if accepts(c.Request().Header.Get(echo.HeaderAccept), "text/csv") {
		if q.One {
			return problem(c, http.StatusNotAcceptable, "Not acceptable", "query "+q.Name+" answers one object, in JSON; text/csv is for list queries")
		}
		format = query.CSV
	}
	want, wait, err := s.readYourWrites(c)
	if err != nil {
		return err
	}
	minRev, hasRev, err := minRevision(c, q)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), wait)
	defer cancel()
	waiting := false // holds one of the MaxWaits slots, whatever it waits for
	if !want.IsStart() && !r.Reached(want) {
		release, ok := s.waitSlot()
		if !ok {
			return s.tooManyWaits(c, r)
		}
		defer release()
		waiting = true
		if err := s.waitFor(ctx, r, want); err != nil {
			return s.notFreshYet(c, r, "projection "+q.Projection+" has not applied position "+want.String()+" within "+wait.String())
		}
	}

	for retried := false; ; {
		s.stalenessHeaders(c, r)
		b := &pgx.Batch{}
		var st projections.StreamState
		if q.HasStream() {
			r.QueueStream(b, q.StreamSQL(), q.StreamArgs(args), want, &st)
		}
		res := q.Queue(b, args, page, format)
		err := s.readPool.SendBatch(c.Request().Context(), b).Close()
		if isCachedPlanChanged(err) && !retried { // the tables changed shape under a cached statement: once more, planned anew
			retried = true
			continue
		}
		if err != nil {
			return s.queryProblem(c, r, q, err)
		}
		if hasRev && !st.Applied(minRev) && !st.HeldAt(minRev) {
			if !waiting {
				release, ok := s.waitSlot()
				if !ok {
					return s.tooManyWaits(c, r)
				}
				defer release()
				waiting = true
			}
			if err := s.waitForRevision(ctx, r, q, args, st.Stream, minRev); err != nil {
				if errors.Is(err, errNoStream) {
					return problem(c, http.StatusBadRequest, "No stream to wait for", "with these params, query "+q.Name+"'s stream is NULL: "+HeaderMinRevision+" cannot be met")
				}
				if ctx.Err() == nil && !errors.Is(err, errStopping) {
					return s.queryProblem(c, r, q, err)
				}
				return s.notFreshYet(c, r, fmt.Sprintf("%s has not reached revision %d in projection %s within %s", st.Stream, minRev, q.Projection, wait))
			}
			continue // applied (or held) now: read it
		}
		if st.Hold.ParkedID != 0 {
			c.Response().Header().Set(HeaderStreamParked, strconv.FormatInt(st.Hold.ParkedID, 10))
			if hasRev && st.HeldAt(minRev) || !want.IsStart() && st.Hold.Covers {
				return problem(c, http.StatusConflict, "Stream held by a parked event",
					fmt.Sprintf("%s is held from revision %d by parked event %d of %s, so the write asked for is not in the read model; see /v1/projections/%s/parked/%d",
						st.Stream, st.Hold.From, st.Hold.ParkedID, q.Projection, q.Projection, st.Hold.ParkedID))
			}
		}
		return s.answer(c, q, res, format)
	}
}

var (
	errNoStream = errors.New("the query's stream is NULL")
	errStopping = errors.New("the server is stopping")
)

// waitForRevision waits until the stream's revision rev is applied, or a
// parked event holds the stream at or below it, until ctx ends. It is
// woken by the projector's commits that move the stream, and checks the
// stream's state after each.
func (s *Server) waitForRevision(ctx context.Context, r *projections.Runner, q *query.Prepared, args query.Args, stream string, rev uint64) error {
	if stream == "" {
		return errNoStream
	}
	for {
		moved, stop := r.WatchStream(stream)
		b := &pgx.Batch{}
		var st projections.StreamState
		r.QueueStream(b, q.StreamSQL(), q.StreamArgs(args), eventstore.Start, &st)
		err := s.readPool.SendBatch(ctx, b).Close()
		if err != nil && ctx.Err() == nil {
			stop()
			return err
		}
		if err == nil && (st.Applied(rev) || st.HeldAt(rev)) {
			stop()
			return nil
		}
		select {
		case <-moved:
			stop()
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case <-s.stopping:
			stop()
			return errStopping
		}
	}
}

// notFreshYet is the 503 of a read-your-writes wait that ran out.
func (s *Server) notFreshYet(c echo.Context, r *projections.Runner, detail string) error {
	s.stalenessHeaders(c, r)
	c.Response().Header().Set("Retry-After", "1")
	return problem(c, http.StatusServiceUnavailable, "Not fresh enough yet", detail+"; retry, or read without "+HeaderMinPosition+" and "+HeaderMinRevision)
}

func (s *Server) answer(c echo.Context, q *query.Prepared, res *query.Result, format query.Format) error {
	if q.One {
		if !res.Found {
			return problem(c, http.StatusNotFound, "Not found", fmt.Sprintf("query %s of %s found no row (yet: see %s and %s)", q.Name, q.Projection, HeaderMinPosition, HeaderMinRevision))
		}
		return c.JSONBlob(http.StatusOK, res.Body)
	}
	if res.Next != "" {
		next := c.Request().URL.Query()
		next.Set("cursor", res.Next)
		c.Response().Header().Add("Link", "<"+c.Request().URL.Path+"?"+next.Encode()+`>; rel="next"`)
	}
	if format == query.CSV {
		return c.Blob(http.StatusOK, "text/csv; charset=utf-8", res.Body)
	}
	body := make([]byte, 0, len(res.Body)+len(res.Next)+24)
	body = append(body, `{"items":`...)
	body = append(body, res.Body...)
	body = append(body, `,"next":`...)
	if res.Next == "" {
		body = append(body, "null"...)
	} else {
		body = strconv.AppendQuote(body, res.Next) // base64url: nothing to escape
	}
	body = append(body, '}')
	return c.JSONBlob(http.StatusOK, body)
}

// queryProblem answers a query that failed in the database.
func (s *Server) queryProblem(c echo.Context, r *projections.Runner, q *query.Prepared, err error) error {
	if errors.Is(err, query.ErrNotOne) {
		return problem(c, http.StatusInternalServerError, "Query returned more than one row", err.Error())
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	where := "query " + q.Name + " of " + q.Projection
	switch {
	case pe.Code == "57014": // query_canceled: the statement timeout
		return problem(c, http.StatusGatewayTimeout, "Query timed out", fmt.Sprintf("%s ran longer than %s and was cut off", where, s.cfg.QueryTimeout))
	case pe.Code == "25006": // read_only_sql_transaction
		s.cfg.Logger.Error("a declared query tried to write; queries run read-only", "projection", q.Projection, "query", q.Name, "error", pe.Message)
		return problem(c, http.StatusInternalServerError, "Query tried to write", where+" tried to write, and queries run read-only: "+pe.Message)
	case strings.HasPrefix(pe.Code, "22"): // data exception: a value the database refused
		return problem(c, http.StatusBadRequest, "Bad parameter", where+": the database refused a value: "+pe.Message)
	case (pe.Code == "42P01" || pe.Code == "42703") && r.Status().Status == projections.StatusRebuilding:
		c.Response().Header().Set("Retry-After", "5")
		return problem(c, http.StatusServiceUnavailable, "Not served until the rebuild takes over",
			where+" reads what the version being built has and the active one lacks ("+pe.Message+"); it is served once the rebuild takes over")
	}
	return err
}

func isCachedPlanChanged(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "0A000" && strings.Contains(pe.Message, "cached plan must not change result type")
}

// pageOf reads ?limit= and ?cursor= of a list query.
func pageOf(c echo.Context, q *query.Prepared) (query.Page, error) {
	page := query.Page{Limit: query.LimitDefault}
	if q.One {
		return page, nil
	}
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > query.LimitMax {
			return page, &Problem{Status: http.StatusBadRequest, Title: "Bad limit", Detail: fmt.Sprintf("limit must be a whole number from 1 to %d", query.LimitMax)}
		}
		page.Limit = n
	}
	if v := c.QueryParam("cursor"); v != "" {
		after, err := q.Cursor(v)
		if err != nil {
			return page, &Problem{Status: http.StatusBadRequest, Title: "Bad cursor", Detail: err.Error() + "; pass the next of the page before, as it is"}
		}
		page.After = after
	}
	return page, nil
}

// minRevision reads Projection-Min-Revision (or ?min_revision=).
func minRevision(c echo.Context, q *query.Prepared) (uint64, bool, error) {
	v := c.Request().Header.Get(HeaderMinRevision)
	if v == "" {
		v = c.QueryParam("min_revision")
	}
	if v == "" {
		return 0, false, nil
	}
	if !q.HasStream() {
		return 0, false, &Problem{Status: http.StatusBadRequest, Title: "Bad " + HeaderMinRevision,
			Detail: "query " + q.Name + " does not name the stream it reads (stream:), so it cannot wait for a revision; use " + HeaderMinPosition}
	}
	rev, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, false, &Problem{Status: http.StatusBadRequest, Title: "Bad " + HeaderMinRevision,
			Detail: HeaderMinRevision + " is a stream revision: a whole number, the append's next_revision - 1"}
	}
	return rev, true, nil
}

// accepts reports whether an Accept header asks for mediaType before JSON.
func accepts(accept, mediaType string) bool {
	for _, part := range strings.Split(accept, ",") {
		mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
		switch strings.ToLower(strings.TrimSpace(mt)) {
		case mediaType:
			return true
		case "application/json", "application/*", "*/*":
			return false
		}
	}
	return false
}
