package api

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
)

// Staleness headers, on every read-model response.
const (
	HeaderPosition    = "Projection-Position"     // the checkpoint the data reflects
	HeaderHead        = "Projection-Head"         // the newest position the store has
	HeaderLagMs       = "Projection-Lag-Ms"       // age in ms of the oldest event not reflected; 0 when caught up
	HeaderStatus      = "Projection-Status"       // live, catching-up, rebuilding, stalled, failed, degraded or stopped
	HeaderMinPosition = "Projection-Min-Position" // read your writes: wait until this position is applied
	HeaderWaitMs      = "Projection-Wait-Ms"      // how long to wait for it
	// HeaderStreamParked, on reads of a query that names its stream,
	// names the parked event holding that stream: from its revision on,
	// the stream's events are not in the read model, whatever the
	// position says.
	HeaderStreamParked = "Projection-Stream-Parked"
)

// Bounds of a read-your-writes wait.
const (
	WaitDefault = 2 * time.Second
	WaitMax     = 30 * time.Second
)

// waitFor waits for r to reach pos, until ctx ends or the server stops.
func (s *Server) waitFor(ctx context.Context, r *projections.Runner, pos eventstore.Position) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	return r.WaitFor(ctx, pos)
}

// readYourWrites reads Projection-Min-Position (or ?min_position=) and
// Projection-Wait-Ms.
func (s *Server) readYourWrites(c echo.Context) (eventstore.Position, time.Duration, error) {
	wait := WaitDefault
	if v := c.Request().Header.Get(HeaderWaitMs); v != "" {
		var err error
		if wait, err = waitMs(v); err != nil {
			return eventstore.Start, 0, err
		}
	}
	token := c.Request().Header.Get(HeaderMinPosition)
	if token == "" {
		token = c.QueryParam("min_position")
	}
	if token == "" {
		return eventstore.Start, wait, nil
	}
	want, err := s.cfg.Store.ParsePosition(token)
	if err != nil {
		return want, 0, &Problem{Status: http.StatusBadRequest, Title: "Bad position", Detail: err.Error()}
	}
	return want, wait, nil
}

// waitMs reads Projection-Wait-Ms, bounded by WaitMax.
func waitMs(v string) (time.Duration, error) {
	ms, err := strconv.Atoi(v)
	if err != nil || ms < 0 {
		return 0, &Problem{Status: http.StatusBadRequest, Title: "Bad wait", Detail: HeaderWaitMs + " must be a whole number of milliseconds, 0 to 30000"}
	}
	return time.Duration(min(ms, int(WaitMax/time.Millisecond))) * time.Millisecond, nil
}

// stalenessHeaders sets the headers from the projection's status at the
// store's head as of now. A store that keeps its head in memory
// (eventstore.HeadKeeper) saves every request a round trip. If its
// notifications die without a word, what it keeps can fall behind, but
// never below the head that the runner reads from the store on each status
// tick, so the headers are then at most a tick out of date.
func (s *Server) stalenessHeaders(c echo.Context, r *projections.Runner) {
	st, known := projections.Status{}, false
	if k, ok := s.cfg.Store.(eventstore.HeadKeeper); ok {
		var head eventstore.Head
		if head, known = k.KnownHead(); known {
			st = r.StatusAt(head)
		}
	}
	if !known {
		ctx, cancel := context.WithTimeout(c.Request().Context(), time.Second)
		defer cancel()
		if head, err := s.cfg.Store.Head(ctx); err == nil {
			st = r.StatusAt(head)
		} else {
			st = r.Status() // the head as last seen
		}
	}
	h := c.Response().Header()
	h.Set(HeaderPosition, st.Position.String())
	h.Set(HeaderHead, st.Head.String())
	h.Set(HeaderLagMs, strconv.FormatInt(st.Lag.Milliseconds(), 10))
	h.Set(HeaderStatus, st.Status)
}

func (s *Server) runner(name string) *projections.Runner {
	if s.cfg.Daemon == nil {
		return nil
	}
	return s.cfg.Daemon.Runner(name)
}

// errorHandler answers every error as a problem document.
func (s *Server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	var p *Problem
	if errors.As(err, &p) {
		_ = problem(c, p.Status, p.Title, p.Detail)
		return
	}
	var he *echo.HTTPError
	status, detail := http.StatusInternalServerError, "internal error"
	if errors.As(err, &he) {
		status = he.Code
		if m, ok := he.Message.(string); ok {
			detail = m
		} else {
			detail = http.StatusText(status)
		}
	} else {
		s.cfg.Logger.Error("request failed", "method", c.Request().Method, "path", c.Path(), "error", err)
	}
	_ = problem(c, status, http.StatusText(status), detail)
}

// Problem is an error answered as an RFC 9457 problem document.
type Problem struct {
	Status        int
	Title, Detail string
}

func (p *Problem) Error() string { return p.Title + ": " + p.Detail }
