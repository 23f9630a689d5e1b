package pgstore_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
)

// TestLateCommitsAreNeverSkipped has 8 appenders whose transactions commit
// in a different order than they started (each holds its transaction open
// for a random time), through two Store instances as two processes would,
// while a subscriber reads live. Every event must arrive exactly once, each
// stream in revision order, positions gapless.
func TestLateCommitsAreNeverSkipped(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s1, db := newStore(t, pgstore.Config{})
	s2, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	defer s2.Close()

	sub, err := s1.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	require.NoError(t, err)
	defer sub.Close()

	const writers, perWriter = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			store := []*pgstore.Store{s1, s2}[w%2]
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for i := range perWriter {
				tx, err := db.Pool.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				stream := fmt.Sprintf("order-w%d-%d", w, i%3) // streams shared by a writer's appends
				if _, err := store.AppendTx(ctx, tx, stream, eventstore.Any, storetest.Event("A", fmt.Sprintf(`{"w":%d,"i":%d}`, w, i))); err != nil {
					errs <- err
					_ = tx.Rollback(ctx)
					return
				}
				time.Sleep(time.Duration(rng.IntN(15)) * time.Millisecond) // commit later than others that started after
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}

	seen := map[string]bool{}
	lastRev := map[string]int64{}
	lastPos := uint64(0)
	for len(seen) < writers*perWriter {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err, "received %d of %d", len(seen), writers*perWriter)
		for _, e := range msg.Events {
			require.False(t, seen[e.EventID], "event %s delivered twice", e.EventID)
			seen[e.EventID] = true
			require.Equal(t, lastPos+1, e.Position.Commit, "positions are gapless and in order")
			lastPos = e.Position.Commit
			prev, ok := lastRev[e.StreamID]
			if !ok {
				prev = -1
			}
			require.Equal(t, prev+1, int64(e.Revision), "stream %s in revision order", e.StreamID)
			lastRev[e.StreamID] = int64(e.Revision)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// TestOpenTransactionDoesNotHoldBackDelivery leaves transactions open in
// the same database, one that has written a business row and one that has
// appended an event but not committed, and proves events committed after
// them are delivered meanwhile, and the held one once it commits.
func TestOpenTransactionDoesNotHoldBackDelivery(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, db := newStore(t, pgstore.Config{})

	_, err := db.Pool.Exec(ctx, `CREATE TABLE report_runs (id serial PRIMARY KEY)`)
	require.NoError(t, err)
	business, err := db.Pool.Begin(ctx) // a long report or bulk load: holds an xid, stays open
	require.NoError(t, err)
	defer business.Rollback(ctx) //nolint:errcheck
	_, err = business.Exec(ctx, `INSERT INTO report_runs DEFAULT VALUES`)
	require.NoError(t, err)

	outbox, err := db.Pool.Begin(ctx) // an append that has not committed yet
	require.NoError(t, err)
	_, err = s.AppendTx(ctx, outbox, "order-held", eventstore.NoStream, storetest.Event("Held", `{}`))
	require.NoError(t, err)

	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	require.NoError(t, err)
	defer sub.Close()
	res, err := s.Append(ctx, "order-after", eventstore.NoStream, storetest.Event("After", `{}`))
	require.NoError(t, err)

	// Delivered while both transactions stay open. (A reader bounded by the
	// cluster's xmin would block here until ctx ends.)
	got := recvEvents(t, ctx, sub, 1)
	require.Equal(t, "After", got[0].Type)
	require.Equal(t, res.Position, got[0].Position)

	require.NoError(t, outbox.Commit(ctx)) // its commit wakes the sequencer
	got = recvEvents(t, ctx, sub, 1)
	require.Equal(t, "Held", got[0].Type, "the late commit is delivered, after the events that committed before it")
	require.True(t, res.Position.Before(got[0].Position))
}

// TestOutboxRollsBackWithTheCaller shows an append inside the caller's
// transaction commits or rolls back with the caller's own rows, and a
// failed append leaves the caller's transaction usable.
func TestOutboxRollsBackWithTheCaller(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, db := newStore(t, pgstore.Config{})
	_, err := db.Pool.Exec(ctx, `CREATE TABLE orders_table (id text PRIMARY KEY)`)
	require.NoError(t, err)

	tx, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO orders_table VALUES ('o1')`)
	require.NoError(t, err)
	_, err = s.AppendTx(ctx, tx, "order-o1", eventstore.NoStream, storetest.Event("OrderPlaced", `{}`))
	require.NoError(t, err)
	require.NoError(t, tx.Rollback(ctx))
	_, err = s.ReadStream(ctx, "order-o1", 0, 10)
	require.ErrorIs(t, err, eventstore.ErrStreamNotFound, "rolled back with the caller")

	tx, err = db.Pool.Begin(ctx)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `INSERT INTO orders_table VALUES ('o2')`)
	require.NoError(t, err)
	_, err = s.AppendTx(ctx, tx, "order-o2", eventstore.Exact(3), storetest.Event("OrderPlaced", `{}`))
	require.ErrorIs(t, err, eventstore.ErrWrongExpectedRevision)
	_, err = s.AppendTx(ctx, tx, "order-o2", eventstore.NoStream, storetest.Event("OrderPlaced", `{}`))
	require.NoError(t, err, "the caller's transaction survives a failed append")
	require.NoError(t, tx.Commit(ctx))
	got, err := s.ReadStream(ctx, "order-o2", 0, 10)
	require.NoError(t, err)
	require.Len(t, got, 1)
	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM orders_table`).Scan(&n))
	require.Equal(t, 1, n)
}

// TestEventsOfADeadAppenderAreSequenced covers an appender that committed
// and died before its events got positions: the sweep positions them.
func TestEventsOfADeadAppenderAreSequenced(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, db := newStore(t, pgstore.Config{SweepInterval: 50 * time.Millisecond})
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	require.NoError(t, err)
	defer sub.Close()
	// What a committed append leaves behind before the sequencer runs.
	_, err = db.Pool.Exec(ctx, `WITH ins AS (
		INSERT INTO sightline.event_log (stream_id, revision, event_id, type, data)
		VALUES ('order-orphan', 0, gen_random_uuid(), 'OrderPlaced', '{}') RETURNING id)
		INSERT INTO sightline.unsequenced SELECT id FROM ins`)
	require.NoError(t, err)
	got := recvEvents(t, ctx, sub, 1)
	require.Equal(t, "order-orphan", got[0].StreamID)
	require.Equal(t, uint64(1), got[0].Position.Commit)
}

func recvEvents(t *testing.T, ctx context.Context, sub eventstore.Subscription, n int) []eventstore.RecordedEvent {
	t.Helper()
	var got []eventstore.RecordedEvent
	for len(got) < n {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err, "received %d of %d", len(got), n)
		got = append(got, msg.Events...)
	}
	require.Len(t, got, n)
	return got
}
