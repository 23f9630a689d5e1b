package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// sseEvent is one event of a status stream.
type sseEvent struct {
	id, event string
	status    api.ProjectionStatus
}

// openStream opens a status stream at url and sends its events on the
// channel returned, which is closed when the stream ends. It ends when
// the test does.
func openStream(t *testing.T, url string, headers ...string) (<-chan sseEvent, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	events := make(chan sseEvent, 1024)
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		close(events)
		return events, resp
	}
	go func() {
		defer close(events)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" {
					events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				ev.event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev.status); err != nil {
					panic(err)
				}
			}
		}
	}()
	return events, resp
}

// next waits for the stream's next event that satisfies ok.
func next(t *testing.T, events <-chan sseEvent, ok func(sseEvent) bool) sseEvent {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, open := <-events:
			require.True(t, open, "the stream ended")
			if ok(ev) {
				return ev
			}
		case <-deadline:
			require.FailNow(t, "no such event within 10 s")
		}
	}
}

// seqOf is the number of an event id, EPOCH-N.
func seqOf(t *testing.T, id string) uint64 {
	t.Helper()
	_, n, ok := strings.Cut(id, "-")
	require.True(t, ok, id)
	seq, err := strconv.ParseUint(n, 10, 64)
	require.NoError(t, err, id)
	return seq
}

// firstOfEach reads events until it has one of each of names, and
// returns them by projection.
func firstOfEach(t *testing.T, events <-chan sseEvent, names ...string) map[string]sseEvent {
	t.Helper()
	got := map[string]sseEvent{}
	for len(got) < len(names) {
		ev := next(t, events, func(sseEvent) bool { return true })
		require.Equal(t, "status", ev.event)
		require.Contains(t, names, ev.status.Name)
		if _, dup := got[ev.status.Name]; !dup {
			got[ev.status.Name] = ev
		}
	}
	return got
}

// TestStatusStream: the stream starts with every projection's status,
// sends a projection's status again when it changes, resumes after the
// last event it sent, and narrows to the projections asked for.
func TestStatusStream(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	url := b.url + "/v1/projections/events"

	events, resp := openStream(t, url)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
	first := firstOfEach(t, events, readmodeltest.Names()...)
	var current api.ProjectionStatus
	require.NoError(t, json.Unmarshal([]byte(get(t, b.url+"/v1/projections/orders").body), &current))
	// The stream looks every StreamInterval: what it first sends may be
	// that old.
	if first["orders"].status.Position != current.Position {
		first["orders"] = next(t, events, func(ev sseEvent) bool { return ev.status.Name == "orders" })
	}
	o := first["orders"].status
	require.Equal(t, []any{current.Version, current.Status, current.Position, current.Head, current.Parked, current.Owner.ID},
		[]any{o.Version, o.Status, o.Position, o.Head, o.Parked, o.Owner.ID}, "as GET /v1/projections/{name} answers")

	pos, err := b.store.Append(ctx, "order-2", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c2","items":[],"total":10}`))
	require.NoError(t, err)
	moved := next(t, events, func(ev sseEvent) bool {
		return ev.status.Name == "orders" && ev.status.Position == pos.Position.String()
	})
	require.NotEqual(t, first["orders"].id, moved.id)

	// Resumed after the first events: what came after them, not every
	// projection's status again.
	resumed, _ := openStream(t, url, api.HeaderLastEventID, moved.id)
	_, err = b.store.Append(ctx, "order-3", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c3","items":[],"total":10}`))
	require.NoError(t, err)
	ev := next(t, resumed, func(sseEvent) bool { return true })
	require.Greater(t, seqOf(t, ev.id), seqOf(t, moved.id), "only events after the one resumed from")
	byQuery, _ := openStream(t, url+"?last_event_id="+moved.id)
	require.Greater(t, seqOf(t, next(t, byQuery, func(sseEvent) bool { return true }).id), seqOf(t, moved.id))

	// An id of another process (or none retained): every status afresh.
	for _, stale := range []string{"0-1", "garbage", strings.Split(moved.id, "-")[0] + "-999999999"} {
		afresh, _ := openStream(t, url, api.HeaderLastEventID, stale)
		firstOfEach(t, afresh, readmodeltest.Names()...)
	}

	only, _ := openStream(t, url+"?projection=orders,daily_sales")
	got := firstOfEach(t, only, "orders", "daily_sales")
	require.Len(t, got, 2)
	_, err = b.store.Append(ctx, "order-4", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c4","items":[],"total":10}`))
	require.NoError(t, err)
	next(t, only, func(ev sseEvent) bool {
		require.NotEqual(t, "customer_stats", ev.status.Name)
		return ev.status.Name == "orders" && ev.status.Position != got["orders"].status.Position
	})

	_, resp = openStream(t, url+"?projection=nope")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// TestStatusStreamPace: under constant appends a projection's status
// changes all the time, and is sent at most once every StreamInterval.
func TestStatusStreamPace(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	events, _ := openStream(t, b.url+"/v1/projections/events?projection=orders")
	next(t, events, func(sseEvent) bool { return true })
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_, err := b.store.Append(ctx, fmt.Sprintf("order-pace-%d", i), eventstore.NoStream,
				storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c5","items":[],"total":10}`))
			if err != nil {
				return
			}
		}
	}()
	window := 2 * time.Second
	end := time.After(window)
	n := 0
count:
	for {
		select {
		case <-events:
			n++
		case <-end:
			break count
		}
	}
	close(stop)
	<-done
	require.Greater(t, n, 1, "the position moved: sent more than once")
	require.LessOrEqual(t, n, int(window/api.StreamInterval)+2, "at most one event every %s", api.StreamInterval)
}

// TestStatusStreamOutlivesTheServerTimeouts: a stream lasts past the
// server's read and write timeouts, which bound ordinary requests, and
// ends when the server shuts down.
func TestStatusStreamOutlivesTheServerTimeouts(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	hs := httptest.NewUnstartedServer(b.srv.Handler())
	hs.Config.ReadTimeout, hs.Config.WriteTimeout = 300*time.Millisecond, 300*time.Millisecond
	hs.Start()
	t.Cleanup(hs.Close)
	events, resp := openStream(t, hs.URL+"/v1/projections/events?projection=orders")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	first := next(t, events, func(sseEvent) bool { return true })
	time.Sleep(time.Second) // past both timeouts
	pos, err := b.store.Append(ctx, "order-late", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c9","items":[],"total":10}`))
	require.NoError(t, err)
	next(t, events, func(ev sseEvent) bool { return ev.status.Position == pos.Position.String() })
	require.NotEqual(t, first.status.Position, pos.Position.String())

	done := make(chan struct{})
	go func() {
		defer close(done)
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, b.srv.Shutdown(sctx), "a stream does not hold the shutdown up")
	}()
	for range events { // until the stream ends
	}
	<-done
}

// TestStatusHistory: each projection keeps a sample a second.
func TestStatusHistory(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	var h api.History
	require.Eventually(t, func() bool {
		require.NoError(t, json.Unmarshal([]byte(get(t, b.url+"/v1/projections/orders/history").body), &h))
		return len(h.Samples) >= 2
	}, 10*time.Second, 100*time.Millisecond)
	require.Equal(t, "orders", h.Projection)
	require.Equal(t, int64(1000), h.IntervalMs)
	require.Equal(t, "live", h.Samples[len(h.Samples)-1].Status)
	require.True(t, h.Samples[0].At.Before(h.Samples[1].At))
	require.Equal(t, http.StatusNotFound, get(t, b.url+"/v1/projections/nope/history").StatusCode)
}
