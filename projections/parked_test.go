package projections_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// tally counts and sums each stream's events, an incremental read model
// that is exact only if every event is applied once. An event whose data
// names a failure in fail (by its "fail" field) fails the handler until the
// failure is healed; "permanent" failures are marked Permanent; "badsql"
// makes PostgreSQL reject a queued statement.
type tally struct {
	mu   sync.Mutex
	fail map[string]bool
}

func newTally(failing ...string) *tally {
	t := &tally{fail: map[string]bool{}}
	for _, f := range failing {
		t.fail[f] = true
	}
	return t
}

func (t *tally) heal(f string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.fail, f)
}

func (t *tally) failing(f string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fail[f]
}

func (*tally) Name() string     { return "tally" }
func (*tally) Version() int     { return 1 }
func (*tally) Tables() []string { return []string{"tally"} }
func (*tally) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"t-"}}
}
func (*tally) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "tally"}.Sanitize()+` (
		stream_id text PRIMARY KEY, events bigint NOT NULL, sum bigint NOT NULL, revision bigint NOT NULL)`)
	return err
}

func (t *tally) Apply(ctx context.Context, b *projections.Batch) error {
	var streams []string
	var counts, sums, revs []int64
	for _, e := range b.Events {
		var v struct {
			N    int64  `json:"n"`
			Fail string `json:"fail"`
		}
		if err := json.Unmarshal(e.Data, &v); err != nil {
			return projections.Permanent(err)
		}
		switch {
		case v.Fail == "panic" && t.failing("panic"):
			var m map[string]int
			m["boom"]++ // a handler bug
		case v.Fail == "badsql" && t.failing("badsql"):
			b.Queue(`SELECT 'not a number'::bigint`)
		case v.Fail != "" && t.failing(v.Fail) && strings.HasPrefix(v.Fail, "permanent"):
			return projections.Permanent(fmt.Errorf("event %s: %s", e.EventID, v.Fail))
		case v.Fail != "" && t.failing(v.Fail):
			return fmt.Errorf("event %s: %s", e.EventID, v.Fail)
		}
		streams, counts, sums, revs = append(streams, e.StreamID), append(counts, 1), append(sums, v.N), append(revs, int64(e.Revision))
	}
	// One statement per event keeps it simple; the projector's guarantees,
	// not this projection's speed, are under test.
	for i := range streams {
		b.Queue(`INSERT INTO `+b.Table("tally")+` AS t VALUES ($1, $2, $3, $4)
			ON CONFLICT (stream_id) DO UPDATE SET events = t.events + 1, sum = t.sum + excluded.sum, revision = excluded.revision`,
			streams[i], counts[i], sums[i], revs[i])
	}
	return nil
}

type tallyRow struct{ events, sum, revision int64 }

func tallies(t *testing.T, ctx context.Context, b *bundle) map[string]tallyRow {
	t.Helper()
	return queryTallies(t, ctx, b, `SELECT stream_id, events, sum, revision FROM readmodel.tally`)
}

// foldTally is tally computed from sightline.events, leaving out the events
// the projection has parked, held or skipped.
func foldTally(t *testing.T, ctx context.Context, b *bundle) map[string]tallyRow {
	t.Helper()
	return queryTallies(t, ctx, b, `SELECT stream_id, count(*), sum((data->>'n')::bigint)::bigint, max(revision) FROM sightline.events e
		WHERE stream_id LIKE 't-%' AND NOT EXISTS (SELECT FROM sightline.parked k
			WHERE k.projection = 'tally' AND k.stream_id = e.stream_id AND k.revision = e.revision AND k.state <> 'applied')
		GROUP BY stream_id`)
}

func queryTallies(t *testing.T, ctx context.Context, b *bundle, sql string) map[string]tallyRow {
	t.Helper()
	rows, err := b.db.Pool.Query(ctx, sql)
	require.NoError(t, err)
	out := map[string]tallyRow{}
	var id string
	var r tallyRow
	_, err = pgx.ForEachRow(rows, []any{&id, &r.events, &r.sum, &r.revision}, func() error { out[id] = r; return nil })
	require.NoError(t, err)
	return out
}

func tallyEvent(n int, fail string) eventstore.EventData {
	return storetest.Event("Counted", fmt.Sprintf(`{"n":%d,"fail":%q}`, n, fail))
}

func (b *bundle) startTally(t *testing.T, ctx context.Context, p *tally) *projections.Runner {
	t.Helper()
	d, err := projections.NewDaemon(b.db.Pool, b.store, []projections.Projection{p}, projections.Config{
		Metrics: b.metrics, StatusInterval: 20 * time.Millisecond, BatchSize: 500,
		MaxAttempts: 3, RetryInitialInterval: 5 * time.Millisecond, RetryMaxInterval: 20 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	return d.Runner("tally")
}

func parked(t *testing.T, ctx context.Context, b *bundle) []projections.ParkedEvent {
	t.Helper()
	list, err := projections.ListParked(ctx, b.db.Pool, projections.ListOptions{Projection: "tally"})
	require.NoError(t, err)
	return list
}

// TestPoisonEventHoldsOnlyItsStream: one event among many streams fails
// every attempt. It is parked after MaxAttempts with its error, the later
// events of its stream wait behind it, every other stream is applied, and
// the checkpoint reaches the head. A retry while the cause remains changes
// nothing; once healed, a retry applies the event and those held behind it
// in order, and the totals are exact.
func TestPoisonEventHoldsOnlyItsStream(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	want := map[string]int64{}
	for round := range 3 {
		for s := range 40 {
			stream := fmt.Sprintf("t-%d", s)
			fail := ""
			if stream == "t-13" && round == 1 {
				fail = "poison"
			}
			appendOrder(t, ctx, b.store, stream, tallyEvent(s*10+round, fail))
			want[stream] += int64(s*10 + round)
		}
	}
	appendOrder(t, ctx, b.store, "t-13", tallyEvent(1000, ""))
	want["t-13"] += 1000
	p := newTally("poison")
	r := b.startTally(t, ctx, p)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")

	got := tallies(t, ctx, b)
	require.Len(t, got, 40)
	for stream, sum := range want {
		if stream == "t-13" {
			continue
		}
		require.Equal(t, tallyRow{3, sum, 2}, got[stream], stream)
	}
	require.Equal(t, tallyRow{1, 130, 0}, got["t-13"], "the poisoned stream stays at its last good revision")
	require.Equal(t, foldTally(t, ctx, b), got)

	list := parked(t, ctx, b)
	require.Len(t, list, 3)
	head := list[0]
	require.Equal(t, projections.ParkedStateParked, head.State)
	require.Equal(t, "t-13", head.Event.StreamID)
	require.Equal(t, uint64(1), head.Event.Revision)
	require.Equal(t, 3, head.Attempts)
	require.Contains(t, head.Error, "poison")
	require.JSONEq(t, `{"n":131,"fail":"poison"}`, string(head.Event.Data), "the row keeps the event")
	for i, rev := range []uint64{2, 3} {
		require.Equal(t, projections.ParkedStateHeld, list[i+1].State)
		require.Equal(t, rev, list[i+1].Event.Revision)
		require.Empty(t, list[i+1].Error)
	}
	require.Equal(t, 2.0, testutil.ToFloat64(b.metrics.HandlerRetries.WithLabelValues("tally")), "tried three times")
	require.Equal(t, 1.0, testutil.ToFloat64(b.metrics.EventsParked.WithLabelValues("tally")))
	require.Eventually(t, func() bool {
		st := r.Status()
		return st.Parked == 3 && st.Status == projections.StatusLive && st.Lag == 0
	}, 5*time.Second, 10*time.Millisecond, "%+v", r.Status())
	require.Equal(t, 3.0, testutil.ToFloat64(b.metrics.Parked.WithLabelValues("tally")))

	// A new event of the held stream parks behind the others.
	appendOrder(t, ctx, b.store, "t-13", tallyEvent(2000, ""))
	want["t-13"] += 2000
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	require.Len(t, parked(t, ctx, b), 4)

	_, err := r.Retry(ctx, list[1].ID)
	require.ErrorIs(t, err, projections.ErrParkedHeld, "a held event is released by its stream's parked one")
	_, err = r.Skip(ctx, list[2].ID)
	require.ErrorIs(t, err, projections.ErrParkedHeld)

	rel, err := r.Retry(ctx, head.ID)
	require.NoError(t, err)
	require.Empty(t, rel.Applied, "still failing")
	require.NotNil(t, rel.Parked)
	require.Equal(t, head.ID, rel.Parked.ID)
	require.Equal(t, 4, rel.Parked.Attempts)
	require.Equal(t, tallyRow{1, 130, 0}, tallies(t, ctx, b)["t-13"])

	p.heal("poison")
	rel, err = r.Retry(ctx, head.ID)
	require.NoError(t, err)
	require.Nil(t, rel.Parked)
	require.Equal(t, projections.ParkedStateApplied, rel.Event.State)
	var revs []uint64
	for _, e := range rel.Applied {
		revs = append(revs, e.Revision)
	}
	require.Equal(t, []uint64{1, 2, 3, 4}, revs, "the parked event, then those held behind it, in order")
	require.Empty(t, parked(t, ctx, b))
	require.Equal(t, tallyRow{5, want["t-13"], 4}, tallies(t, ctx, b)["t-13"])

	again, err := r.Retry(ctx, head.ID)
	require.NoError(t, err, "a retry is idempotent")
	require.Empty(t, again.Applied)
	require.Equal(t, projections.ParkedStateApplied, again.Event.State)
	_, err = r.Skip(ctx, head.ID)
	require.ErrorIs(t, err, projections.ErrParkedResolved, "an applied event cannot be skipped")

	// The stream is free again.
	appendOrder(t, ctx, b.store, "t-13", tallyEvent(5, ""))
	want["t-13"] += 5
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	require.Equal(t, tallyRow{6, want["t-13"], 5}, tallies(t, ctx, b)["t-13"])
	require.Equal(t, foldTally(t, ctx, b), tallies(t, ctx, b))
	require.Eventually(t, func() bool { return r.Status().Parked == 0 }, 5*time.Second, 10*time.Millisecond)
	require.Zero(t, testutil.ToFloat64(b.metrics.Parked.WithLabelValues("tally")))
}

// TestSkipReleasesTheStream: an event that is certain to fail (Permanent,
// or rejected by PostgreSQL as bad data) is parked on its first attempt, one
// whose handler panics after its tries;
// skipping it applies what waited behind it, and skipping again changes
// nothing. A held event that fails when released becomes the parked one.
func TestSkipReleasesTheStream(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	appendOrder(t, ctx, b.store, "t-a", tallyEvent(1, ""), tallyEvent(2, "permanent"), tallyEvent(4, ""), tallyEvent(8, "later"), tallyEvent(16, ""))
	appendOrder(t, ctx, b.store, "t-b", tallyEvent(1, "badsql"), tallyEvent(2, ""))
	appendOrder(t, ctx, b.store, "t-c", tallyEvent(1, ""), tallyEvent(2, ""))
	appendOrder(t, ctx, b.store, "t-d", tallyEvent(1, "panic"))
	r := b.startTally(t, ctx, newTally("permanent", "later", "badsql", "panic"))
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	require.Equal(t, 2.0, testutil.ToFloat64(b.metrics.HandlerRetries.WithLabelValues("tally")), "only the panic is tried again")

	list := parked(t, ctx, b)
	require.Len(t, list, 7) // t-a: 1 parked, 3 held; t-b: 1 parked, 1 held; t-d: 1 parked
	require.Contains(t, list[6].Error, "tally panicked: assignment to entry in nil map", "a panicking handler parks its event; the process lives on")
	require.Equal(t, 3, list[6].Attempts)
	byStream := map[string][]projections.ParkedEvent{}
	for _, p := range list {
		byStream[p.Event.StreamID] = append(byStream[p.Event.StreamID], p)
	}
	require.Contains(t, byStream["t-b"][0].Error, "SQLSTATE 22P02")
	require.Equal(t, 1, byStream["t-b"][0].Attempts)
	require.Equal(t, map[string]tallyRow{"t-a": {1, 1, 0}, "t-c": {2, 3, 1}}, tallies(t, ctx, b))

	rel, err := r.Skip(ctx, byStream["t-a"][0].ID)
	require.NoError(t, err)
	require.True(t, rel.Skipped)
	require.Len(t, rel.Applied, 1, "revision 2 applies, revision 3 fails in turn")
	require.NotNil(t, rel.Parked)
	require.Equal(t, uint64(3), rel.Parked.Event.Revision)
	require.Equal(t, projections.ParkedStateParked, rel.Parked.State)
	require.Equal(t, 1, rel.Parked.Attempts)
	require.Equal(t, tallyRow{2, 5, 2}, tallies(t, ctx, b)["t-a"])

	again, err := r.Skip(ctx, byStream["t-a"][0].ID)
	require.NoError(t, err, "a skip is idempotent")
	require.False(t, again.Skipped)
	require.Equal(t, projections.ParkedStateSkipped, again.Event.State)
	require.NotNil(t, again.Parked, "a repeated skip still says what holds the stream")
	require.Equal(t, rel.Parked.ID, again.Parked.ID)
	require.Equal(t, 4.0, testutil.ToFloat64(b.metrics.EventsParked.WithLabelValues("tally")), "three parked by the projector, one in its turn by the skip")
	_, err = r.Retry(ctx, byStream["t-a"][0].ID)
	require.ErrorIs(t, err, projections.ErrParkedResolved, "a skipped event is not retried")

	rel, err = r.Skip(ctx, rel.Parked.ID)
	require.NoError(t, err)
	require.Len(t, rel.Applied, 1)
	require.Nil(t, rel.Parked)
	require.Equal(t, tallyRow{3, 21, 4}, tallies(t, ctx, b)["t-a"])

	rel, err = r.Skip(ctx, byStream["t-b"][0].ID)
	require.NoError(t, err)
	require.Len(t, rel.Applied, 1)
	require.Equal(t, tallyRow{1, 2, 1}, tallies(t, ctx, b)["t-b"])
	_, err = r.Skip(ctx, list[6].ID)
	require.NoError(t, err)
	require.Equal(t, 4.0, testutil.ToFloat64(b.metrics.EventsSkipped.WithLabelValues("tally", projections.SkipParkedEvent)))
	require.Empty(t, parked(t, ctx, b))
	require.Equal(t, foldTally(t, ctx, b), tallies(t, ctx, b))

	_, err = r.Retry(ctx, 1<<40)
	require.ErrorIs(t, err, projections.ErrParkedNotFound)
}

// A statement the projection queued that PostgreSQL rejects, in a batch
// where nothing else fails, parks its event on the first attempt like any
// other bad data; the rest of the batch is applied.
func TestRejectedStatementParksItsEvent(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	appendOrder(t, ctx, b.store, "t-x", tallyEvent(1, ""), tallyEvent(2, "badsql"))
	appendOrder(t, ctx, b.store, "t-y", tallyEvent(4, ""))
	b.startTally(t, ctx, newTally("badsql"))
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")

	list := parked(t, ctx, b)
	require.Len(t, list, 1)
	require.Equal(t, "t-x", list[0].Event.StreamID)
	require.Equal(t, uint64(1), list[0].Event.Revision)
	require.Contains(t, list[0].Error, "SQLSTATE 22P02")
	require.Equal(t, 1, list[0].Attempts)
	require.Equal(t, map[string]tallyRow{"t-x": {1, 1, 0}, "t-y": {1, 4, 0}}, tallies(t, ctx, b))
}

// TestRetryWhileTrafficFlows retries a parked event while writers keep
// appending to its stream and to others: the retry and the projector's
// batches serialize on the checkpoint row, so every event is applied once,
// in order, whichever side gets it.
func TestRetryWhileTrafficFlows(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	p := newTally("poison")
	r := b.startTally(t, ctx, p)
	appendOrder(t, ctx, b.store, "t-hot", tallyEvent(1, ""), tallyEvent(2, "poison"))
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	list := parked(t, ctx, b)
	require.Len(t, list, 1)

	var wg sync.WaitGroup
	for w := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				stream := "t-hot"
				if i%2 == 1 {
					stream = fmt.Sprintf("t-%d", w)
				}
				if _, err := b.store.Append(ctx, stream, eventstore.Any, tallyEvent(i, "")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	p.heal("poison")
	rel, err := r.Retry(ctx, list[0].ID)
	require.NoError(t, err)
	require.Nil(t, rel.Parked)
	require.NotEmpty(t, rel.Applied)
	wg.Wait()
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	require.Empty(t, parked(t, ctx, b))
	got := tallies(t, ctx, b)
	require.Equal(t, foldTally(t, ctx, b), got)
	require.Equal(t, int64(2+3*75), got["t-hot"].events, "every event of the hot stream applied once")
}

// TestRetriesHoldNoTransactionOpen: the backoff between an event's attempts
// is spent outside any transaction. With PostgreSQL ending sessions idle in
// a transaction for 300 ms and 400 ms between attempts, the event is still
// tried three times and parked, and the healthy stream is applied.
func TestRetriesHoldNoTransactionOpen(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	_, err := b.db.Pool.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{b.db.Name}.Sanitize()+` SET idle_in_transaction_session_timeout = '300ms'`)
	require.NoError(t, err)
	b.db.Pool.Reset() // new connections take the setting
	appendOrder(t, ctx, b.store, "t-1", tallyEvent(1, "poison"))
	appendOrder(t, ctx, b.store, "t-2", tallyEvent(2, ""))

	d, err := projections.NewDaemon(b.db.Pool, b.store, []projections.Projection{newTally("poison")}, projections.Config{
		Metrics: b.metrics, MaxAttempts: 3, RetryInitialInterval: 400 * time.Millisecond, RetryMaxInterval: 400 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(context.Background()) //nolint:errcheck
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")

	list := parked(t, ctx, b)
	require.Len(t, list, 1)
	require.Equal(t, 3, list[0].Attempts)
	require.Equal(t, map[string]tallyRow{"t-2": {1, 2, 0}}, tallies(t, ctx, b))
	var setting string
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SHOW idle_in_transaction_session_timeout`).Scan(&setting))
	require.Equal(t, "300ms", setting, "the timeout was in force")
	require.NoError(t, d.Stop(ctx))
}

// TestMissingTableStallsAndParksNothing: a read-model table renamed under
// the projector fails every event alike. That is the schema's fault, not
// the events': nothing is parked, the projection is stalled and says why,
// and it recovers by itself once the table is back.
func TestMissingTableStallsAndParksNothing(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	r := b.startTally(t, ctx, newTally())
	appendOrder(t, ctx, b.store, "t-0", tallyEvent(1, ""))
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	_, err := b.db.Pool.Exec(ctx, `ALTER TABLE sl_tally_g1.tally RENAME TO tally_away`)
	require.NoError(t, err)
	for s := range 5 {
		appendOrder(t, ctx, b.store, fmt.Sprintf("t-%d", s), tallyEvent(s, ""))
	}
	require.Eventually(t, func() bool {
		st := r.Status()
		return st.Status == projections.StatusStalled && strings.Contains(st.LastError, "42P01")
	}, 10*time.Second, 10*time.Millisecond, "%+v", r.Status())
	require.Empty(t, parked(t, ctx, b))
	_, err = b.db.Pool.Exec(ctx, `ALTER TABLE sl_tally_g1.tally_away RENAME TO tally`)
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	require.Empty(t, parked(t, ctx, b))
	require.Equal(t, foldTally(t, ctx, b), tallies(t, ctx, b))
	require.Len(t, tallies(t, ctx, b), 5)
}
