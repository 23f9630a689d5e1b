package api

import (
	"cmp"
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/projections"
)

// Defaults of Limits. The write timeout leaves room for the longest
// read-your-writes wait (WaitMax) and two declared queries after it (a
// query of one stream may read once more after its wait), with time to
// spare for the answer: WaitMax + 2 × the query timeout + 10 s, which is
// WriteTimeoutDefault with the default query timeout.
const (
	ReadHeaderTimeoutDefault = 10 * time.Second
	ReadTimeoutDefault       = 30 * time.Second
	WriteTimeoutDefault      = WaitMax + 2*QueryTimeoutDefault + 10*time.Second
	IdleTimeoutDefault       = 2 * time.Minute
	MaxWaitsDefault          = 1024
	MaxStreamsDefault        = 256
)

// Limits bound what a client can hold of the server: its connections'
// time and its read-your-writes waits. The zero value of each is its
// default.
type Limits struct {
	// ReadHeaderTimeout is how long a client may take to send a
	// request's headers; ReadTimeout the whole request, body included.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	ReadTimeout       time.Duration `yaml:"read_timeout"`
	// WriteTimeout is how long a request may take once read, its wait
	// and query included. It must exceed WaitMax and the query timeout
	// together.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout is how long an idle keep-alive connection is kept.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxWaits bounds the read-your-writes requests waiting at once;
	// past it, a request that would wait is answered 503 with
	// Retry-After. Requests whose write is already applied never wait
	// and are not counted.
	MaxWaits int `yaml:"max_waits"`
	// MaxStreams bounds the status streams (GET /v1/projections/events)
	// open at once, each of which holds a connection; past it, a new one
	// is answered 503 with Retry-After.
	MaxStreams int `yaml:"max_streams"`
}

// withDefaults is l with each zero value set to its default, for
// declared queries cut off after queryTimeout.
func (l Limits) withDefaults(queryTimeout time.Duration) Limits {
	queryTimeout = cmp.Or(queryTimeout, QueryTimeoutDefault)
	l.ReadHeaderTimeout = cmp.Or(l.ReadHeaderTimeout, ReadHeaderTimeoutDefault)
	l.ReadTimeout = cmp.Or(l.ReadTimeout, ReadTimeoutDefault)
	l.WriteTimeout = cmp.Or(l.WriteTimeout, WaitMax+2*queryTimeout+10*time.Second)
	l.IdleTimeout = cmp.Or(l.IdleTimeout, IdleTimeoutDefault)
	l.MaxWaits = cmp.Or(l.MaxWaits, MaxWaitsDefault)
	l.MaxStreams = cmp.Or(l.MaxStreams, MaxStreamsDefault)
	return l
}

// Check refuses limits the server cannot keep with declared queries cut
// off after queryTimeout (0: QueryTimeoutDefault).
func (l Limits) Check(queryTimeout time.Duration) error {
	if l.ReadHeaderTimeout < 0 || l.ReadTimeout < 0 || l.WriteTimeout < 0 || l.IdleTimeout < 0 || l.MaxWaits < 0 || l.MaxStreams < 0 {
		return fmt.Errorf("http limits must not be negative")
	}
	least := WaitMax + cmp.Or(queryTimeout, QueryTimeoutDefault)
	if l.WriteTimeout != 0 && l.WriteTimeout <= least {
		return fmt.Errorf("http write timeout %s: it must exceed the longest read-your-writes wait and a query's timeout together, %s", l.WriteTimeout, least)
	}
	if l.ReadTimeout != 0 && l.ReadHeaderTimeout > l.ReadTimeout {
		return fmt.Errorf("http read header timeout %s exceeds the read timeout %s", l.ReadHeaderTimeout, l.ReadTimeout)
	}
	return nil
}

// configure sets the limits on the server echo serves with.
func (l Limits) configure(srv *http.Server) {
	srv.ReadHeaderTimeout = l.ReadHeaderTimeout
	srv.ReadTimeout = l.ReadTimeout
	srv.WriteTimeout = l.WriteTimeout
	srv.IdleTimeout = l.IdleTimeout
}

// waitSlot takes one of the MaxWaits slots of read-your-writes waits; ok
// is false when all are taken. release gives it back.
func (s *Server) waitSlot() (release func(), ok bool) {
	select {
	case s.waits <- struct{}{}:
		return func() { <-s.waits }, true
	default:
		s.waitsRefused.Inc()
		return nil, false
	}
}

// tooManyWaits is the 503 of a request that would wait while MaxWaits
// others do.
func (s *Server) tooManyWaits(c echo.Context, r *projections.Runner) error {
	s.stalenessHeaders(c, r)
	c.Response().Header().Set("Retry-After", "1")
	return problem(c, http.StatusServiceUnavailable, "Too many waits",
		fmt.Sprintf("%d read-your-writes requests are waiting already; retry, or read without %s and %s", s.cfg.Limits.MaxWaits, HeaderMinPosition, HeaderMinRevision))
}
