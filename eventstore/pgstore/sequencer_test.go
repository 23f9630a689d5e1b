package pgstore

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/internal/testdb"
)

func newTestStore(t *testing.T, cfg Config) (*Store, *testdb.DB) {
	t.Helper()
	db := testdb.New(t)
	s, err := New(db.Pool, cfg)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s, db
}

func events(n int) []eventstore.EventData {
	out := make([]eventstore.EventData, n)
	for i := range out {
		out[i] = eventstore.EventData{EventID: uuid.NewString(), Type: "T", Data: []byte(`{}`)}
	}
	return out
}

// The sequencer vacuums its queue table, and analyzes the tables
// subscribers read while the store is young, instead of leaving both to
// autovacuum (which counts in other columns than these).
func TestSequencerUpkeep(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, db := newTestStore(t, Config{SweepInterval: 50 * time.Millisecond})

	// Past vacuumAfter, and past analyzeFrom and its next powers of two:
	// each vacuum or analyze may find the table locked by autovacuum and
	// skip it, so the appends go on until both have happened.
	i := 0
	require.Eventually(t, func() bool {
		i++
		_, err := s.Append(ctx, fmt.Sprintf("upkeep-%d", i), eventstore.NoStream, events(200)...)
		require.NoError(t, err)
		var vacuums, analyzes int64
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT
			(SELECT vacuum_count FROM pg_stat_user_tables WHERE relid = 'sightline.unsequenced'::regclass),
			(SELECT analyze_count FROM pg_stat_user_tables WHERE relid = 'sightline.positions'::regclass)`).Scan(&vacuums, &analyzes))
		return vacuums > 0 && analyzes > 0
	}, 30*time.Second, 100*time.Millisecond, "unsequenced vacuumed and positions analyzed")
}

// A subscription that has caught up reads again only once the head has
// moved past it, not once more after every batch to find nothing.
func TestCaughtUpSubscriptionWaitsBeforeReading(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, _ := newTestStore(t, Config{})

	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	require.NoError(t, err)
	defer sub.Close()
	_, err = s.Append(ctx, "one", eventstore.NoStream, events(1)...)
	require.NoError(t, err)
	var got []eventstore.RecordedEvent
	for len(got) == 0 {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		got = append(got, msg.Events...)
		if len(got) > 0 {
			require.True(t, msg.CaughtUp)
		}
	}
	before := s.reads.Load()

	idle, cancelIdle := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelIdle()
	_, err = sub.Recv(idle)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, before, s.reads.Load(), "no read while nothing was appended")

	_, err = s.Append(ctx, "two", eventstore.NoStream, events(1)...)
	require.NoError(t, err)
	msg, err := sub.Recv(ctx)
	require.NoError(t, err)
	require.Len(t, msg.Events, 1)
	require.Equal(t, "two", msg.Events[0].StreamID)
}

// A bulk load through AppendTx fills the queue of unpositioned events at
// once, after the sequencer has run (and cached its plans) on a queue that
// is nearly always empty and vacuumed: it is positioned all the same, in
// runs that stay short. A plan that rescanned the queue for each event took
// minutes per run here.
func TestBulkLoadIsPositioned(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, db := newTestStore(t, Config{})

	_, err := s.Append(ctx, "warm", eventstore.NoStream, events(500)...)
	require.NoError(t, err)
	// What a vacuum under traffic often leaves: no live rows counted, and
	// pages it could not truncate, so that the planner expects none.
	_, err = db.Pool.Exec(ctx, `VACUUM (TRUNCATE false) sightline.unsequenced`)
	require.NoError(t, err)
	for i := range 10 { // the sequencer's plans are made and cached by now
		_, err := s.Append(ctx, fmt.Sprintf("warm-%d", i), eventstore.NoStream, events(1)...)
		require.NoError(t, err)
	}

	const n = 60_000
	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	for i := range n / 1000 {
		_, err := s.AppendTx(ctx, tx, fmt.Sprintf("bulk-%d", i), eventstore.NoStream, events(1000)...)
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit(ctx))
	for {
		head, err := s.Head(ctx)
		require.NoError(t, err, "positioned by the time the test's minute is up")
		if head.Position.Commit >= n+510 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// An appender waiting for an event the database no longer has (its commit
// was lost in a crash before it reached the disk) is told so, instead of
// waiting for ever, and the sequencer goes on serving the others.
func TestWaitForALostEvent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, _ := newTestStore(t, Config{})

	_, err := s.seq.wait(ctx, uuid.New())
	require.ErrorIs(t, err, eventstore.ErrAppendLost)

	res, err := s.Append(ctx, "after", eventstore.NoStream, eventstore.EventData{EventID: uuid.NewString(), Type: "T", Data: []byte(`{}`)})
	require.NoError(t, err)
	require.Equal(t, "1", res.Position.String())
}

// Live subscribers woken by another process's append share one read, and
// each gets only what its filter matches, with its checkpoint moved past
// the rest. When this process's sequencer positioned the append, they
// share its rows and read nothing.
func TestLiveSubscribersShareReads(t *testing.T) {
	t.Run("appended elsewhere", func(t *testing.T) { liveSubscribersShare(t, true) })
	t.Run("appended here", func(t *testing.T) { liveSubscribersShare(t, false) })
}

func liveSubscribersShare(t *testing.T, elsewhere bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, db := newTestStore(t, Config{})
	appender := s
	if elsewhere {
		other, err := New(db.Pool, Config{})
		require.NoError(t, err)
		t.Cleanup(other.Close)
		appender = other
	}

	orders, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{"order-"}})
	require.NoError(t, err)
	defer orders.Close()
	carts, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{"cart-"}})
	require.NoError(t, err)
	defer carts.Close()
	for _, sub := range []eventstore.Subscription{orders, carts} {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		require.True(t, msg.CaughtUp)
	}
	before := s.reads.Load()

	type got struct {
		msg eventstore.Message
		err error
	}
	results := make(chan got, 2)
	for _, sub := range []eventstore.Subscription{orders, carts} {
		go func() {
			msg, err := sub.Recv(ctx)
			results <- got{msg, err}
		}()
	}
	res, err := appender.Append(ctx, "order-1", eventstore.NoStream, events(1)...)
	require.NoError(t, err)
	stored, err := s.ReadStream(ctx, "order-1", 0, 1)
	require.NoError(t, err)
	var delivered, passed int
	for range 2 {
		g := <-results
		require.NoError(t, g.err)
		require.Equal(t, res.Position, g.msg.Checkpoint)
		require.True(t, g.msg.CaughtUp)
		switch len(g.msg.Events) {
		case 1:
			require.Equal(t, stored, g.msg.Events, "as the store holds it")
			delivered++
		case 0:
			passed++
		}
	}
	require.Equal(t, 1, delivered, "the order subscriber got the event")
	require.Equal(t, 1, passed, "the cart subscriber moved past it")
	if elsewhere {
		// At most: this store's sequencer may have positioned the other's
		// append first (it runs when its listener connects, which may be
		// after the append).
		require.LessOrEqual(t, s.reads.Load(), before+1, "one read for both")
	} else {
		require.Equal(t, before, s.reads.Load(), "the sequencer's rows, no read")
	}
}

// A shared read cut short at ReadBatch moves each subscriber only as far as
// it read: every subscriber gets exactly its events, in order, once, with
// checkpoints that never go back.
func TestTruncatedSharedReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, _ := newTestStore(t, Config{ReadBatch: 2})

	subs := map[string]eventstore.Subscription{}
	for _, prefix := range []string{"order-", "cart-"} {
		sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{prefix}})
		require.NoError(t, err)
		defer sub.Close()
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		require.True(t, msg.CaughtUp)
		subs[prefix] = sub
	}
	tx, err := s.pool.Begin(ctx)
	require.NoError(t, err)
	want := map[string][]string{}
	for i, stream := range []string{"order-1", "cart-1", "cart-2", "order-2", "order-3", "cart-3", "order-4"} {
		_, err := s.AppendTx(ctx, tx, stream, eventstore.NoStream, events(1)...)
		require.NoError(t, err, i)
		prefix := stream[:strings.Index(stream, "-")+1]
		want[prefix] = append(want[prefix], stream)
	}
	require.NoError(t, tx.Commit(ctx))
	var head eventstore.Position
	require.Eventually(t, func() bool {
		h, err := s.Head(ctx)
		require.NoError(t, err)
		head = h.Position
		return head.Commit == 7
	}, 10*time.Second, 10*time.Millisecond)

	for prefix, sub := range subs {
		var got []string
		last := eventstore.Start
		for {
			msg, err := sub.Recv(ctx)
			require.NoError(t, err)
			require.False(t, msg.Checkpoint.Before(last), "%s: checkpoints never go back", prefix)
			last = msg.Checkpoint
			for _, e := range msg.Events {
				got = append(got, e.StreamID)
			}
			if msg.CaughtUp && msg.Checkpoint == head {
				break
			}
		}
		require.Equal(t, want[prefix], got, prefix)
	}
}

// The known head is vouched for only while notifications are received:
// without them it may be behind whatever other processes appended.
func TestKnownHeadNeedsNotifications(t *testing.T) {
	h := newHub(nil, nil)
	_, _, ok := h.known()
	require.False(t, ok, "nothing known yet")
	written := time.Now().Add(-time.Second)
	h.publish(5, written)
	_, _, ok = h.known()
	require.False(t, ok, "a head published while not listening")
	h.up.Store(true)
	head, at, ok := h.known()
	require.True(t, ok)
	require.Equal(t, uint64(5), head)
	require.True(t, written.Equal(at))
	h.publish(3, time.Now())
	head, _, _ = h.known()
	require.Equal(t, uint64(5), head, "a head never goes back")
}

// The generic plans of the sequencer's statements are kept (migrations
// 0006 and 0007): planning them anew each run cost as much as running them.
func TestSequencerStatementIsPlannedOnce(t *testing.T) {
	ctx := context.Background()
	_, db := newTestStore(t, Config{})
	for _, fn := range []string{"sightline.position_events(integer)", "sightline.position_events_rows(integer, integer)"} {
		var config []string
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT proconfig FROM pg_proc WHERE oid = $1::regprocedure`, fn).Scan(&config))
		require.Contains(t, config, "plan_cache_mode=force_generic_plan", fn)
	}
}

// A run that positioned more events than a read returns keeps no rows:
// the subscribers read them, window by window, and get each once, in order.
func TestBulkRunIsRead(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, _ := newTestStore(t, Config{ReadBatch: 5})
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	require.NoError(t, err)
	defer sub.Close()
	msg, err := sub.Recv(ctx)
	require.NoError(t, err)
	require.True(t, msg.CaughtUp)
	before := s.reads.Load()

	_, err = s.Append(ctx, "order-bulk", eventstore.NoStream, events(12)...)
	require.NoError(t, err)
	stored, err := s.ReadStream(ctx, "order-bulk", 0, 100)
	require.NoError(t, err)
	var got []eventstore.RecordedEvent
	for len(got) < len(stored) {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		got = append(got, msg.Events...)
	}
	require.Equal(t, stored, got)
	require.Greater(t, s.reads.Load(), before, "read, not kept")
}

// What is kept is never replaced by something that starts earlier.
func TestTailKeepsTheLatest(t *testing.T) {
	var tl tail
	tl.keep(tailRead{from: 10, head: 12})
	tl.keep(tailRead{from: 7, head: 9})
	_, ok := tl.from(7)
	require.False(t, ok)
	r, ok := tl.from(10)
	require.True(t, ok)
	require.Equal(t, uint64(12), r.head)
	tl.keep(tailRead{from: 12, head: 15})
	_, ok = tl.from(12)
	require.True(t, ok)
}
