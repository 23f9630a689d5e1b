package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
)

// Staleness headers, on every read-model response.
const (
	HeaderPosition    = "Projection-Position"     // the checkpoint the data reflects
	HeaderHead        = "Projection-Head"         // the newest position the store has
	HeaderLagMs       = "Projection-Lag-Ms"       // age in ms of the oldest event not reflected; 0 when caught up
	HeaderStatus      = "Projection-Status"       // live, catching-up, rebuilding, stalled, failed or stopped
	HeaderMinPosition = "Projection-Min-Position" // read your writes: wait until this position is applied
	HeaderWaitMs      = "Projection-Wait-Ms"      // how long to wait for it
	// HeaderStreamParked, on reads of one stream's row, names the parked
	// event holding that stream: from its revision on, the stream's events
	// are not in the read model, whatever the position says.
	HeaderStreamParked = "Projection-Stream-Parked"
)

// Bounds of a read-your-writes wait.
const (
	WaitDefault = 2 * time.Second
	WaitMax     = 30 * time.Second
)

// fresh serves a read model of the named projection: it waits for the
// position the client asked for, if any, and sets the staleness headers
// from the projection's state before the query runs, so the data is at
// least as fresh as the headers say. stream, when given, names the one
// stream the request reads: if a parked event holds it, the response says
// so, and a read-your-writes request whose position is among the held
// events is answered 409 rather than with data that lacks the write.
func (s *Server) fresh(projection string, stream ...func(echo.Context) string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			r := s.runner(projection)
			if r == nil {
				return problem(c, http.StatusServiceUnavailable, "Projection not running", "projection "+projection+" is not running in this process")
			}
			want, wait, err := s.readYourWrites(c)
			if err != nil {
				return err
			}
			if !want.IsStart() {
				ctx, cancel := context.WithTimeout(c.Request().Context(), wait)
				err := s.waitFor(ctx, r, want)
				cancel()
				if err != nil {
					s.stalenessHeaders(c, r)
					c.Response().Header().Set("Retry-After", "1")
					return problem(c, http.StatusServiceUnavailable, "Not fresh enough yet",
						"projection "+projection+" has not applied position "+want.String()+" within "+wait.String()+"; retry, or read without "+HeaderMinPosition)
				}
			}
			s.stalenessHeaders(c, r)
			if len(stream) == 0 {
				return next(c)
			}
			hc := &heldCheck{r: r, projection: projection, stream: stream[0](c), want: want}
			c.Set(heldKey, hc)
			err = next(c)
			if !hc.queued {
				s.cfg.Logger.Error("the handler did not check whether the stream it read is held", "path", c.Path(), "stream", hc.stream)
			}
			return err
		}
	}
}

// heldKey is where fresh leaves a heldCheck in the echo.Context.
const heldKey = "sightline.held"

// heldCheck is the check of a read of one stream's row against the parked
// events holding that stream. fresh leaves it to the handler, which queues
// it before its own query (queueHeld) so both take one round trip, and
// answers it before writing the row (answer).
type heldCheck struct {
	r                  *projections.Runner
	projection, stream string
	want               eventstore.Position
	hold               projections.Hold
	queued             bool
}

// queueHeld queues on b the check fresh left for this request, if any.
// b must go to the read models' database, which is the projections'.
func queueHeld(c echo.Context, b *pgx.Batch) *heldCheck {
	hc, _ := c.Get(heldKey).(*heldCheck)
	if hc != nil {
		hc.r.QueueHeld(b, hc.stream, hc.want, &hc.hold)
		hc.queued = true
	}
	return hc
}

// answer sets HeaderStreamParked when a parked event holds the stream, and
// refuses a read-your-writes request that the held events cover. A nil
// check answers nothing.
func (hc *heldCheck) answer(c echo.Context) error {
	if hc == nil || hc.hold.ParkedID == 0 {
		return nil
	}
	hold := hc.hold
	c.Response().Header().Set(HeaderStreamParked, strconv.FormatInt(hold.ParkedID, 10))
	if hc.want.IsStart() || !hold.Covers {
		return nil
	}
	return &Problem{Status: http.StatusConflict, Title: "Stream held by a parked event",
		Detail: fmt.Sprintf("%s is held from revision %d by parked event %d of %s, so position %s is not in the read model; see /v1/projections/%s/parked/%d",
			hc.stream, hold.From, hold.ParkedID, hc.projection, hc.want, hc.projection, hold.ParkedID)}
}

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
	token := c.Request().Header.Get(HeaderMinPosition)
	if token == "" {
		token = c.QueryParam("min_position")
	}
	if token == "" {
		return eventstore.Start, 0, nil
	}
	want, err := s.cfg.Store.ParsePosition(token)
	if err != nil {
		return want, 0, &Problem{Status: http.StatusBadRequest, Title: "Bad position", Detail: err.Error()}
	}
	wait := WaitDefault
	if v := c.Request().Header.Get(HeaderWaitMs); v != "" {
		ms, err := strconv.Atoi(v)
		if err != nil || ms < 0 {
			return want, 0, &Problem{Status: http.StatusBadRequest, Title: "Bad wait", Detail: HeaderWaitMs + " must be a whole number of milliseconds, 0 to 30000"}
		}
		wait = time.Duration(min(ms, int(WaitMax/time.Millisecond))) * time.Millisecond
	}
	return want, wait, nil
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
