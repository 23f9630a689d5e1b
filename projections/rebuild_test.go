package projections_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// replayGate holds back the messages of subscriptions from the start of
// the store, the ones a rebuild opens, letting through a number of them.
type replayGate struct {
	*pgstore.Store
	mu      sync.Mutex
	allowed int // messages still let through; negative: all
	changed chan struct{}
}

func newReplayGate(s *pgstore.Store, allowed int) *replayGate {
	return &replayGate{Store: s, allowed: allowed, changed: make(chan struct{})}
}

func (g *replayGate) allow(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.allowed = n
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *replayGate) Subscribe(ctx context.Context, from eventstore.Position, f eventstore.Filter) (eventstore.Subscription, error) {
	sub, err := g.Store.Subscribe(ctx, from, f)
	if err != nil || !from.IsStart() {
		return sub, err
	}
	return gatedReplay{Subscription: sub, g: g}, nil
}

type gatedReplay struct {
	eventstore.Subscription
	g *replayGate
}

func (s gatedReplay) Recv(ctx context.Context) (eventstore.Message, error) {
	for {
		s.g.mu.Lock()
		ok, changed := s.g.allowed != 0, s.g.changed
		if s.g.allowed > 0 {
			s.g.allowed--
		}
		s.g.mu.Unlock()
		if ok {
			return s.Subscription.Recv(ctx)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return eventstore.Message{}, ctx.Err()
		}
	}
}

type dailySalesV2 struct{ readmodel.DailySales }

func (dailySalesV2) Version() int { return 2 }

func activeGeneration(t *testing.T, ctx context.Context, b *bundle, name string) (gen, version int) {
	t.Helper()
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT generation, version FROM sightline.projections WHERE name = $1`, name).Scan(&gen, &version))
	return gen, version
}

func schemaExists(t *testing.T, ctx context.Context, b *bundle, schema string) bool {
	t.Helper()
	var ok bool
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&ok))
	return ok
}

func dailySales(t *testing.T, ctx context.Context, b *bundle) string {
	t.Helper()
	var s string
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT coalesce(string_agg(d::text, ',' ORDER BY day), '') FROM readmodel.daily_sales d`).Scan(&s))
	return s
}

// TestNewVersionIsBuiltBesideTheActiveOne: code with a newer version builds
// it into new tables while the old version's tables serve (status
// rebuilding), takes over once caught up, and drops the old tables after
// the grace period; older code then refuses to start.
func TestNewVersionIsBuiltBesideTheActiveOne(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.start(t, ctx, readmodel.All()...)
	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 150, Customers: 20, Writers: 4, Seed: 11})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	require.NoError(t, d.Stop(ctx))
	before := dailySales(t, ctx, b)

	gate := newReplayGate(b.store, 0)
	d2, err := projections.NewDaemon(b.db.Pool, gate,
		[]projections.Projection{readmodel.Orders{}, readmodel.CustomerStats{}, dailySalesV2{}},
		projections.Config{Metrics: b.metrics, StatusInterval: 20 * time.Millisecond, RetiredGrace: time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d2.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d2.Stop(context.Background())) })
	r := d2.Runner("daily_sales")

	require.Eventually(t, func() bool {
		st := r.Status()
		return st.Status == projections.StatusRebuilding && st.Version == 1 && st.Rebuild != nil && st.Rebuild.Here && st.Rebuild.Version == 2
	}, 10*time.Second, 5*time.Millisecond, "%+v", r.Status())
	require.Equal(t, before, dailySales(t, ctx, b), "the active version serves while the new one is built")
	require.Less(t, testutil.ToFloat64(b.metrics.RebuildProgress.WithLabelValues("daily_sales")), 1.0)
	require.Equal(t, 1.0, testutil.ToFloat64(b.metrics.RebuildProgress.WithLabelValues("orders")))
	// Traffic meanwhile reaches the new version through the rebuild.
	_, err = simulate.Run(ctx, b.store, simulate.Config{Orders: 50, Customers: 20, Writers: 2, Seed: 12})
	require.NoError(t, err)

	gate.allow(-1)
	require.Eventually(t, func() bool {
		st := r.Status()
		return st.Status == projections.StatusLive && st.Version == 2 && st.Rebuild == nil
	}, 20*time.Second, 5*time.Millisecond, "%+v", r.Status())
	gen, version := activeGeneration(t, ctx, b, "daily_sales")
	require.Equal(t, []int{2, 2}, []int{gen, version})
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, b.db.Pool)
	require.Equal(t, 1.0, testutil.ToFloat64(b.metrics.RebuildProgress.WithLabelValues("daily_sales")))
	require.Eventually(t, func() bool { return !schemaExists(t, ctx, b, "sl_daily_sales_g1") }, 10*time.Second, 10*time.Millisecond,
		"the replaced generation's tables are dropped after the grace period")
	require.True(t, schemaExists(t, ctx, b, "sl_daily_sales_g2"))

	d3, err := projections.NewDaemon(b.db.Pool, b.store, []projections.Projection{readmodel.DailySales{}}, projections.Config{})
	require.NoError(t, err)
	require.ErrorIs(t, d3.Start(ctx), projections.ErrVersionChanged)
}

// lockedBuffer is a log sink safe for the goroutines of a daemon.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func checkpointOf(t *testing.T, ctx context.Context, b *bundle, name string, gen int) eventstore.Position {
	t.Helper()
	var commit, prepare int64
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT commit_position, prepare_position FROM sightline.checkpoints
		WHERE projection = $1 AND generation = $2`, name, gen).Scan(&commit, &prepare))
	return eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}
}

// TestRebuildIsRefusedWhileRunningAndResumesAfterItStops: one rebuild at a
// time; a build whose process stopped half way is resumed from its
// checkpoint by the next runner, in the same generation, and comes out
// exact.
func TestRebuildIsRefusedWhileRunningAndResumesAfterItStops(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	small, err := pgstore.New(b.db.Pool, pgstore.Config{ReadBatch: 40})
	require.NoError(t, err)
	t.Cleanup(small.Close)
	d := b.start(t, ctx, readmodel.All()...)
	_, err = simulate.Run(ctx, b.store, simulate.Config{Orders: 300, Customers: 30, Writers: 4, Seed: 21})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	require.NoError(t, d.Stop(ctx))

	rb, err := projections.RequestRebuild(ctx, b.db.Pool, readmodel.Orders{})
	require.NoError(t, err)
	require.Equal(t, projections.Rebuild{Projection: "orders", Generation: 2, Version: 1, Reason: projections.ReasonRequested, Created: true}, rb)

	// A builder that gets a few messages, then none: it stops half way.
	gate := newReplayGate(small, 3)
	cfg := projections.Config{RebuildBatchSize: 40}
	buildCtx, stopBuild := context.WithCancel(ctx)
	built := make(chan error, 1)
	go func() { built <- projections.RunRebuild(buildCtx, b.db.Pool, gate, readmodel.Orders{}, cfg, nil) }()
	require.Eventually(t, func() bool { return checkpointOf(t, ctx, b, "orders", 2).Commit > 0 }, 10*time.Second, 5*time.Millisecond)

	_, err = projections.RequestRebuild(ctx, b.db.Pool, readmodel.Orders{})
	require.ErrorIs(t, err, projections.ErrRebuildRunning)
	require.ErrorIs(t, projections.RunRebuild(ctx, b.db.Pool, b.store, readmodel.Orders{}, cfg, nil), projections.ErrRebuildRunning)
	st, err := projections.ReadRebuild(ctx, b.db.Pool, b.store, "orders", 2)
	require.NoError(t, err)
	require.True(t, st.Building)
	require.Greater(t, st.Progress, 0.0)
	require.Less(t, st.Progress, 1.0)

	stopBuild()
	require.ErrorIs(t, <-built, context.Canceled)
	stoppedAt := checkpointOf(t, ctx, b, "orders", 2)
	gen, _ := activeGeneration(t, ctx, b, "orders")
	require.Equal(t, 1, gen, "a build that stopped does not take over")

	// The next runner resumes it where it stopped.
	var logs lockedBuffer
	d2, err := projections.NewDaemon(b.db.Pool, b.store, readmodel.All(), projections.Config{
		Metrics: b.metrics, StatusInterval: 20 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	require.NoError(t, err)
	require.NoError(t, d2.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d2.Stop(context.Background())) })
	require.Eventually(t, func() bool { gen, _ := activeGeneration(t, ctx, b, "orders"); return gen == 2 }, 20*time.Second, 10*time.Millisecond, logs.String())
	require.Contains(t, logs.String(), fmt.Sprintf("msg=building projection=orders generation=2 version=1 from=%s", stoppedAt))
	require.Eventually(t, func() bool {
		st := d2.Runner("orders").Status()
		return st.Status == projections.StatusLive && st.Rebuild == nil
	}, 10*time.Second, 5*time.Millisecond)
	_, err = simulate.Run(ctx, b.store, simulate.Config{Orders: 30, Customers: 30, Writers: 2, Seed: 22})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, b.db.Pool)
	var indexes []string
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT array_agg(indexname ORDER BY indexname) FROM pg_indexes
		WHERE schemaname = 'sl_orders_g2' AND tablename = 'orders'`).Scan(&indexes))
	require.Equal(t, []string{"orders_customer_id", "orders_pkey", "orders_status_id"}, indexes, "indexes built after the bulk load")
}

// TestVerifyReportsExactlyTheRowsThatDrifted: verify finds nothing on a
// correct read model, even while it projects live traffic, and names
// exactly the rows edited by hand.
func TestVerifyReportsExactlyTheRowsThatDrifted(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	b.start(t, ctx, readmodel.All()...)
	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 200, Customers: 20, Writers: 4, Seed: 31})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)

	// Under traffic: both sides are compared at one position.
	traffic, stopTraffic := context.WithCancel(ctx)
	trafficDone := make(chan error, 1)
	go func() {
		_, err := simulate.Run(traffic, b.store, simulate.Config{Orders: 100_000, Customers: 20, Writers: 2, Rate: 400, Seed: 32})
		trafficDone <- err
	}()
	for _, p := range readmodel.All() {
		report, err := projections.Verify(ctx, b.db.Pool, b.store, p, 5, projections.Config{})
		require.NoError(t, err)
		require.Zero(t, report.Drifted, "%s: %+v", p.Name(), report.Drift)
		require.Positive(t, report.Rows[p.Tables()[0]])
	}
	stopTraffic()
	<-trafficDone
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)

	var id string
	var paid int64
	require.NoError(t, b.db.Pool.QueryRow(ctx, `UPDATE readmodel.orders SET paid = paid + 1
		WHERE id = (SELECT min(id) FROM readmodel.orders) RETURNING id, paid - 1`).Scan(&id, &paid))
	report, err := projections.Verify(ctx, b.db.Pool, b.store, readmodel.Orders{}, 5, projections.Config{})
	require.NoError(t, err)
	require.EqualValues(t, 1, report.Drifted)
	require.Len(t, report.Drift, 1)
	drift := report.Drift[0]
	require.Equal(t, projections.DriftDiffers, drift.Kind)
	require.Equal(t, map[string]any{"id": id}, drift.Key)
	require.Equal(t, []string{"paid"}, drift.Columns)
	require.EqualValues(t, paid, drift.Replay["paid"])
	require.EqualValues(t, paid+1, drift.Live["paid"])

	// Keys first: a row missing and a row extra, then values.
	_, err = b.db.Pool.Exec(ctx, `DELETE FROM readmodel.customer_stats WHERE customer_id = (SELECT min(customer_id) FROM readmodel.customer_stats)`)
	require.NoError(t, err)
	_, err = b.db.Pool.Exec(ctx, `INSERT INTO readmodel.customer_stats (customer_id, orders, lifetime_total, cancelled) VALUES ('nobody', 1, 1, 0)`)
	require.NoError(t, err)
	_, err = b.db.Pool.Exec(ctx, `UPDATE readmodel.customer_stats SET cancelled = cancelled + 1 WHERE customer_id = (SELECT max(customer_id) FROM readmodel.customer_stats WHERE customer_id <> 'nobody')`)
	require.NoError(t, err)
	report, err = projections.Verify(ctx, b.db.Pool, b.store, readmodel.CustomerStats{}, 2, projections.Config{})
	require.NoError(t, err)
	require.EqualValues(t, 3, report.Drifted)
	require.Len(t, report.Drift, 2, "limited to 2")
	kinds := []string{report.Drift[0].Kind, report.Drift[1].Kind}
	require.ElementsMatch(t, []string{projections.DriftMissing, projections.DriftExtra}, kinds)

	var scratch int
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sl\_%\_g%' AND nspname NOT LIKE '%\_g1'`).Scan(&scratch))
	require.Zero(t, scratch, "verify drops its scratch copies")
}

// poisonedTally runs tally over two streams, one of which holds an event
// that always fails, and returns the projection, its runner and the parked
// event with the one held behind it.
func poisonedTally(t *testing.T, ctx context.Context, b *bundle) (*tally, *projections.Runner, []projections.ParkedEvent) {
	t.Helper()
	appendOrder(t, ctx, b.store, "t-a", tallyEvent(1, ""), tallyEvent(2, "permanent"), tallyEvent(4, ""))
	appendOrder(t, ctx, b.store, "t-b", tallyEvent(1, ""), tallyEvent(2, ""))
	p := newTally("permanent")
	r := b.startTally(t, ctx, p)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	list := parked(t, ctx, b)
	require.Len(t, list, 2)
	return p, r, list
}

// TestSkipsOutliveARebuild: an event an operator skipped stays skipped when
// the projection is rebuilt or verified, instead of holding its stream
// again in the new generation.
func TestSkipsOutliveARebuild(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	p, r, list := poisonedTally(t, ctx, b)
	_, err := r.Skip(ctx, list[0].ID)
	require.NoError(t, err)
	want := map[string]tallyRow{"t-a": {2, 5, 2}, "t-b": {2, 3, 1}}
	require.Equal(t, want, tallies(t, ctx, b))

	report, err := projections.Verify(ctx, b.db.Pool, b.store, p, 5, projections.Config{})
	require.NoError(t, err)
	require.Zero(t, report.Drifted, "%+v", report.Drift)

	rb, err := r.Rebuild(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool { gen, _ := activeGeneration(t, ctx, b, "tally"); return gen == rb.Generation }, 20*time.Second, 10*time.Millisecond)
	require.Equal(t, want, tallies(t, ctx, b))
	require.Empty(t, parked(t, ctx, b), "nothing holds a stream in the new generation")
	var state, reason string
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT state, error FROM sightline.parked WHERE projection = 'tally' AND generation = $1`,
		rb.Generation).Scan(&state, &reason))
	require.Equal(t, projections.ParkedStateSkipped, state)
	require.Equal(t, "skipped, as it was skipped in generation 1", reason)
}

// TestDecisionsDuringARebuildCarryOver: an event the build parked, then an
// operator skipped in the active generation while the build went on, is
// skipped in the new generation too when it takes over.
func TestDecisionsDuringARebuildCarryOver(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	p, r, active := poisonedTally(t, ctx, b)

	// The build gets the first message only (two events, the poison one
	// among them), so it parks the event and is not caught up.
	small, err := pgstore.New(b.db.Pool, pgstore.Config{ReadBatch: 2})
	require.NoError(t, err)
	t.Cleanup(small.Close)
	gate := newReplayGate(small, 1)
	built := make(chan error, 1)
	var rb projections.Rebuild
	started := make(chan struct{})
	go func() {
		built <- projections.RunRebuild(ctx, b.db.Pool, gate, p, projections.Config{MaxAttempts: 1}, func(r projections.Rebuild) { rb = r; close(started) })
	}()
	<-started
	require.Eventually(t, func() bool {
		var n int
		return b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM sightline.parked WHERE projection = 'tally' AND generation = $1 AND state = 'parked'`,
			rb.Generation).Scan(&n) == nil && n == 1
	}, 10*time.Second, 5*time.Millisecond)

	_, err = r.Skip(ctx, active[0].ID)
	require.NoError(t, err)
	gate.allow(-1)
	require.NoError(t, <-built)
	want := map[string]tallyRow{"t-a": {2, 5, 2}, "t-b": {2, 3, 1}}
	require.Eventually(t, func() bool { return assert.ObjectsAreEqual(want, tallies(t, ctx, b)) }, 10*time.Second, 10*time.Millisecond, "%v", tallies(t, ctx, b))
	require.Empty(t, parked(t, ctx, b), "nothing holds a stream in the new generation")
}

// TestTakeOverWaitsForLongReaders: a transaction that has read a view for
// long keeps the take-over waiting, rather than have it queue every reader
// behind its lock or freeze the active generation; the active generation
// projects meanwhile, and the rebuild takes over once the reader is done.
func TestTakeOverWaitsForLongReaders(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.start(t, ctx, readmodel.DailySales{})
	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 50, Customers: 10, Writers: 2, Seed: 51})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "daily_sales")

	report, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer report.Rollback(ctx) //nolint:errcheck // read only
	var n int
	require.NoError(t, report.QueryRow(ctx, `SELECT count(*) FROM readmodel.daily_sales`).Scan(&n))
	time.Sleep(1100 * time.Millisecond) // a long report

	r := d.Runner("daily_sales")
	rb, err := r.Rebuild(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st := r.Status().Rebuild
		return st != nil && strings.Contains(st.LastError, "waiting for 1 transactions that have read readmodel.daily_sales")
	}, 10*time.Second, 10*time.Millisecond, "%+v", r.Status().Rebuild)
	_, err = simulate.Run(ctx, b.store, simulate.Config{Orders: 20, Customers: 10, Writers: 2, Seed: 52})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "daily_sales") // the active generation projects meanwhile
	gen, _ := activeGeneration(t, ctx, b, "daily_sales")
	require.Equal(t, 1, gen)

	require.NoError(t, report.Rollback(ctx))
	require.Eventually(t, func() bool { gen, _ := activeGeneration(t, ctx, b, "daily_sales"); return gen == rb.Generation }, 20*time.Second, 10*time.Millisecond)
}

// slowOrders is the orders projection taking its time over each batch, so
// that a rebuild's reader runs ahead of what it has applied.
type slowOrders struct{ readmodel.Orders }

func (p slowOrders) Apply(ctx context.Context, b *projections.Batch) error {
	time.Sleep(5 * time.Millisecond)
	return p.Orders.Apply(ctx, b)
}

// TestRebuildTakesOverOnceItHasAppliedWhatItRead: a rebuild whose reader
// has reached the head takes over only once it has applied as far, even
// when the active generation is further behind; 'sightline rebuild --wait'
// with no projector running would otherwise leave the read model short of
// the head it reported.
func TestRebuildTakesOverOnceItHasAppliedWhatItRead(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	head := registeredBehind(t, ctx, b, 23)

	small, err := pgstore.New(b.db.Pool, pgstore.Config{ReadBatch: 20})
	require.NoError(t, err)
	t.Cleanup(small.Close)
	_, err = projections.RequestRebuild(ctx, b.db.Pool, readmodel.Orders{})
	require.NoError(t, err)
	require.NoError(t, projections.RunRebuild(ctx, b.db.Pool, small, slowOrders{}, projections.Config{RebuildBatchSize: 20}, nil))
	gen, _ := activeGeneration(t, ctx, b, "orders")
	require.Equal(t, 2, gen)
	require.Equal(t, head.Position, checkpointOf(t, ctx, b, "orders", 2))
}

// registeredBehind registers the example projections without running
// them, so that their active generations stay at the start, appends
// simulated traffic from seed behind them, and returns the store's head.
func registeredBehind(t *testing.T, ctx context.Context, b *bundle, seed uint64) eventstore.Head {
	t.Helper()
	d, err := projections.NewDaemon(b.db.Pool, storetest.Silent{Store: b.store}, readmodel.All(), projections.Config{})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	require.NoError(t, d.Stop(ctx))
	_, err = simulate.Run(ctx, b.store, simulate.Config{Orders: 150, Customers: 30, Writers: 4, Seed: seed})
	require.NoError(t, err)
	head, err := b.store.Head(ctx)
	require.NoError(t, err)
	return head
}

// TestRebuildOnAPoolOfOneConnection rebuilds with a pool that has one
// connection for the builder's batches: the batch left in flight holds it,
// so the next must wait for that one's answer to get it, rather than for
// a connection that never comes.
func TestRebuildOnAPoolOfOneConnection(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	head := registeredBehind(t, ctx, b, 24)

	cfg, err := pgxpool.ParseConfig(b.db.URL)
	require.NoError(t, err)
	cfg.MaxConns = 1
	one, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(one.Close)
	small, err := pgstore.New(b.db.Pool, pgstore.Config{ReadBatch: 20}) // the reads on a pool of their own
	require.NoError(t, err)
	t.Cleanup(small.Close)
	require.NoError(t, projections.RunRebuild(ctx, one, small, readmodel.Orders{}, projections.Config{RebuildBatchSize: 20}, nil))
	gen, _ := activeGeneration(t, ctx, b, "orders")
	require.Equal(t, 2, gen)
	require.Equal(t, head.Position, checkpointOf(t, ctx, b, "orders", 2))
	diff, err := readmodeltest.DiffOf(ctx, b.db.Pool, 5, "orders")
	require.NoError(t, err)
	require.Empty(t, diff)
}

// TestBuilderReadsRevisionsOnceItsGenerationIsNoLongerBuilt: a builder
// remembers the revisions it wrote rather than reading them, which holds
// only while nothing else writes its generation. Here the generation is
// taken over under it (as by a builder that replaced it after it lost its
// build lock) and two of a stream's events are recorded as applied by
// someone else; the builder must then read the stream's revision and skip
// them, not apply them again.
func TestBuilderReadsRevisionsOnceItsGenerationIsNoLongerBuilt(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	tl := newTally()
	d := b.start(t, ctx, tl)
	var positions []eventstore.Position
	for i := range 6 {
		res := appendOrder(t, ctx, b.store, "t-a", storetest.Event("Added", fmt.Sprintf(`{"n":%d}`, 1<<i)))
		positions = append(positions, res.Position)
	}
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "tally")
	require.NoError(t, d.Stop(ctx))

	// One event per message, three let through at first.
	small, err := pgstore.New(b.db.Pool, pgstore.Config{ReadBatch: 1})
	require.NoError(t, err)
	defer small.Close()
	gate := newReplayGate(small, 3)
	built := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		built <- projections.RunRebuild(ctx, b.db.Pool, gate, tl, projections.Config{RebuildBatchSize: 10}, func(projections.Rebuild) { close(started) })
	}()
	select {
	case <-started:
	case err := <-built:
		t.Fatalf("the rebuild ended before it began: %v", err)
	}
	require.Eventually(t, func() bool { return !checkpointOf(t, ctx, b, "tally", 2).Before(positions[2]) }, 10*time.Second, 5*time.Millisecond)

	// What a take-over by another builder writes, then an operator's
	// retry of revisions 3 and 4 as far as the revisions go.
	_, err = b.db.Pool.Exec(ctx, `
		UPDATE sightline.generations SET state = 'retired', retired_at = now(), drop_after = now() + interval '1 hour'
			WHERE projection = 'tally' AND generation = 1;
		UPDATE sightline.checkpoints SET superseded = true WHERE projection = 'tally' AND generation = 1;
		UPDATE sightline.generations SET state = 'active', activated_at = now() WHERE projection = 'tally' AND generation = 2;
		UPDATE sightline.projections SET generation = 2 WHERE name = 'tally';
		UPDATE sl_tally_g2._stream_revisions SET revision = 4 WHERE stream_id = 't-a'`)
	require.NoError(t, err)
	gate.allow(-1)
	require.Eventually(t, func() bool { return !checkpointOf(t, ctx, b, "tally", 2).Before(positions[5]) }, 10*time.Second, 5*time.Millisecond)

	var events, sum int64
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT events, sum FROM sl_tally_g2.tally WHERE stream_id = 't-a'`).Scan(&events, &sum))
	require.Equal(t, []int64{4, 1 + 2 + 4 + 32}, []int64{events, sum}, "revisions 0-2 and 5 applied, 3 and 4 skipped")
	<-built // whatever the take-over of a generation already active makes of it
}
