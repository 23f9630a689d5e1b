package api

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo-contrib/echoprometheus"
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sightlinehq/sightline/console"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/internal/redact"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/query"
)

// AddrDefault is where the API listens unless told otherwise.
const AddrDefault = "127.0.0.1:8080"

// MaxBodyDefault bounds a request body.
const MaxBodyDefault = 1 << 20

// Config configures a Server.
type Config struct {
	// Addr is the listen address. Defaults to AddrDefault.
	Addr string
	// Pool is the read models' database.
	Pool *pgxpool.Pool
	// Store is the event source: appends, the head, position tokens.
	Store eventstore.Store
	// Token, when set, is the bearer token every route that writes or
	// changes state requires. It reads too.
	Token string
	// ReadToken, when set, is the bearer token the reads require: the
	// projections' status, their queries and /metrics. The probes and the
	// OpenAPI document stay open.
	ReadToken string
	// Limits bound connections and read-your-writes waits.
	Limits Limits
	// ReadyMaxLag, when set, makes /readyz fail while a projection lags
	// more than this behind the head. A failed projection fails it always.
	ReadyMaxLag time.Duration
	// MaxBody bounds request bodies. Defaults to MaxBodyDefault.
	MaxBody int64
	// Registerer receives the HTTP request metrics. Defaults to none.
	Registerer prometheus.Registerer
	// Daemon runs the projections whose status the API reports.
	Daemon *projections.Daemon
	// SourceReady reports whether the event source is connected.
	SourceReady func() bool
	// Gatherer serves /metrics. Defaults to prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// Queries are the declared queries to serve, as projections.Check
	// returns them.
	Queries []*query.Prepared
	// QueryTimeout bounds each declared query (PostgreSQL's
	// statement_timeout). Defaults to QueryTimeoutDefault.
	QueryTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Version is sightline's version, which the console shows.
	Version string
}

// Server is sightline's HTTP API.
type Server struct {
	cfg      Config
	echo     *echo.Echo
	ln       net.Listener
	stopping chan struct{} // closed by Shutdown: releases read-your-writes waits
	stopOnce sync.Once
	// waits holds a token for each read-your-writes request waiting.
	waits        chan struct{}
	waitsRefused prometheus.Counter
	// streams holds a token for each status stream open; hub feeds them.
	streams chan struct{}
	hub     *statusHub

	// readPool runs the declared queries: its connections are read-only,
	// with the statement timeout, and read the readmodel views, which
	// show each projection's active generation.
	readPool *pgxpool.Pool
	queries  map[string][]*query.Prepared // by projection, in declaration order
	openapi  []byte
	console  *console.Console
}

// New builds the server; Serve serves it, and Shutdown (or Close) ends it.
func New(cfg Config) (*Server, error) {
	cfg.Addr = cmp.Or(cfg.Addr, AddrDefault)
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.DefaultGatherer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.MaxBody = cmp.Or(cfg.MaxBody, MaxBodyDefault)
	cfg.QueryTimeout = cmp.Or(cfg.QueryTimeout, QueryTimeoutDefault)
	if cfg.Pool == nil {
		return nil, errors.New("api: a Pool is required")
	}
	if cfg.ReadToken != "" && cfg.Token == "" {
		return nil, errors.New("api: a read token without an API token would guard the reads and leave the writes and dead letters open: set both")
	}
	if err := cfg.Limits.Check(cfg.QueryTimeout); err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	cfg.Limits = cfg.Limits.withDefaults(cfg.QueryTimeout)
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	s := &Server{cfg: cfg, echo: e, stopping: make(chan struct{}), queries: map[string][]*query.Prepared{},
		waits: make(chan struct{}, cfg.Limits.MaxWaits), streams: make(chan struct{}, cfg.Limits.MaxStreams),
		waitsRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "sightline_http_waits_refused_total",
			Help: "Read-your-writes requests answered 503 at once because MaxWaits others were waiting."})}
	for _, q := range cfg.Queries {
		s.queries[q.Projection] = append(s.queries[q.Projection], q)
	}
	e.HTTPErrorHandler = s.errorHandler
	e.Server.ErrorLog = slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn) // through the logger, which masks secrets
	e.Use(middleware.RecoverWithConfig(middleware.RecoverConfig{
		LogErrorFunc: func(c echo.Context, err error, stack []byte) error {
			cfg.Logger.Error("request panicked", "method", c.Request().Method, "path", c.Path(), "error", err, "stack", string(stack))
			return err
		},
	}))
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(s.waitsRefused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sightline_http_waits",
			Help: "Read-your-writes requests waiting now."}, func() float64 { return float64(len(s.waits)) }))
		e.Use(echoprometheus.NewMiddlewareWithConfig(echoprometheus.MiddlewareConfig{
			Namespace: "sightline", Subsystem: "http", Registerer: cfg.Registerer,
			// A status stream lasts as long as its client: its duration
			// would tell nothing of how fast the server answers.
			Skipper:           func(c echo.Context) bool { return c.Path() == "/metrics" || c.Path() == "/v1/projections/events" },
			HistogramOptsFunc: requestBuckets,
		}))
	}
	var err error
	if s.console, err = console.New(console.Options{Version: cfg.Version, Access: access(cfg), Projections: names(cfg.Daemon)}); err != nil {
		return nil, err
	}
	sc := newSchemas()
	rs := s.routes(sc)
	if err := checkRoutes(rs); err != nil {
		return nil, err
	}
	for _, r := range rs {
		e.Add(r.method, r.path, r.handler, r.mw...)
	}
	t, err := buildOpenAPI(rs, sc)
	if err == nil {
		s.openapi, err = json.Marshal(t)
	}
	if err != nil {
		return nil, fmt.Errorf("api: the OpenAPI document: %w", err)
	}
	if s.readPool, err = openReadPool(cfg.Pool, cfg.QueryTimeout); err != nil {
		return nil, err
	}
	var runners []*projections.Runner
	if cfg.Daemon != nil {
		runners = cfg.Daemon.Runners()
	}
	s.hub = newStatusHub(runners)
	s.hub.start()
	return s, nil
}

// access is what the console needs a token for under cfg.
func access(cfg Config) console.Access {
	switch {
	case cfg.ReadToken != "":
		return console.AccessReads
	case cfg.Token != "":
		return console.AccessActions
	}
	return console.AccessOpen
}

// names are the names of d's projections.
func names(d *projections.Daemon) []string {
	var out []string
	if d != nil {
		for _, r := range d.Runners() {
			out = append(out, r.Name())
		}
	}
	return out
}

// openReadPool opens the declared queries' pool beside pool, on the same
// database: connections that are read-only whatever is sent on them, cut
// a statement off after timeout, and resolve a query's unqualified table
// names to the readmodel views. It connects when first used.
func openReadPool(pool *pgxpool.Pool, timeout time.Duration) (*pgxpool.Pool, error) {
	cfg := pool.Config()
	params := cfg.ConnConfig.RuntimeParams
	params["default_transaction_read_only"] = "on"
	params["statement_timeout"] = strconv.FormatInt(max(timeout.Milliseconds(), 1), 10)
	params["search_path"] = "readmodel, public"
	params["application_name"] = "sightline queries"
	cfg.MinConns = 0
	rp, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		return nil, fmt.Errorf("api: the queries' pool: %w", err)
	}
	return rp, nil
}

// requestBuckets gives sightline_http_request_duration_seconds buckets
// that resolve the queries' target (SPEC §7: p99 under 5 ms): powers of
// two from a quarter of a millisecond to about 8 s. The default buckets
// start at 5 ms, below which a dashboard could tell nothing. The size
// histograms keep theirs.
func requestBuckets(opts prometheus.HistogramOpts) prometheus.HistogramOpts {
	if opts.Name == "request_duration_seconds" {
		opts.Buckets = prometheus.ExponentialBuckets(0.00025, 2, 16)
	}
	return opts
}

// requireToken asks for the API token, when one is configured.
func (s *Server) requireToken(next echo.HandlerFunc) echo.HandlerFunc {
	if s.cfg.Token == "" {
		return next
	}
	return bearer("this route needs Authorization: Bearer <SIGHTLINE_API_TOKEN>", s.cfg.Token)(next)
}

// requireRead asks for the read token, when one is configured; the API
// token reads too.
func (s *Server) requireRead(next echo.HandlerFunc) echo.HandlerFunc {
	if s.cfg.ReadToken == "" {
		return next
	}
	return bearer("this route needs Authorization: Bearer <SIGHTLINE_READ_TOKEN> (or the API token)", s.cfg.ReadToken, s.cfg.Token)(next)
}

// bearer accepts a request whose bearer token is one of tokens (empty
// ones never match), compared in constant time.
func bearer(detail string, tokens ...string) echo.MiddlewareFunc {
	return middleware.KeyAuthWithConfig(middleware.KeyAuthConfig{
		KeyLookup:  "header:" + echo.HeaderAuthorization,
		AuthScheme: "Bearer",
		Validator: func(key string, _ echo.Context) (bool, error) {
			ok := 0
			for _, t := range tokens {
				if t != "" {
					// Digests, so that not even the length is told.
					a, b := sha256.Sum256([]byte(key)), sha256.Sum256([]byte(t))
					ok |= subtle.ConstantTimeCompare(a[:], b[:])
				}
			}
			return ok == 1, nil
		},
		ErrorHandler: func(_ error, c echo.Context) error {
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="sightline"`)
			return problem(c, http.StatusUnauthorized, "Unauthorized", detail)
		},
	})
}

// limitBody bounds the request body; reading past it fails.
func (s *Server) limitBody(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		c.Request().Body = http.MaxBytesReader(c.Response(), c.Request().Body, s.cfg.MaxBody)
		return next(c)
	}
}

// Handler returns the server's HTTP handler, for tests.
func (s *Server) Handler() http.Handler { return s.echo }

// Listen binds the listen address, so that a caller knows it is taken
// before Serve; Addr then reports the bound address.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return err
	}
	s.ln = ln
	s.cfg.Limits.configure(s.echo.Server)
	return nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() string {
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.cfg.Addr
}

// Serve serves until Shutdown; it returns nil after a shutdown.
func (s *Server) Serve() error {
	if s.ln == nil {
		if err := s.Listen(); err != nil {
			return err
		}
	}
	s.echo.Listener = s.ln
	err := s.echo.Start("")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown lets requests in flight finish until ctx ends; requests waiting
// to read their writes are answered 503 at once. Then it closes the
// queries' pool.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stopping) })
	err := s.echo.Shutdown(ctx)
	s.hub.close()
	s.readPool.Close()
	return err
}

// Close ends a server that was never served (one whose Handler a test
// mounted, or one whose start failed after Listen): it releases waits,
// closes the listener and the queries' pool.
func (s *Server) Close() {
	s.stopOnce.Do(func() { close(s.stopping) })
	if s.ln != nil {
		_ = s.ln.Close() // already closed if it was served
	}
	s.hub.close()
	s.readPool.Close()
}

func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, Health{Status: "ok"})
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{"database": "ok", "source": "ok"}
	ready := true
	// The probe is open: with a read token set, it says what fails, not
	// why (the reasons are read with the token at /v1/projections).
	detail := func(short, why string) string {
		if s.cfg.ReadToken != "" {
			return short
		}
		return short + ": " + redact.URLsIn(why)
	}
	if err := s.cfg.Pool.Ping(ctx); err != nil {
		checks["database"], ready = detail("unreachable", err.Error()), false
	}
	if s.cfg.SourceReady != nil && !s.cfg.SourceReady() {
		checks["source"], ready = "not connected", false
	}
	if s.cfg.Daemon != nil {
		for _, r := range s.cfg.Daemon.Runners() {
			st := r.Status()
			switch {
			case st.Status == projections.StatusFailed:
				checks["projection "+st.Name], ready = detail("failed", st.Reason), false
			case s.cfg.ReadyMaxLag > 0 && st.Lag > s.cfg.ReadyMaxLag:
				checks["projection "+st.Name], ready = fmt.Sprintf("lags %s, more than %s", st.Lag.Round(time.Millisecond), s.cfg.ReadyMaxLag), false
			}
		}
	}
	if !ready {
		return c.JSON(http.StatusServiceUnavailable, Readiness{Status: "not ready", Checks: checks})
	}
	return c.JSON(http.StatusOK, Readiness{Status: "ready", Checks: checks})
}

// ProjectionStatus is the JSON form of a projection's status.
type ProjectionStatus struct {
	Name            string  `json:"name"`
	Version         int     `json:"version"`
	Status          string  `json:"status"`
	Position        string  `json:"position"`
	Head            string  `json:"head"`
	LagMs           int64   `json:"lag_ms"`
	EventsPerSecond float64 `json:"events_per_second"`
	// Parked counts the events parked or held behind them.
	Parked int `json:"parked"`
	// Reason says why the status is failed, degraded or stalled.
	Reason string `json:"reason,omitempty"`
	// Owner is the process that applies the projection (null while none
	// does, or while different processes apply its segments); Owned says
	// whether it is the one answering.
	Owner     *OwnerJSON `json:"owner"`
	Owned     bool       `json:"owned"`
	LastError string     `json:"last_error,omitempty"`
	// Rebuild is the rebuild under way; null when none is.
	Rebuild *RebuildStatus `json:"rebuild"`
	// Segments are a segmented projection's segments, each with its own
	// position and owner; absent for a projection of one segment. The
	// position above is the lowest of theirs, the lag the highest.
	Segments []SegmentStatus `json:"segments,omitempty"`
}

// SegmentStatus is the JSON form of one segment of a projection.
type SegmentStatus struct {
	Segment         int        `json:"segment"`
	Status          string     `json:"status"`
	Position        string     `json:"position"`
	LagMs           int64      `json:"lag_ms"`
	EventsPerSecond float64    `json:"events_per_second"`
	Reason          string     `json:"reason,omitempty"`
	Owner           *OwnerJSON `json:"owner"`
	Owned           bool       `json:"owned"`
}

// OwnerJSON is the process that applies a projection.
type OwnerJSON struct {
	ID    string    `json:"id"`
	Host  string    `json:"host"`
	PID   int       `json:"pid"`
	Since time.Time `json:"since"`
}

func statusJSON(st projections.Status) ProjectionStatus {
	st.Reason, st.LastError = redact.URLsIn(st.Reason), redact.URLsIn(st.LastError)
	out := ProjectionStatus{Owner: ownerJSON(st.Owner), Owned: st.Owned,
		Name: st.Name, Version: st.Version, Status: st.Status, Position: st.Position.String(),
		Head: st.Head.String(), LagMs: st.Lag.Milliseconds(), EventsPerSecond: st.EventsPerSecond, Parked: st.Parked, Reason: st.Reason, LastError: st.LastError,
		Rebuild: rebuildJSON(st.Rebuild),
	}
	for _, seg := range st.Segments {
		out.Segments = append(out.Segments, SegmentStatus{Segment: seg.Segment, Status: seg.Status, Position: seg.Position.String(),
			LagMs: seg.Lag.Milliseconds(), EventsPerSecond: seg.EventsPerSecond, Reason: redact.URLsIn(seg.Reason),
			Owner: ownerJSON(seg.Owner), Owned: seg.Owned})
	}
	return out
}

func ownerJSON(o *projections.Owner) *OwnerJSON {
	if o == nil {
		return nil
	}
	return &OwnerJSON{ID: o.ID, Host: o.Host, PID: o.PID, Since: o.Since}
}

func (s *Server) listProjections(c echo.Context) error {
	out := ProjectionList{Projections: []ProjectionStatus{}}
	if s.cfg.Daemon != nil {
		for _, r := range s.cfg.Daemon.Runners() {
			out.Projections = append(out.Projections, statusJSON(r.Status()))
		}
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) getProjection(c echo.Context) error {
	r, err := s.namedRunner(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, statusJSON(r.Status()))
}

// problem answers with an RFC 9457 problem document.
func problem(c echo.Context, status int, title, detail string) error {
	body, err := json.Marshal(map[string]any{"type": "about:blank", "title": title, "status": status, "detail": detail})
	if err != nil {
		return err
	}
	return c.Blob(status, "application/problem+json", body)
}
