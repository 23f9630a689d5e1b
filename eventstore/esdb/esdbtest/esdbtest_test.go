package esdbtest_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"
	"go.uber.org/goleak"

	"github.com/sightlinehq/sightline/eventstore/esdb/esdbtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newClient connects the real client to s; the client is closed when t ends.
func newClient(t *testing.T, s *esdbtest.Server) *esdb.Client {
	t.Helper()
	cfg, err := esdb.ParseConnectionString(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	c, err := esdb.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ev(typ string, data string) esdb.EventData {
	return esdb.EventData{EventID: uuid.New(), EventType: typ, ContentType: esdb.ContentTypeJson, Data: []byte(data)}
}

func appendTo(t *testing.T, c *esdb.Client, stream string, events ...esdb.EventData) *esdb.WriteResult {
	t.Helper()
	res, err := c.AppendToStream(ctxT(t), stream, esdb.AppendToStreamOptions{}, events...)
	if err != nil {
		t.Fatalf("append to %s: %v", stream, err)
	}
	return res
}

func readStream(t *testing.T, c *esdb.Client, stream string, opts esdb.ReadStreamOptions, count uint64) ([]*esdb.ResolvedEvent, error) {
	t.Helper()
	return drain(c.ReadStream(ctxT(t), stream, opts, count))
}

// drain reads a read to its end.
func drain(rs *esdb.ReadStream, err error) ([]*esdb.ResolvedEvent, error) {
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []*esdb.ResolvedEvent
	for {
		e, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
}

func isCode(err error, code esdb.ErrorCode) bool {
	e, ok := esdb.FromError(err)
	return !ok && e.Code() == code
}

// recv returns the next subscription event, failing the test on a drop.
func recv(t *testing.T, sub *esdb.Subscription) *esdb.SubscriptionEvent {
	t.Helper()
	e := sub.Recv()
	if e.SubscriptionDropped != nil {
		t.Fatalf("subscription dropped: %v", e.SubscriptionDropped.Error)
	}
	return e
}

// recvEvents receives n events, skipping checkpoints; it fails on CaughtUp.
func recvEvents(t *testing.T, sub *esdb.Subscription, n int) []*esdb.ResolvedEvent {
	t.Helper()
	var out []*esdb.ResolvedEvent
	for len(out) < n {
		e := recv(t, sub)
		switch {
		case e.EventAppeared != nil:
			out = append(out, e.EventAppeared)
		case e.CaughtUp != nil:
			t.Fatalf("caught up after %d of %d events", len(out), n)
		}
	}
	return out
}

func expectCaughtUp(t *testing.T, sub *esdb.Subscription) {
	t.Helper()
	for {
		e := recv(t, sub)
		if e.CaughtUp != nil {
			return
		}
		if e.EventAppeared != nil {
			t.Fatalf("unexpected event %s before caught up", e.EventAppeared.OriginalEvent().EventType)
		}
	}
}

func TestAppendExpectedRevision(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	ctx := ctxT(t)
	do := func(exp esdb.ExpectedRevision, events ...esdb.EventData) (*esdb.WriteResult, error) {
		return c.AppendToStream(ctx, "order-1", esdb.AppendToStreamOptions{ExpectedRevision: exp}, events...)
	}

	if _, err := do(esdb.StreamExists{}, ev("A", `{}`)); !isCode(err, esdb.ErrorCodeWrongExpectedVersion) {
		t.Fatalf("stream_exists on a missing stream: %v", err)
	}
	if _, err := do(esdb.Revision(0), ev("A", `{}`)); !isCode(err, esdb.ErrorCodeWrongExpectedVersion) {
		t.Fatalf("revision 0 on a missing stream: %v", err)
	}
	res, err := do(esdb.NoStream{}, ev("A", `{}`))
	if err != nil || res.NextExpectedVersion != 0 {
		t.Fatalf("no_stream: %+v %v", res, err)
	}
	if _, err := do(esdb.NoStream{}, ev("A", `{}`)); !isCode(err, esdb.ErrorCodeWrongExpectedVersion) {
		t.Fatalf("no_stream on an existing stream: %v", err)
	}
	if res, err = do(esdb.StreamExists{}, ev("B", `{}`)); err != nil || res.NextExpectedVersion != 1 {
		t.Fatalf("stream_exists: %+v %v", res, err)
	}
	if res, err = do(esdb.Revision(1), ev("C", `{}`)); err != nil || res.NextExpectedVersion != 2 {
		t.Fatalf("revision 1: %+v %v", res, err)
	}
	_, err = do(esdb.Revision(1), ev("C", `{}`))
	if !isCode(err, esdb.ErrorCodeWrongExpectedVersion) {
		t.Fatalf("stale revision: %v", err)
	}
	t.Logf("conflict error: %v", err)
	if res, err = do(esdb.Any{}, ev("D", `{}`)); err != nil || res.NextExpectedVersion != 3 {
		t.Fatalf("any: %+v %v", res, err)
	}
}

func TestMultiEventAppendPositionsAndIdempotency(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	first := appendTo(t, c, "order-1", ev("A", `{}`))
	batch := []esdb.EventData{ev("B", `{"n":1}`), ev("C", `{"n":2}`), ev("D", `{"n":3}`)}
	res := appendTo(t, c, "order-1", batch...)
	if res.NextExpectedVersion != 3 || res.CommitPosition <= first.PreparePosition {
		t.Fatalf("batch result %+v after %+v", res, first)
	}
	got, err := readStream(t, c, "order-1", esdb.ReadStreamOptions{From: esdb.Revision(1)}, 10)
	if err != nil || len(got) != 3 {
		t.Fatalf("read: %d events, %v", len(got), err)
	}
	for i, e := range got {
		p := e.Event.Position
		if p.Commit != res.CommitPosition {
			t.Errorf("event %d commit %d, want shared %d", i, p.Commit, res.CommitPosition)
		}
		if i > 0 && p.Prepare <= got[i-1].Event.Position.Prepare {
			t.Errorf("prepare positions not increasing: %+v", p)
		}
		if e.Event.EventID != batch[i].EventID || e.Event.EventNumber != uint64(i+1) {
			t.Errorf("event %d: id %s number %d", i, e.Event.EventID, e.Event.EventNumber)
		}
	}
	if last := got[2].Event.Position.Prepare; res.PreparePosition != last {
		t.Errorf("write result prepare %d, want last prepare %d", res.PreparePosition, last)
	}

	// Appending the same events again, even with a now-stale revision, is idempotent.
	again, err := c.AppendToStream(ctxT(t), "order-1", esdb.AppendToStreamOptions{ExpectedRevision: esdb.Revision(0)}, batch...)
	if err != nil || *again != *res {
		t.Fatalf("idempotent append: %+v %v, want %+v", again, err, res)
	}
	if again, err = c.AppendToStream(ctxT(t), "order-1", esdb.AppendToStreamOptions{}, batch...); err != nil || *again != *res {
		t.Fatalf("idempotent append with any: %+v %v, want %+v", again, err, res)
	}
	// Some ids known, others not: the server's "corrupted idempotency".
	_, err = c.AppendToStream(ctxT(t), "order-1", esdb.AppendToStreamOptions{}, batch[0], ev("E", `{}`))
	if !isCode(err, esdb.ErrorCodeWrongExpectedVersion) {
		t.Fatalf("partly repeated append: %v", err)
	}
	if all, _ := readStream(t, c, "order-1", esdb.ReadStreamOptions{}, 100); len(all) != 4 {
		t.Fatalf("stream has %d events after idempotent append, want 4", len(all))
	}
}

func TestReadStream(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	for i := range 5 {
		appendTo(t, c, "order-1", ev(fmt.Sprintf("E%d", i), fmt.Sprintf(`{"i":%d}`, i)))
	}
	got, err := readStream(t, c, "order-1", esdb.ReadStreamOptions{From: esdb.Revision(2)}, 2)
	if err != nil || len(got) != 2 || got[0].Event.EventNumber != 2 || got[1].Event.EventType != "E3" {
		t.Fatalf("read from 2 (inclusive) count 2: %v %v", got, err)
	}
	e := got[0].Event
	if e.StreamID != "order-1" || e.ContentType != "application/json" || string(e.Data) != `{"i":2}` ||
		time.Since(e.CreatedDate) > time.Minute || e.CreatedDate.After(time.Now()) {
		t.Fatalf("decoded event: %+v", e)
	}
	got, err = readStream(t, c, "order-1", esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 2)
	if err != nil || len(got) != 2 || got[0].Event.EventNumber != 4 || got[1].Event.EventNumber != 3 {
		t.Fatalf("read backwards from end: %v %v", got, err)
	}
	if _, err = readStream(t, c, "order-404", esdb.ReadStreamOptions{}, 10); !isCode(err, esdb.ErrorCodeResourceNotFound) {
		t.Fatalf("missing stream: %v", err)
	}
}

func TestReadAllBackwardsIsHead(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	head := func() *esdb.RecordedEvent {
		got, err := readAll(t, c, esdb.ReadAllOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
		if err != nil || len(got) > 1 {
			t.Fatalf("read $all backwards: %v %v", got, err)
		}
		if len(got) == 0 {
			return nil
		}
		return got[0].Event
	}
	if h := head(); h != nil {
		t.Fatalf("head of empty store: %+v", h)
	}
	appendTo(t, c, "order-1", ev("A", `{}`))
	res := appendTo(t, c, "invoice-1", ev("B", `{}`), ev("C", `{}`))
	if h := head(); h.EventType != "C" || h.Position != (esdb.Position{Commit: res.CommitPosition, Prepare: res.PreparePosition}) {
		t.Fatalf("head %+v, want last append %+v", h, res)
	}
	s.AppendSystemEvent()
	if h := head(); h.StreamID != "$$sys" || h.EventType[0] != '$' {
		t.Fatalf("head after a system event: %+v", h)
	}
	all, err := readAll(t, c, esdb.ReadAllOptions{From: esdb.Start{}}, 100)
	if err != nil || len(all) != 4 {
		t.Fatalf("read $all forwards: %d %v", len(all), err)
	}
}

func readAll(t *testing.T, c *esdb.Client, opts esdb.ReadAllOptions, count uint64) ([]*esdb.ResolvedEvent, error) {
	t.Helper()
	return drain(c.ReadAll(ctxT(t), opts, count))
}

func TestSubscribeAllFilters(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	appendTo(t, c, "order-1", ev("OrderPlaced", `{}`))
	appendTo(t, c, "invoice-1", ev("InvoiceSent", `{}`))
	s.AppendSystemEvent()
	second := appendTo(t, c, "order-2", ev("OrderPlaced", `{}`), ev("OrderPaid", `{}`))

	subscribe := func(opts esdb.SubscribeToAllOptions) *esdb.Subscription {
		sub, err := c.SubscribeToAll(ctxT(t), opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Close() })
		return sub
	}
	streamsOf := func(evs []*esdb.ResolvedEvent) (out []string) {
		for _, e := range evs {
			out = append(out, fmt.Sprintf("%s/%s", e.Event.StreamID, e.Event.EventType))
		}
		return out
	}

	byStream := subscribe(esdb.SubscribeToAllOptions{From: esdb.Start{},
		Filter: &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{"order-"}}})
	if got := fmt.Sprint(streamsOf(recvEvents(t, byStream, 3))); got != "[order-1/OrderPlaced order-2/OrderPlaced order-2/OrderPaid]" {
		t.Fatalf("stream prefix filter: %s", got)
	}
	expectCaughtUp(t, byStream)

	noSystem := subscribe(esdb.SubscribeToAllOptions{From: esdb.Start{}, Filter: esdb.ExcludeSystemEventsFilter()})
	got := recvEvents(t, noSystem, 4)
	for _, e := range got {
		if e.Event.EventType[0] == '$' {
			t.Fatalf("system event delivered: %+v", e.Event)
		}
	}
	expectCaughtUp(t, noSystem)

	// From a position: exclusive. Starting at the first event of the batch
	// delivers only the second one.
	firstOfBatch := got[2].Event.Position
	from := subscribe(esdb.SubscribeToAllOptions{From: firstOfBatch})
	if e := recvEvents(t, from, 1)[0].Event; e.EventType != "OrderPaid" || e.Position.Prepare != second.PreparePosition {
		t.Fatalf("from %+v: got %+v", firstOfBatch, e)
	}
	expectCaughtUp(t, from)
}

func TestCheckpointsWithoutMatches(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	var last *esdb.WriteResult
	for i := range 10 {
		last = appendTo(t, c, fmt.Sprintf("order-%d", i), ev("A", `{}`))
	}
	sub, err := c.SubscribeToAll(ctxT(t), esdb.SubscribeToAllOptions{From: esdb.Start{},
		Filter:          &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{"nothing-"}},
		MaxSearchWindow: 2, CheckpointInterval: 2}) // a checkpoint every 4 scanned events
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	var checkpoints []esdb.Position
	for {
		e := recv(t, sub)
		if e.EventAppeared != nil {
			t.Fatalf("filter matching nothing delivered %+v", e.EventAppeared.Event)
		}
		if e.CheckPointReached != nil {
			checkpoints = append(checkpoints, *e.CheckPointReached)
		}
		if e.CaughtUp != nil {
			break
		}
	}
	if len(checkpoints) != 3 || checkpoints[2] != (esdb.Position{Commit: last.CommitPosition, Prepare: last.PreparePosition}) {
		t.Fatalf("checkpoints %+v, want 3 ending at the head %+v", checkpoints, last)
	}
	// Live: four more scanned events give one more checkpoint, past the head.
	for i := range 4 {
		appendTo(t, c, fmt.Sprintf("order-%d", i), ev("A", `{}`))
	}
	e := recv(t, sub)
	if e.CheckPointReached == nil || e.CheckPointReached.Commit <= last.CommitPosition {
		t.Fatalf("live checkpoint: %+v", e)
	}
}

func TestCaughtUpThenLive(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	appendTo(t, c, "order-1", ev("A", `{}`))
	sub, err := c.SubscribeToAll(ctxT(t), esdb.SubscribeToAllOptions{From: esdb.Start{}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	recvEvents(t, sub, 1)
	expectCaughtUp(t, sub)
	res := appendTo(t, c, "order-2", ev("Live", `{}`))
	e := recvEvents(t, sub, 1)[0]
	if e.Event.EventType != "Live" || e.Commit == nil || *e.Commit != res.CommitPosition {
		t.Fatalf("live event %+v", e)
	}
}

func TestCategoryStreamWithDeletedEvent(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	appendTo(t, c, "order-1", ev("Placed", `{"o":1}`), ev("Paid", `{"o":1}`))
	appendTo(t, c, "invoice-1", ev("Sent", `{}`))
	appendTo(t, c, "order-2", ev("Placed", `{"o":2}`))
	s.AppendSystemEvent()
	s.DeleteEvent("order-1", 1)

	sub, err := c.SubscribeToStream(ctxT(t), "$ce-order", esdb.SubscribeToStreamOptions{From: esdb.Start{}, ResolveLinkTos: true})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	got := recvEvents(t, sub, 3)
	want := []string{"0@order-1", "1@order-1", "0@order-2"}
	for i, e := range got {
		if e.Link == nil || e.Link.EventType != "$>" || string(e.Link.Data) != want[i] ||
			e.Link.StreamID != "$ce-order" || e.Link.EventNumber != uint64(i) || e.OriginalEvent() != e.Link {
			t.Fatalf("link %d: %+v", i, e.Link)
		}
	}
	if got[1].Event != nil {
		t.Fatalf("deleted event resolved to %+v", got[1].Event)
	}
	if got[0].Event == nil || got[0].Event.StreamID != "order-1" || got[0].Event.EventType != "Placed" ||
		got[2].Event == nil || string(got[2].Event.Data) != `{"o":2}` {
		t.Fatalf("resolved events: %+v, %+v", got[0].Event, got[2].Event)
	}
	expectCaughtUp(t, sub)
	appendTo(t, c, "order-3", ev("Placed", `{"o":3}`))
	if e := recvEvents(t, sub, 1)[0]; e.Link.EventNumber != 3 || e.Event.StreamID != "order-3" {
		t.Fatalf("live link %+v -> %+v", e.Link, e.Event)
	}

	// Exclusive start revision; without resolving, the link itself is the event.
	raw, err := c.SubscribeToStream(ctxT(t), "$ce-order", esdb.SubscribeToStreamOptions{From: esdb.Revision(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if e := recvEvents(t, raw, 1)[0]; e.Link != nil || e.Event.EventType != "$>" || string(e.Event.Data) != "0@order-2" {
		t.Fatalf("unresolved link from revision 1: %+v", e)
	}
	// The deleted event is gone from reads of its stream, too.
	if evs, err := readStream(t, c, "order-1", esdb.ReadStreamOptions{}, 10); err != nil || len(evs) != 1 {
		t.Fatalf("read after delete: %d %v", len(evs), err)
	}
}

func TestDropSubscriptions(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	appendTo(t, c, "order-1", ev("A", `{}`))
	subscribe := func(from esdb.AllPosition) *esdb.Subscription {
		sub, err := c.SubscribeToAll(ctxT(t), esdb.SubscribeToAllOptions{From: from})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Close() })
		return sub
	}
	sub := subscribe(esdb.Start{})
	checkpoint := recvEvents(t, sub, 1)[0].Event.Position
	expectCaughtUp(t, sub)
	s.DropSubscriptions()
	appendTo(t, c, "order-1", ev("B", `{}`))
	if e := sub.Recv(); e.SubscriptionDropped == nil {
		t.Fatalf("after DropSubscriptions: %+v", e)
	} else {
		t.Logf("dropped: %v", e.SubscriptionDropped.Error)
	}
	again := subscribe(checkpoint)
	if e := recvEvents(t, again, 1)[0]; e.Event.EventType != "B" {
		t.Fatalf("resubscribed from checkpoint: %+v", e.Event)
	}
}

func TestStopRestart(t *testing.T) {
	s := esdbtest.Start(t)
	c := newClient(t, s)
	appendTo(t, c, "order-1", ev("A", `{}`))
	sub, err := c.SubscribeToStream(ctxT(t), "order-1", esdb.SubscribeToStreamOptions{From: esdb.Start{}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	recvEvents(t, sub, 1)
	expectCaughtUp(t, sub)

	s.Stop()
	if e := sub.Recv(); e.SubscriptionDropped == nil {
		t.Fatalf("after Stop: %+v", e)
	}
	s.Restart()

	c2 := newClient(t, s)
	appendTo(t, c2, "order-1", ev("B", `{}`))
	got, err := readStream(t, c2, "order-1", esdb.ReadStreamOptions{}, 10)
	if err != nil || len(got) != 2 {
		t.Fatalf("after restart: %d events, %v", len(got), err)
	}
	sub2, err := c2.SubscribeToStream(ctxT(t), "order-1", esdb.SubscribeToStreamOptions{From: esdb.Revision(0)})
	if err != nil {
		t.Fatal(err)
	}
	defer sub2.Close()
	if e := recvEvents(t, sub2, 1)[0]; e.Event.EventType != "B" {
		t.Fatalf("subscription after restart: %+v", e.Event)
	}
}
