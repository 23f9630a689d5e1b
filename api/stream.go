package api

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/projections"
)

// The status stream's pace and memory.
const (
	// StreamInterval is how often the status of every projection is
	// looked at: a projection's status is sent at most this often, on
	// change.
	StreamInterval = 250 * time.Millisecond
	// StreamHeartbeat is how long a quiet stream waits before sending a
	// comment, so that proxies and clients see it is alive.
	StreamHeartbeat = 15 * time.Second
	// StreamWriteTimeout bounds each write of a stream: a client that
	// has stopped reading for this long is let go.
	StreamWriteTimeout = 30 * time.Second
	// HistoryInterval and HistoryLength: the status history of each
	// projection keeps a sample a second for the last ten minutes.
	HistoryInterval = time.Second
	HistoryLength   = 600
	// streamRetained is how many events (at least) the stream keeps for
	// clients resuming with Last-Event-ID; one resuming from further back
	// gets every projection's status afresh.
	streamRetained = 4096
	// streamRetry is the reconnect delay the stream asks clients for.
	streamRetry = 2 * time.Second
)

// HeaderLastEventID is the header of a client resuming a status stream.
const HeaderLastEventID = "Last-Event-ID"

// History is GET /v1/projections/{name}/history: the projection's lag and
// rate as this process saw them, a sample every IntervalMs, oldest first.
type History struct {
	Projection string          `json:"projection"`
	IntervalMs int64           `json:"interval_ms"`
	Samples    []HistorySample `json:"samples"`
}

// HistorySample is one sample of a History.
type HistorySample struct {
	At              time.Time `json:"at"`
	LagMs           int64     `json:"lag_ms"`
	EventsPerSecond float64   `json:"events_per_second"`
	Parked          int       `json:"parked"`
	Status          string    `json:"status"`
}

// statusEvent is one event of the status stream: a projection's status as
// GET /v1/projections/{name} answers it.
type statusEvent struct {
	seq        uint64
	projection string
	data       []byte
}

// statusHub watches every projection's status: it numbers each change as
// an event of the status stream, keeps the last streamRetained of them for
// clients that resume, and keeps each projection's history. One goroutine
// looks; any number of streams read.
type statusHub struct {
	runners []*projections.Runner
	// epoch tells this process's event ids from another's, so that a
	// client resuming across a restart gets a fresh start rather than
	// events it has not seen numbered as if it had.
	epoch string

	mu      sync.Mutex
	seq     uint64
	events  []statusEvent          // the last streamRetained or more, oldest first
	latest  map[string]statusEvent // each projection's last event
	history map[string][]HistorySample
	changed chan struct{} // closed, and replaced, at each change

	stop context.CancelFunc
	done chan struct{}
}

func newStatusHub(runners []*projections.Runner) *statusHub {
	return &statusHub{runners: runners, epoch: strconv.FormatInt(time.Now().UnixNano(), 36),
		latest: map[string]statusEvent{}, history: map[string][]HistorySample{}, changed: make(chan struct{})}
}

// start looks at the projections every StreamInterval until close.
func (h *statusHub) start() {
	ctx, stop := context.WithCancel(context.Background())
	h.stop, h.done = stop, make(chan struct{})
	go func() {
		defer close(h.done)
		tick := time.NewTicker(StreamInterval)
		defer tick.Stop()
		lastSample := time.Time{}
		for {
			now := time.Now()
			sample := now.Sub(lastSample) >= HistoryInterval
			if sample {
				lastSample = now
			}
			h.look(now, sample)
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
}

func (h *statusHub) close() {
	if h.stop != nil {
		h.stop()
		<-h.done
	}
}

// look publishes each projection whose status changed since its last
// event and, when sample is set, adds a sample to each one's history.
func (h *statusHub) look(now time.Time, sample bool) {
	type seen struct {
		name string
		st   projections.Status
		data []byte
	}
	all := make([]seen, 0, len(h.runners))
	for _, r := range h.runners {
		st := r.Status()
		data, err := json.Marshal(statusJSON(st))
		if err != nil {
			continue // a status always marshals; nothing to send otherwise
		}
		all = append(all, seen{r.Name(), st, data})
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	published := false
	for _, s := range all {
		published = h.record(s.name, s.data) || published
	}
	if sample {
		for _, s := range all {
			hs := h.history[s.name]
			if len(hs) == HistoryLength {
				hs = slices.Delete(hs, 0, 1)
			}
			h.history[s.name] = append(hs, HistorySample{At: now.UTC().Truncate(time.Millisecond), LagMs: s.st.Lag.Milliseconds(),
				EventsPerSecond: s.st.EventsPerSecond, Parked: s.st.Parked, Status: s.st.Status})
		}
	}
	if published {
		close(h.changed)
		h.changed = make(chan struct{})
	}
}

// record numbers data as the projection's next event, unless it is its
// last event's; it reports whether it did. h.mu is held.
func (h *statusHub) record(name string, data []byte) bool {
	if last, ok := h.latest[name]; ok && bytes.Equal(last.data, data) {
		return false
	}
	h.seq++
	ev := statusEvent{seq: h.seq, projection: name, data: data}
	h.latest[name] = ev
	if len(h.events) == streamRetained+streamRetained/4 {
		// Drop a quarter at once rather than one at every event: at
		// least streamRetained stay.
		h.events = append(h.events[:0], h.events[streamRetained/4:]...)
	}
	h.events = append(h.events, ev)
	return true
}

// id is the event id of seq, as the stream sends it.
func (h *statusHub) id(seq uint64) string { return h.epoch + "-" + strconv.FormatUint(seq, 10) }

// resumeFrom reads a Last-Event-ID: the sequence number after which to go
// on, and whether it is one of this process's and still retained.
func (h *statusHub) resumeFrom(lastID string) (uint64, bool) {
	epoch, n, ok := strings.Cut(lastID, "-")
	if !ok || epoch != h.epoch {
		return 0, false
	}
	seq, err := strconv.ParseUint(n, 10, 64)
	if err != nil {
		return 0, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq > h.seq || seq+uint64(len(h.events)) < h.seq {
		return 0, false
	}
	return seq, true
}

// after returns the events after seq of the projections in want (all
// when want is nil), or, when fresh is set or seq is no longer retained
// (a reader that fell far behind), each one's latest event: a start
// afresh. It returns the sequence to go on from and the channel closed at
// the next change.
func (h *statusHub) after(seq uint64, fresh bool, want map[string]bool) ([]statusEvent, uint64, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// The retained events are numbered without holes, the first
	// h.seq-len+1.
	first := h.seq - uint64(len(h.events)) + 1
	var from []statusEvent
	switch {
	case !fresh && seq+1 >= first:
		from = h.events[seq+1-first:]
	default:
		for _, ev := range h.latest {
			from = append(from, ev)
		}
		slices.SortFunc(from, func(a, b statusEvent) int { return cmp.Compare(a.seq, b.seq) })
	}
	var out []statusEvent
	for _, ev := range from {
		if want == nil || want[ev.projection] {
			out = append(out, ev)
		}
	}
	return out, h.seq, h.changed
}

// historyOf returns a copy of a projection's history.
func (h *statusHub) historyOf(name string) []HistorySample {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.history[name])
}

// streamStatus is GET /v1/projections/events: Server-Sent Events, one
// "status" event per projection change, resumable by Last-Event-ID (or
// ?last_event_id=, for clients that cannot set headers).
func (s *Server) streamStatus(c echo.Context) error {
	var want map[string]bool
	if names := c.QueryParams()["projection"]; len(names) > 0 {
		want = map[string]bool{}
		for _, list := range names {
			for _, name := range strings.Split(list, ",") {
				name = strings.TrimSpace(name)
				if s.runner(name) == nil {
					return problem(c, http.StatusNotFound, "Projection not found", "no projection named "+name)
				}
				want[name] = true
			}
		}
	}
	release, ok := s.streamSlot()
	if !ok {
		c.Response().Header().Set("Retry-After", "5")
		return problem(c, http.StatusServiceUnavailable, "Too many streams",
			fmt.Sprintf("%d status streams are open already; retry later, or read GET /v1/projections", s.cfg.Limits.MaxStreams))
	}
	defer release()

	// The server's read and write timeouts bound a request; a stream
	// lasts as long as its client stays, so it lifts them, and bounds
	// each write instead: a client that stops reading is let go. Where
	// the writer cannot say (a test's recorder), there is nothing to set.
	rc := http.NewResponseController(c.Response().Writer)
	supported := func(err error) error {
		if errors.Is(err, http.ErrNotSupported) {
			return nil
		}
		return err
	}
	if err := supported(rc.SetReadDeadline(time.Time{})); err != nil {
		return err
	}
	w := c.Response()
	send := func(b []byte) error {
		if err := supported(rc.SetWriteDeadline(time.Now().Add(StreamWriteTimeout))); err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		return supported(rc.Flush())
	}
	seq, resumed := s.hub.resumeFrom(c.Request().Header.Get(HeaderLastEventID))
	if !resumed {
		seq, resumed = s.hub.resumeFrom(c.QueryParam("last_event_id"))
	}
	h := c.Response().Header()
	h.Set(echo.HeaderContentType, "text/event-stream")
	h.Set(echo.HeaderCacheControl, "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	w.WriteHeader(http.StatusOK)
	if err := send(fmt.Appendf(nil, "retry: %d\n\n", streamRetry.Milliseconds())); err != nil {
		return nil // the client went away
	}

	heartbeat := time.NewTicker(StreamHeartbeat)
	defer heartbeat.Stop()
	fresh := !resumed
	ctx := c.Request().Context()
	for {
		events, next, changed := s.hub.after(seq, fresh, want)
		fresh, seq = false, next
		var buf bytes.Buffer
		for _, ev := range events {
			fmt.Fprintf(&buf, "id: %s\nevent: status\ndata: %s\n\n", s.hub.id(ev.seq), ev.data)
		}
		if buf.Len() > 0 {
			if err := send(buf.Bytes()); err != nil {
				return nil // the client went away, or stopped reading
			}
			heartbeat.Reset(StreamHeartbeat)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopping:
			return nil
		case <-changed:
		case <-heartbeat.C:
			if err := send([]byte(": still here\n\n")); err != nil {
				return nil
			}
		}
	}
}

// streamSlot takes one of the MaxStreams slots of status streams; ok is
// false when all are taken.
func (s *Server) streamSlot() (release func(), ok bool) {
	select {
	case s.streams <- struct{}{}:
		return func() { <-s.streams }, true
	default:
		return nil, false
	}
}

// projectionHistory is GET /v1/projections/{name}/history.
func (s *Server) projectionHistory(c echo.Context) error {
	r, err := s.namedRunner(c)
	if err != nil {
		return err
	}
	samples := s.hub.historyOf(r.Name())
	if samples == nil {
		samples = []HistorySample{}
	}
	return c.JSON(http.StatusOK, History{Projection: r.Name(), IntervalMs: HistoryInterval.Milliseconds(), Samples: samples})
}
