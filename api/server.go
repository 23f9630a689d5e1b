package api

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo-contrib/echoprometheus"
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
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
	// changes state requires.
	Token string
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
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Server is sightline's HTTP API.
type Server struct {
	cfg      Config
	echo     *echo.Echo
	ln       net.Listener
	stopping chan struct{} // closed by Shutdown: releases read-your-writes waits
	stopOnce sync.Once
}

// New builds the server; Start serves it.
func New(cfg Config) *Server {
	cfg.Addr = cmp.Or(cfg.Addr, AddrDefault)
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.DefaultGatherer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.MaxBody = cmp.Or(cfg.MaxBody, MaxBodyDefault)
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	s := &Server{cfg: cfg, echo: e, stopping: make(chan struct{})}
	e.HTTPErrorHandler = s.errorHandler
	e.Use(middleware.Recover())
	if cfg.Registerer != nil {
		e.Use(echoprometheus.NewMiddlewareWithConfig(echoprometheus.MiddlewareConfig{
			Namespace: "sightline", Subsystem: "http", Registerer: cfg.Registerer,
			Skipper:           func(c echo.Context) bool { return c.Path() == "/metrics" },
			HistogramOptsFunc: requestBuckets,
		}))
	}
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})))
	e.GET("/v1/projections", s.listProjections)
	e.GET("/v1/projections/:name", s.getProjection)

	e.GET("/v1/orders/:id", s.getOrder, s.fresh("orders", func(c echo.Context) string { return readmodel.OrderStreamPrefix + c.Param("id") }))
	e.GET("/v1/orders", s.listOrders, s.fresh("orders"))
	e.GET("/v1/customers/:id/stats", s.customerStats, s.fresh("customer_stats"))
	e.GET("/v1/sales/daily", s.dailySales, s.fresh("daily_sales"))

	// Writing routes: the token (when set) and a body limit, per route, so
	// that unknown paths still answer 404.
	e.POST("/v1/streams/:stream", s.appendEvents, s.requireToken, s.limitBody)
	// Dead letters carry whole events (data, metadata, errors): admin only.
	e.GET("/v1/projections/:name/parked", s.listParked, s.requireToken)
	e.GET("/v1/projections/:name/parked/:id", s.getParked, s.requireToken)
	e.POST("/v1/projections/:name/parked/:id/retry", s.retryParked, s.requireToken, s.limitBody)
	e.POST("/v1/projections/:name/parked/:id/skip", s.skipParked, s.requireToken, s.limitBody)
	e.POST("/v1/projections/:name/rebuild", s.rebuildProjection, s.requireToken, s.limitBody)
	return s
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

// requireToken asks for the bearer token, when one is configured, compared
// in constant time.
func (s *Server) requireToken(next echo.HandlerFunc) echo.HandlerFunc {
	if s.cfg.Token == "" {
		return next
	}
	return middleware.KeyAuthWithConfig(middleware.KeyAuthConfig{
		KeyLookup:  "header:" + echo.HeaderAuthorization,
		AuthScheme: "Bearer",
		Validator: func(key string, _ echo.Context) (bool, error) {
			return subtle.ConstantTimeCompare([]byte(key), []byte(s.cfg.Token)) == 1, nil
		},
		ErrorHandler: func(_ error, c echo.Context) error {
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="sightline"`)
			return problem(c, http.StatusUnauthorized, "Unauthorized", "this route needs Authorization: Bearer <SIGHTLINE_API_TOKEN>")
		},
	})(next)
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
// to read their writes are answered 503 at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stopping) })
	return s.echo.Shutdown(ctx)
}

func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	checks := map[string]string{"database": "ok", "source": "ok"}
	ready := true
	if err := s.cfg.Pool.Ping(ctx); err != nil {
		checks["database"], ready = err.Error(), false
	}
	if s.cfg.SourceReady != nil && !s.cfg.SourceReady() {
		checks["source"], ready = "not connected", false
	}
	if !ready {
		return c.JSON(http.StatusServiceUnavailable, map[string]any{"status": "not ready", "checks": checks})
	}
	return c.JSON(http.StatusOK, map[string]any{"status": "ready", "checks": checks})
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
	Parked    int    `json:"parked"`
	LastError string `json:"last_error,omitempty"`
	// Rebuild is the rebuild under way; null when none is.
	Rebuild *RebuildStatus `json:"rebuild"`
}

func statusJSON(st projections.Status) ProjectionStatus {
	return ProjectionStatus{
		Name: st.Name, Version: st.Version, Status: st.Status, Position: st.Position.String(),
		Head: st.Head.String(), LagMs: st.Lag.Milliseconds(), EventsPerSecond: st.EventsPerSecond, Parked: st.Parked, LastError: st.LastError,
		Rebuild: rebuildJSON(st.Rebuild),
	}
}

func (s *Server) listProjections(c echo.Context) error {
	out := []ProjectionStatus{}
	if s.cfg.Daemon != nil {
		for _, r := range s.cfg.Daemon.Runners() {
			out = append(out, statusJSON(r.Status()))
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"projections": out})
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
