package projections_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/projections"
)

// counter counts each stream's events into a table of its own name. An
// event whose "badsql" names the counter makes PostgreSQL reject the
// counter's statement for it, inside the transaction the batch commits
// in: shared with other projections' batches, or alone.
type counter struct{ name string }

func (c counter) Name() string     { return c.name }
func (counter) Version() int       { return 1 }
func (c counter) Tables() []string { return []string{c.name} }
func (counter) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"c-"}}
}
func (c counter) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, c.name}.Sanitize()+` (
		stream_id text PRIMARY KEY, events bigint NOT NULL, revision bigint NOT NULL)`)
	return err
}

func (c counter) Apply(ctx context.Context, b *projections.Batch) error {
	for _, e := range b.Events {
		var v struct {
			BadSQL string `json:"badsql"`
		}
		if err := json.Unmarshal(e.Data, &v); err != nil {
			return projections.Permanent(err)
		}
		if v.BadSQL == c.name {
			b.Queue(`SELECT 'not a number'::bigint`)
		}
		b.Queue(`INSERT INTO `+b.Table(c.name)+` AS t VALUES ($1, 1, $2)
			ON CONFLICT (stream_id) DO UPDATE SET events = t.events + 1, revision = excluded.revision`,
			e.StreamID, int64(e.Revision))
	}
	return nil
}

type counted struct{ events, revision int64 }

func counts(t *testing.T, ctx context.Context, b *bundle, name string) map[string]counted {
	t.Helper()
	rows, err := b.db.Pool.Query(ctx, `SELECT stream_id, events, revision FROM readmodel.`+name)
	require.NoError(t, err)
	out := map[string]counted{}
	var id string
	var c counted
	_, err = pgx.ForEachRow(rows, []any{&id, &c.events, &c.revision}, func() error { out[id] = c; return nil })
	require.NoError(t, err)
	return out
}

// startCounters runs the counters in one Daemon, which lets their live
// batches wait long for each other, so that they do commit together.
func (b *bundle) startCounters(t *testing.T, ctx context.Context, names ...string) *projections.Daemon {
	t.Helper()
	var ps []projections.Projection
	for _, n := range names {
		ps = append(ps, counter{n})
	}
	d, err := projections.NewDaemon(b.db.Pool, b.store, ps, projections.Config{
		Metrics: b.metrics, StatusInterval: 20 * time.Millisecond, CommitWait: 200 * time.Millisecond,
		MaxAttempts: 2, RetryInitialInterval: 5 * time.Millisecond, RetryMaxInterval: 20 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	return d
}

func waitAll(t *testing.T, ctx context.Context, d *projections.Daemon, pos eventstore.Position) {
	t.Helper()
	for _, r := range d.Runners() {
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		require.NoError(t, r.WaitFor(wctx, pos), r.Name())
		cancel()
	}
}

// TestProjectionsCommitTheirLiveBatchesTogether appends events one at a
// time to three projections of one Daemon: their batches commit in shared
// transactions, and each read model holds every event exactly once.
func TestProjectionsCommitTheirLiveBatchesTogether(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	names := []string{"ca", "cb", "cc"}
	d := b.startCounters(t, ctx, names...)
	var last eventstore.Position
	for i := range 40 {
		last = appendOrder(t, ctx, b.store, fmt.Sprintf("c-%d", i%4), storetest.Event("Counted", `{}`)).Position
	}
	waitAll(t, ctx, d, last)
	for _, n := range names {
		require.Equal(t, map[string]counted{"c-0": {10, 9}, "c-1": {10, 9}, "c-2": {10, 9}, "c-3": {10, 9}}, counts(t, ctx, b, n), n)
		require.Positive(t, testutil.ToFloat64(b.metrics.BatchesShared.WithLabelValues(n)), n)
	}
	require.Positive(t, testutil.ToFloat64(b.metrics.SharedCommits))
	// Every shared commit held at least two batches.
	var shared float64
	for _, n := range names {
		shared += testutil.ToFloat64(b.metrics.BatchesShared.WithLabelValues(n))
	}
	require.GreaterOrEqual(t, shared, 2*testutil.ToFloat64(b.metrics.SharedCommits))
}

// TestStatementFailingInASharedCommitParksOnlyItsEvent: one projection's
// statement for one event fails inside the transaction it shares with the
// others. The shared transaction rolls back whole; the others commit that
// event alone, once; the failing projection parks it, holds the rest of
// its stream behind it, and applies everything else.
func TestStatementFailingInASharedCommitParksOnlyItsEvent(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.startCounters(t, ctx, "pa", "pb", "pc")
	var last eventstore.Position
	for i := range 12 {
		data := `{}`
		if i == 5 {
			data = `{"badsql": "pb"}` // revision 1 of c-1
		}
		last = appendOrder(t, ctx, b.store, fmt.Sprintf("c-%d", i%4), storetest.Event("Counted", data)).Position
	}
	waitAll(t, ctx, d, last)
	all := map[string]counted{"c-0": {3, 2}, "c-1": {3, 2}, "c-2": {3, 2}, "c-3": {3, 2}}
	require.Equal(t, all, counts(t, ctx, b, "pa"))
	require.Equal(t, all, counts(t, ctx, b, "pc"))
	require.Equal(t, map[string]counted{"c-0": {3, 2}, "c-1": {1, 0}, "c-2": {3, 2}, "c-3": {3, 2}}, counts(t, ctx, b, "pb"))

	list, err := projections.ListParked(ctx, b.db.Pool, projections.ListOptions{Projection: "pb"})
	require.NoError(t, err)
	var failed, held int
	for _, p := range list {
		require.Equal(t, "c-1", p.Event.StreamID)
		switch p.State {
		case projections.ParkedStateParked:
			failed++
			require.EqualValues(t, 1, p.Event.Revision)
		case projections.ParkedStateHeld:
			held++
		}
	}
	require.Equal(t, 1, failed)
	require.Equal(t, 1, held) // revision 2, behind it
	for _, n := range []string{"pa", "pc"} {
		list, err := projections.ListParked(ctx, b.db.Pool, projections.ListOptions{Projection: n})
		require.NoError(t, err)
		require.Empty(t, list, n)
	}
}

// TestCommitWaitNegativeCommitsAlone: with sharing turned off, no batch
// is shared.
func TestCommitWaitNegativeCommitsAlone(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d, err := projections.NewDaemon(b.db.Pool, b.store, []projections.Projection{counter{"na"}, counter{"nb"}},
		projections.Config{Metrics: b.metrics, StatusInterval: 20 * time.Millisecond, CommitWait: -1})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	var last eventstore.Position
	for i := range 10 {
		last = appendOrder(t, ctx, b.store, fmt.Sprintf("c-%d", i%2), storetest.Event("Counted", `{}`)).Position
	}
	waitAll(t, ctx, d, last)
	require.Equal(t, map[string]counted{"c-0": {5, 4}, "c-1": {5, 4}}, counts(t, ctx, b, "na"))
	require.Zero(t, testutil.ToFloat64(b.metrics.SharedCommits))
}

// TestMemberHeldByALockHoldsNobodyBack: a transaction left open on one
// projection's checkpoint row holds its batches back; the other
// projection, whose batches would share its transactions, goes on.
func TestMemberHeldByALockHoldsNobodyBack(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.startCounters(t, ctx, "la", "lb")
	first := appendOrder(t, ctx, b.store, "c-0", storetest.Event("Counted", `{}`)).Position
	waitAll(t, ctx, d, first)

	hold, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer hold.Rollback(context.Background()) //nolint:errcheck // the test ends it
	_, err = hold.Exec(ctx, `SELECT FROM sightline.checkpoints WHERE projection = 'la' FOR UPDATE`)
	require.NoError(t, err)

	var last eventstore.Position
	for range 3 {
		last = appendOrder(t, ctx, b.store, "c-1", storetest.Event("Counted", `{}`)).Position
	}
	wait, cancel := context.WithTimeout(ctx, 3*time.Second) // less than CommitWait's groups would take held: forever
	defer cancel()
	require.NoError(t, d.Runner("lb").WaitFor(wait, last), "lb waited for la's lock")
	require.False(t, d.Runner("la").Reached(last))

	require.NoError(t, hold.Rollback(ctx))
	waitAll(t, ctx, d, last)
	want := map[string]counted{"c-0": {1, 0}, "c-1": {3, 2}}
	require.Equal(t, want, counts(t, ctx, b, "la"))
	require.Equal(t, want, counts(t, ctx, b, "lb"))
}
