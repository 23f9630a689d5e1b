package pgstore

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/internal/testdb"
)

type appendCall struct {
	stream   string
	expected eventstore.ExpectedRevision
	events   []eventstore.EventData
}

type appendOutcome struct {
	res eventstore.AppendResult
	err error
}

// holdSlots makes n group slots busy until release: each is held by an
// append to a stream whose first revision an open transaction of the test
// has inserted, so that the append waits on its unique key until the test
// rolls back. With keep, the groups wait for the lock however long that
// takes; otherwise they give up after groupLockTimeout, as they would
// outside tests.
func holdSlots(t *testing.T, s *Store, db *testdb.DB, keep bool, n int) (release func()) {
	t.Helper()
	ctx := context.Background()
	if keep {
		s.group.lockTimeout.Store(time.Hour.Milliseconds())
	}
	blocker, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { _ = blocker.Rollback(ctx) }) // the connection goes back to the pool even if the test fails
	var wg sync.WaitGroup
	for i := range n {
		stream := fmt.Sprintf("blocker-%d-%s", i, uuid.NewString())
		_, err := blocker.Exec(ctx, `INSERT INTO sightline.event_log (stream_id, revision, event_id, type, data) VALUES ($1, 0, $2, 'T', '{}')`, stream, uuid.New())
		require.NoError(t, err)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Append(ctx, stream, eventstore.Any, events(1)...); err != nil {
				t.Errorf("blocking append: %v", err)
			}
		}()
		// One at a time, so that each takes a group, and a slot, of its own.
		require.Eventually(t, func() bool { return waitingOnLocks(t, db) == i+1 }, 10*time.Second, time.Millisecond)
	}
	return func() {
		require.NoError(t, blocker.Rollback(ctx))
		wg.Wait()
	}
}

// appendQueued holds every group slot, queues calls behind them, and lets
// the groups go once all the calls wait in the queue: the calls then go to
// the server together, as far as grouping allows. Then, if there is one,
// released runs while the calls' group is on its way.
func appendQueued(t *testing.T, s *Store, db *testdb.DB, calls []appendCall, released func()) []appendOutcome {
	t.Helper()
	ctx := context.Background()
	release := holdSlots(t, s, db, true, groupsInFlight)
	var wg sync.WaitGroup
	out := make([]appendOutcome, len(calls))
	for i, c := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.Append(ctx, c.stream, c.expected, c.events...)
			out[i] = appendOutcome{res, err}
		}()
	}
	require.Eventually(t, func() bool { return len(s.group.reqs) == len(calls) }, 10*time.Second, time.Millisecond)
	require.Equal(t, groupsInFlight, len(s.group.slots))
	release()
	if released != nil {
		released()
	}
	wg.Wait()
	return out
}

func waitingOnLocks(t *testing.T, db *testdb.DB) int {
	var n int
	require.NoError(t, db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'transactionid'`).Scan(&n))
	return n
}

// transactionsOf counts the transactions that inserted the streams' events.
func transactionsOf(t *testing.T, db *testdb.DB, streams ...string) int {
	var n int
	require.NoError(t, db.Pool.QueryRow(context.Background(), `SELECT count(DISTINCT xmin::text) FROM sightline.event_log
		WHERE stream_id = ANY($1)`, streams).Scan(&n))
	return n
}

// Appends that wait while earlier ones are in flight go to the server in one
// transaction, and each gets its own revisions and position.
func TestQueuedAppendsShareATransaction(t *testing.T) {
	s, db := newTestStore(t, Config{})
	var calls []appendCall
	var streams []string
	for i := range 10 {
		streams = append(streams, fmt.Sprintf("order-%d", i))
		calls = append(calls, appendCall{streams[i], eventstore.NoStream, events(1 + i%3)})
	}
	out := appendQueued(t, s, db, calls, nil)
	positions := map[uint64]bool{}
	for i, o := range out {
		require.NoError(t, o.err, streams[i])
		require.Equal(t, uint64(1+i%3), o.res.NextRevision, streams[i])
		require.False(t, positions[o.res.Position.Commit], "position %d given twice", o.res.Position.Commit)
		positions[o.res.Position.Commit] = true
		got, err := s.ReadStream(context.Background(), streams[i], 0, 10)
		require.NoError(t, err)
		require.Len(t, got, 1+i%3)
		for j, e := range got {
			require.Equal(t, uint64(j), e.Revision)
			require.Equal(t, calls[i].events[j].EventID, e.EventID)
			if j > 0 {
				require.Greater(t, e.Position.Commit, got[j-1].Position.Commit, "an append's events are positioned in order")
			}
		}
	}
	require.Equal(t, 1, transactionsOf(t, db, streams...))
}

// In a group, each append's condition holds or fails on its own: one whose
// condition fails writes nothing and gets the error it would get alone; the
// others are written.
func TestGroupedAppendKeepsItsOwnCondition(t *testing.T) {
	s, db := newTestStore(t, Config{})
	ctx := context.Background()
	for _, stream := range []string{"order-old", "order-x", "order-y"} {
		_, err := s.Append(ctx, stream, eventstore.NoStream, events(2)...)
		require.NoError(t, err)
	}
	out := appendQueued(t, s, db, []appendCall{
		{"order-a", eventstore.NoStream, events(1)},
		{"order-old", eventstore.NoStream, events(1)},
		{"order-b", eventstore.StreamExists, events(1)},
		{"order-old", eventstore.Exact(0), events(1)}, // one of the two order-old appends waits for the next group
		{"order-c", eventstore.Any, events(1)},
		{"order-x", eventstore.Exact(1), events(1)},
		{"order-y", eventstore.StreamExists, events(1)},
	}, nil)
	for i, want := range map[int]uint64{0: 1, 4: 1, 5: 3, 6: 3} {
		require.NoError(t, out[i].err, i)
		require.Equal(t, want, out[i].res.NextRevision, i)
	}
	var wrong *eventstore.WrongExpectedRevisionError
	require.ErrorAs(t, out[1].err, &wrong)
	require.Equal(t, int64(1), wrong.Actual)
	require.ErrorAs(t, out[2].err, &wrong)
	require.Equal(t, int64(-1), wrong.Actual)
	require.ErrorAs(t, out[3].err, &wrong)
	require.Equal(t, int64(1), wrong.Actual)
	require.Equal(t, 1, transactionsOf(t, db, "order-a", "order-c", "order-x", "order-y")-2) // order-x's and order-y's first appends are the others
	got, err := s.ReadStream(ctx, "order-old", 0, 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
}

// A group the server refuses as a whole sends each append back alone: the
// others are written, each in its own transaction, and the culprit gets what
// it would have got alone. First one append of the group loses a race for
// its stream's next revision to a transaction that commits while the group
// waits for it; then one reuses an event ID.
func TestFailedGroupGoesAlone(t *testing.T) {
	s, db := newTestStore(t, Config{})
	ctx := context.Background()
	racer, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer racer.Rollback(ctx) //nolint:errcheck // committed below
	_, err = racer.Exec(ctx, `INSERT INTO sightline.event_log (stream_id, revision, event_id, type, data) VALUES ('order-race', 0, $1, 'T', '{}')`, uuid.New())
	require.NoError(t, err)
	out := appendQueued(t, s, db, []appendCall{
		{"order-a", eventstore.NoStream, events(1)},
		{"order-race", eventstore.Any, events(1)},
		{"order-b", eventstore.NoStream, events(1)},
	}, func() {
		require.Eventually(t, func() bool { return waitingOnLocks(t, db) == 1 }, 10*time.Second, 5*time.Millisecond)
		require.NoError(t, racer.Commit(ctx))
	})
	for _, o := range out {
		require.NoError(t, o.err)
	}
	require.Equal(t, uint64(2), out[1].res.NextRevision)
	require.Equal(t, 4, transactionsOf(t, db, "order-a", "order-b", "order-race")) // the racer's and one for each append

	first := events(1)
	done, err := s.Append(ctx, "order-old", eventstore.NoStream, first...)
	require.NoError(t, err)
	out = appendQueued(t, s, db, []appendCall{
		{"order-c", eventstore.NoStream, events(1)},
		{"order-old", eventstore.NoStream, first}, // the same append again
		{"order-d", eventstore.NoStream, first},   // its event ID, to another stream
	}, nil)
	require.NoError(t, out[0].err)
	require.NoError(t, out[1].err)
	require.Equal(t, done, out[1].res)
	require.ErrorIs(t, out[2].err, eventstore.ErrIdempotency)
	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM sightline.event_log WHERE stream_id IN ('order-old', 'order-d')`).Scan(&n))
	require.Equal(t, 1, n)
}

// An append whose caller gives up while it waits for its group is never
// sent; the rest of its group is.
func TestAppendGivenUpInTheQueueIsNotSent(t *testing.T) {
	s, db := newTestStore(t, Config{})
	release := holdSlots(t, s, db, true, groupsInFlight)
	gone, giveUp := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() {
		_, err := s.Append(gone, "order-gone", eventstore.NoStream, events(1)...)
		gaveUp <- err
	}()
	require.Eventually(t, func() bool { return len(s.group.reqs) == 1 }, 10*time.Second, time.Millisecond)
	stays := make(chan error, 1)
	go func() {
		_, err := s.Append(context.Background(), "order-stays", eventstore.NoStream, events(1)...)
		stays <- err
	}()
	require.Eventually(t, func() bool { return len(s.group.reqs) == 2 }, 10*time.Second, time.Millisecond)
	giveUp()
	require.ErrorIs(t, <-gaveUp, context.Canceled)
	release()
	require.NoError(t, <-stays)
	require.Equal(t, 0, transactionsOf(t, db, "order-gone"))
	require.Equal(t, 1, transactionsOf(t, db, "order-stays"))
}

// A group that waits on a row lock longer than groupLockTimeout gives up,
// and its appends go alone: appends to other streams are not held up
// behind it.
func TestWaitingGroupMakesRoom(t *testing.T) {
	s, db := newTestStore(t, Config{})
	release := holdSlots(t, s, db, false, groupsInFlight)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := s.Append(ctx, "order-free", eventstore.NoStream, events(1)...)
	require.NoError(t, err)
	require.Equal(t, uint64(1), res.NextRevision)
	// The blocked appends wait on, each alone now; one may be between its
	// group's give-up and its own wait when the free append returns.
	require.Eventually(t, func() bool { return waitingOnLocks(t, db) == groupsInFlight }, 10*time.Second, time.Millisecond)
}

// Appends wait for the group in flight to go together in the next, but not
// for a group held up by a row lock: with one held for good (no lock
// timeout), appends to other streams go in the other slot.
func TestGroupHeldByALockHoldsNobodyUp(t *testing.T) {
	s, db := newTestStore(t, Config{})
	release := holdSlots(t, s, db, true, 1)
	defer release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		res, err := s.Append(ctx, fmt.Sprintf("order-free-%d", i), eventstore.NoStream, events(1)...)
		require.NoError(t, err)
		require.Equal(t, uint64(1), res.NextRevision)
	}
	require.Equal(t, 1, waitingOnLocks(t, db), "the held group still waits")
}

// An append with nobody else about is positioned by its own group, in its
// own transaction: the sequencer does not run. With the sequencer's lock
// held elsewhere (another process's run), the group leaves its events to
// the sequencer, which positions them once the lock is free; nothing is
// lost or given a position twice.
func TestGroupPositionsItsOwnAppendsWhenTheLockIsFree(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, db := newTestStore(t, Config{})
	// The sequencer runs once its listener connects, which may take the
	// lock while the first append's group wants it.
	require.Eventually(t, s.hub.connected, 10*time.Second, time.Millisecond)
	first, err := s.Append(ctx, "alone-0", eventstore.NoStream, events(1)...)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return s.seq.inRun() == nil }, 10*time.Second, time.Millisecond)
	runs := s.seq.runs.Load()
	last := first.Position
	for i := 1; i <= 5; i++ {
		res, err := s.Append(ctx, fmt.Sprintf("alone-%d", i), eventstore.NoStream, events(1)...)
		require.NoError(t, err)
		require.Equal(t, last.Commit+1, res.Position.Commit, "gapless")
		last = res.Position
	}
	require.Equal(t, runs, s.seq.runs.Load(), "no sequencer run: each group positioned its own")

	hold, err := db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer hold.Rollback(context.Background()) //nolint:errcheck // the test ends it
	_, err = hold.Exec(ctx, `SELECT pg_advisory_xact_lock(7406745143525210945)`)
	require.NoError(t, err)
	done := make(chan appendOutcome, 1)
	go func() {
		res, err := s.Append(ctx, "held-1", eventstore.NoStream, events(1)...)
		done <- appendOutcome{res, err}
	}()
	select {
	case o := <-done:
		t.Fatalf("positioned while the sequencer's lock was held elsewhere: %+v", o)
	case <-time.After(300 * time.Millisecond):
	}
	var unsequenced int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM sightline.unsequenced`).Scan(&unsequenced))
	require.Equal(t, 1, unsequenced, "committed, waiting for a position")
	require.NoError(t, hold.Rollback(ctx))
	o := <-done
	require.NoError(t, o.err)
	require.Equal(t, last.Commit+1, o.res.Position.Commit)
	require.Greater(t, s.seq.runs.Load(), runs, "the sequencer positioned it")
	var positions, distinct int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT event_row) FROM sightline.positions`).Scan(&positions, &distinct))
	require.Equal(t, 7, positions)
	require.Equal(t, 7, distinct)
}
