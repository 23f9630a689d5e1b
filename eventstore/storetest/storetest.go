package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
)

// Features says what an implementation supports beyond the common contract.
type Features struct {
	// HeadTime says Head reports the head event's time.
	HeadTime bool
	// StrictIdempotency says an append whose event IDs were used before, but
	// not as that same append (some new, or in another stream), fails with
	// ErrIdempotency. Every store returns the first result for a retry of
	// the same append; EventStoreDB decides the rest itself.
	StrictIdempotency bool
}

// Run runs the contract suite. newStore returns an empty store for one
// subtest; the suite calls it once per subtest.
func Run(t *testing.T, features Features, newStore func(t *testing.T) eventstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s eventstore.Store)
	}{
		{"AppendAndReadStream", testAppendAndReadStream},
		{"ExpectedRevision", testExpectedRevision},
		{"Idempotency", func(t *testing.T, s eventstore.Store) { testIdempotency(t, s, features) }},
		{"InvalidEventsWriteNothing", testInvalidEvents},
		{"ReadStreamMissing", testReadStreamMissing},
		{"SubscribeCatchUpThenLive", testSubscribeCatchUpThenLive},
		{"SubscribeFromIsExclusive", testSubscribeExclusive},
		{"SubscribeFilter", testSubscribeFilter},
		{"FilterMatchingNothingAdvances", testFilterMatchingNothing},
		{"SubscribeEventTypeFilter", testSubscribeEventTypeFilter},
		{"Head", func(t *testing.T, s eventstore.Store) { testHead(t, s, features) }},
		{"ConcurrentAppendersOneStream", testConcurrentOneStream},
		{"PositionTokens", testPositionTokens},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

// Event returns an event with a new ID.
func Event(typ string, data string) eventstore.EventData {
	return eventstore.EventData{EventID: uuid.NewString(), Type: typ, Data: []byte(data)}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func stream(t *testing.T, prefix string) string { return prefix + uuid.NewString()[:8] }

func testAppendAndReadStream(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	st := stream(t, "order-")
	res, err := s.Append(ctx, st, eventstore.NoStream, Event("A", `{"n":0}`), Event("B", `{"n":1}`))
	require.NoError(t, err)
	require.Equal(t, uint64(2), res.NextRevision)
	res2, err := s.Append(ctx, st, eventstore.Exact(1), Event("C", `{"n":2}`))
	require.NoError(t, err)
	require.Equal(t, uint64(3), res2.NextRevision)
	require.True(t, res.Position.Before(res2.Position), "positions grow: %s then %s", res.Position, res2.Position)

	got, err := s.ReadStream(ctx, st, 0, 10)
	require.NoError(t, err)
	require.Len(t, got, 3)
	for i, e := range got {
		require.Equal(t, uint64(i), e.Revision)
		require.Equal(t, st, e.StreamID)
		require.JSONEq(t, fmt.Sprintf(`{"n":%d}`, i), string(e.Data))
		require.False(t, e.CreatedAt.IsZero())
		if i > 0 {
			require.True(t, got[i-1].Position.Before(e.Position), "positions follow revisions within a stream")
		}
	}
	require.Equal(t, []string{"A", "B", "C"}, []string{got[0].Type, got[1].Type, got[2].Type})
	require.Equal(t, res2.Position, got[2].Position, "the append returns its last event's position")

	from1, err := s.ReadStream(ctx, st, 1, 1)
	require.NoError(t, err)
	require.Len(t, from1, 1)
	require.Equal(t, uint64(1), from1[0].Revision, "from is inclusive")
	past, err := s.ReadStream(ctx, st, 3, 10)
	require.NoError(t, err)
	require.Empty(t, past)
}

func testExpectedRevision(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	st := stream(t, "order-")
	var wrong *eventstore.WrongExpectedRevisionError

	_, err := s.Append(ctx, st, eventstore.StreamExists, Event("A", `{}`))
	require.ErrorAs(t, err, &wrong)
	require.Equal(t, int64(-1), wrong.Actual)
	_, err = s.Append(ctx, st, eventstore.Exact(0), Event("A", `{}`))
	require.ErrorIs(t, err, eventstore.ErrWrongExpectedRevision)

	_, err = s.Append(ctx, st, eventstore.NoStream, Event("A", `{}`))
	require.NoError(t, err)
	_, err = s.Append(ctx, st, eventstore.NoStream, Event("A", `{}`))
	require.ErrorAs(t, err, &wrong)
	require.Equal(t, int64(0), wrong.Actual)

	_, err = s.Append(ctx, st, eventstore.Exact(1), Event("A", `{}`))
	require.ErrorAs(t, err, &wrong)
	require.Equal(t, int64(0), wrong.Actual)
	_, err = s.Append(ctx, st, eventstore.Exact(0), Event("A", `{}`))
	require.NoError(t, err)
	_, err = s.Append(ctx, st, eventstore.StreamExists, Event("A", `{}`))
	require.NoError(t, err)
	res, err := s.Append(ctx, st, eventstore.Any, Event("A", `{}`))
	require.NoError(t, err)
	require.Equal(t, uint64(4), res.NextRevision)

	got, err := s.ReadStream(ctx, st, 0, 100)
	require.NoError(t, err)
	require.Len(t, got, 4, "failed appends wrote nothing")
}

func testIdempotency(t *testing.T, s eventstore.Store, f Features) {
	ctx := ctxFor(t)
	st := stream(t, "order-")
	a, b := Event("A", `{}`), Event("B", `{}`)
	first, err := s.Append(ctx, st, eventstore.NoStream, a, b)
	require.NoError(t, err)

	again, err := s.Append(ctx, st, eventstore.NoStream, a, b)
	require.NoError(t, err, "the same IDs again return the first result")
	require.Equal(t, first, again)
	again, err = s.Append(ctx, st, eventstore.Any, a, b)
	require.NoError(t, err)
	require.Equal(t, first, again)

	got, err := s.ReadStream(ctx, st, 0, 100)
	require.NoError(t, err)
	require.Len(t, got, 2, "retries wrote nothing")
	if !f.StrictIdempotency {
		return
	}
	_, err = s.Append(ctx, st, eventstore.Any, a, Event("C", `{}`))
	require.ErrorIs(t, err, eventstore.ErrIdempotency, "some IDs known, others not")
	_, err = s.Append(ctx, stream(t, "order-"), eventstore.Any, a, b)
	require.ErrorIs(t, err, eventstore.ErrIdempotency, "same IDs, other stream")
	got, err = s.ReadStream(ctx, st, 0, 100)
	require.NoError(t, err)
	require.Len(t, got, 2, "refused appends wrote nothing")
}

func testInvalidEvents(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	st := stream(t, "order-")
	bad := []eventstore.EventData{
		{EventID: uuid.NewString(), Type: "", Data: []byte(`{}`)},
		{EventID: "", Type: "A", Data: []byte(`{}`)},
		{EventID: "not-a-uuid", Type: "A", Data: []byte(`{}`)},
		{EventID: uuid.NewString(), Type: "A", Data: []byte(`{"unterminated`)},
		{EventID: uuid.NewString(), Type: "A"},
	}
	for _, e := range bad {
		_, err := s.Append(ctx, st, eventstore.Any, Event("A", `{}`), e)
		require.ErrorIs(t, err, eventstore.ErrInvalidEvent, "%+v", e)
	}
	dup := Event("A", `{}`)
	_, err := s.Append(ctx, st, eventstore.Any, dup, dup)
	require.ErrorIs(t, err, eventstore.ErrInvalidEvent)
	_, err = s.Append(ctx, st, eventstore.Any)
	require.ErrorIs(t, err, eventstore.ErrInvalidEvent)
	_, err = s.ReadStream(ctx, st, 0, 10)
	require.ErrorIs(t, err, eventstore.ErrStreamNotFound, "nothing was written")
}

func testReadStreamMissing(t *testing.T, s eventstore.Store) {
	_, err := s.ReadStream(ctxFor(t), stream(t, "nothing-"), 0, 10)
	require.ErrorIs(t, err, eventstore.ErrStreamNotFound)
}

// recvUntil receives until want events arrived and returns them.
func recvUntil(t *testing.T, ctx context.Context, sub eventstore.Subscription, want int) ([]eventstore.RecordedEvent, eventstore.Message) {
	t.Helper()
	var got []eventstore.RecordedEvent
	var last eventstore.Message
	for len(got) < want {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err, "after %d of %d events", len(got), want)
		got = append(got, msg.Events...)
		last = msg
	}
	return got, last
}

func testSubscribeCatchUpThenLive(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	st := stream(t, "order-")
	for i := range 5 {
		_, err := s.Append(ctx, st, eventstore.Any, Event("A", fmt.Sprintf(`{"i":%d}`, i)))
		require.NoError(t, err)
	}
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{st}})
	require.NoError(t, err)
	defer sub.Close()
	got, last := recvUntil(t, ctx, sub, 5)
	require.Len(t, got, 5)
	for i, e := range got {
		require.Equal(t, uint64(i), e.Revision)
	}
	// Caught up is said before any live event.
	for !last.CaughtUp {
		var err error
		last, err = sub.Recv(ctx)
		require.NoError(t, err)
		require.Empty(t, last.Events)
	}
	live := make(chan eventstore.AppendResult, 1)
	go func() {
		res, err := s.Append(ctx, st, eventstore.Exact(4), Event("B", `{}`))
		if err == nil {
			live <- res
		}
		close(live)
	}()
	got, msg := recvUntil(t, ctx, sub, 1)
	require.Len(t, got, 1)
	require.Equal(t, uint64(5), got[0].Revision)
	res, ok := <-live
	require.True(t, ok, "live append failed")
	require.Equal(t, res.Position, got[0].Position)
	require.False(t, msg.Checkpoint.Before(got[0].Position))
}

func testSubscribeExclusive(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	st := stream(t, "order-")
	r1, err := s.Append(ctx, st, eventstore.Any, Event("A", `{}`))
	require.NoError(t, err)
	_, err = s.Append(ctx, st, eventstore.Any, Event("B", `{}`))
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, r1.Position, eventstore.Filter{StreamPrefixes: []string{st}})
	require.NoError(t, err)
	defer sub.Close()
	got, _ := recvUntil(t, ctx, sub, 1)
	require.Equal(t, "B", got[0].Type, "the start position is exclusive")
}

func testSubscribeFilter(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	tag := uuid.NewString()[:8]
	order, cust, tricky := "order_"+tag+"-1", "customer_"+tag+"-1", "orderX"+tag+"-1"
	for _, st := range []string{order, cust, tricky} {
		_, err := s.Append(ctx, st, eventstore.Any, Event("Placed", `{}`), Event("Paid", `{}`))
		require.NoError(t, err)
	}
	// "_" is a LIKE wildcard; a prefix must match literally.
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{"order_" + tag}, EventTypes: []string{"Paid"}})
	require.NoError(t, err)
	defer sub.Close()
	var got []eventstore.RecordedEvent
	for {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		got = append(got, msg.Events...)
		if msg.CaughtUp {
			break
		}
	}
	require.Len(t, got, 1)
	require.Equal(t, order, got[0].StreamID)
	require.Equal(t, "Paid", got[0].Type)
}

func testSubscribeEventTypeFilter(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	tag := uuid.NewString()[:8]
	st := "order-" + tag
	_, err := s.Append(ctx, st, eventstore.Any,
		Event("Order_"+tag+"Placed", `{}`), Event("Cart"+tag, `{}`), Event("Refund"+tag, `{}`), Event("Order_"+tag+"Paid", `{}`), Event("OrderX"+tag, `{}`))
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{EventTypes: []string{"Refund" + tag}, EventTypePrefixes: []string{"Order_" + tag}})
	require.NoError(t, err)
	defer sub.Close()
	var got []string
	for {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		for _, e := range msg.Events {
			got = append(got, e.Type)
		}
		if msg.CaughtUp {
			break
		}
	}
	require.Equal(t, []string{"Order_" + tag + "Placed", "Refund" + tag, "Order_" + tag + "Paid"}, got, "\"_\" is a LIKE wildcard; prefixes match literally")
}

func testFilterMatchingNothing(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	res, err := s.Append(ctx, stream(t, "order-"), eventstore.Any, Event("A", `{}`))
	require.NoError(t, err)
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{"matches-nothing-"}})
	require.NoError(t, err)
	defer sub.Close()
	// The checkpoint passes the append, and the subscription then says it
	// has caught up: in the same message or a later one (EventStoreDB sends
	// its caught-up notice after the checkpoint that reaches the head).
	reached := false
	for {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		require.Empty(t, msg.Events)
		reached = reached || !msg.Checkpoint.Before(res.Position)
		if reached && msg.CaughtUp {
			return
		}
	}
}

func testHead(t *testing.T, s eventstore.Store, f Features) {
	ctx := ctxFor(t)
	before := time.Now().Add(-time.Minute)
	res, err := s.Append(ctx, stream(t, "order-"), eventstore.Any, Event("A", `{}`))
	require.NoError(t, err)
	h, err := s.Head(ctx)
	require.NoError(t, err)
	require.False(t, h.Position.Before(res.Position), "head %s is at or after the append %s", h.Position, res.Position)
	if f.HeadTime {
		require.True(t, h.Time.After(before), "head time %v", h.Time)
	}
}

func testConcurrentOneStream(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	st := stream(t, "order-")
	const writers, each = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.Append(ctx, st, eventstore.Any, Event("A", `{}`)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	got, err := s.ReadStream(ctx, st, 0, 1000)
	require.NoError(t, err)
	require.Len(t, got, writers*each)
	for i, e := range got {
		require.Equal(t, uint64(i), e.Revision, "revisions start at 0 and have no holes")
		if i > 0 {
			require.True(t, got[i-1].Position.Before(e.Position))
		}
	}
}

func testPositionTokens(t *testing.T, s eventstore.Store) {
	ctx := ctxFor(t)
	res, err := s.Append(ctx, stream(t, "order-"), eventstore.Any, Event("A", `{}`))
	require.NoError(t, err)
	back, err := s.ParsePosition(res.Position.String())
	require.NoError(t, err)
	require.Equal(t, res.Position, back)
	for _, bad := range []string{"", "abc", "-1", "1/", "1/x"} {
		_, err := s.ParsePosition(bad)
		require.True(t, errors.Is(err, eventstore.ErrInvalidPosition), "%q: %v", bad, err)
	}
}

// Silent wraps a store so that its subscriptions deliver nothing until
// their context ends: a replay on it gets nowhere, and stays where it is.
type Silent struct{ eventstore.Store }

// Subscribe returns a subscription that delivers nothing.
func (Silent) Subscribe(context.Context, eventstore.Position, eventstore.Filter) (eventstore.Subscription, error) {
	return silentSubscription{}, nil
}

type silentSubscription struct{}

func (silentSubscription) Recv(ctx context.Context) (eventstore.Message, error) {
	<-ctx.Done()
	return eventstore.Message{}, ctx.Err()
}

func (silentSubscription) Close() error { return nil }
