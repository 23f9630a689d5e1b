package projections_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

type bundle struct {
	db      *testdb.DB
	store   *pgstore.Store
	metrics *projections.Metrics
}

func setup(t *testing.T) (context.Context, *bundle) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	db := testdb.New(t)
	store, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	return ctx, &bundle{db: db, store: store, metrics: projections.NewMetrics(prometheus.NewRegistry())}
}

func (b *bundle) start(t *testing.T, ctx context.Context, ps ...projections.Projection) *projections.Daemon {
	t.Helper()
	d, err := projections.NewDaemon(b.db.Pool, b.store, ps, projections.Config{Metrics: b.metrics, StatusInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	return d
}

func appendOrder(t *testing.T, ctx context.Context, s eventstore.Store, stream string, events ...eventstore.EventData) eventstore.AppendResult {
	t.Helper()
	res, err := s.Append(ctx, stream, eventstore.Any, events...)
	require.NoError(t, err)
	return res
}

// TestUnfillableGapIsRecordedAndPassed removes a revision from the store
// (as truncation or deletion would) and proves the projector records the
// gap, counts the missing event and goes on with the stream.
func TestUnfillableGapIsRecordedAndPassed(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	appendOrder(t, ctx, b.store, "order-a",
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":500}`),
		storetest.Event(readmodel.TypeOrderPaid, `{"amount":500}`),
		storetest.Event(readmodel.TypeOrderShipped, `{"carrier":"DHL"}`))
	_, err := b.db.Pool.Exec(ctx, `DELETE FROM sightline.event_log WHERE stream_id = 'order-a' AND revision = 1`)
	require.NoError(t, err)

	b.start(t, ctx, readmodel.Orders{})
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "orders")

	var status string
	var paid, rev int64
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT status, paid, revision FROM readmodel.orders WHERE id = 'a'`).Scan(&status, &paid, &rev))
	require.Equal(t, "shipped", status)
	require.Zero(t, paid, "the payment is gone from the store")
	require.Equal(t, int64(2), rev)
	var from, to int64
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT from_revision, to_revision FROM sightline.gaps WHERE projection = 'orders' AND stream_id = 'order-a'`).Scan(&from, &to))
	require.Equal(t, [2]int64{1, 1}, [2]int64{from, to})
	require.Equal(t, 1.0, testutil.ToFloat64(b.metrics.EventsSkipped.WithLabelValues("orders", projections.SkipGapUnfilled)))
}

// idle chooses streams that never appear.
type idle struct{}

func (idle) Name() string     { return "idle" }
func (idle) Version() int     { return 1 }
func (idle) Tables() []string { return nil }
func (idle) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"nothing-"}}
}
func (idle) Setup(context.Context, pgx.Tx, string) error     { return nil }
func (idle) Apply(context.Context, *projections.Batch) error { return nil }

// TestFilterMatchingNothingReachesTheHead proves a projection whose filter
// chooses none of the events still advances its checkpoint to the head and
// reports lag 0, live.
func TestFilterMatchingNothingReachesTheHead(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.start(t, ctx, idle{})
	var last eventstore.AppendResult
	for range 20 {
		last = appendOrder(t, ctx, b.store, "order-x", storetest.Event("OrderPlaced", `{}`))
	}
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "idle")
	r := d.Runner("idle")
	require.Eventually(t, func() bool {
		st := r.Status()
		return !st.Position.Before(last.Position) && st.Lag == 0 && st.Status == projections.StatusLive
	}, 10*time.Second, 10*time.Millisecond, "status %+v", r.Status())
	require.Zero(t, testutil.ToFloat64(b.metrics.EventsApplied.WithLabelValues("idle")))
}

// TestTwoProjectorsNeverApplyTwice runs the example projections in two
// daemons at once, as two processes would, and proves the read models stay
// exact: the checkpoint row lock and check keep their batches apart.
func TestTwoProjectorsNeverApplyTwice(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	other, err := pgstore.New(b.db.Pool, pgstore.Config{})
	require.NoError(t, err)
	defer other.Close()
	b.start(t, ctx, readmodel.All()...)
	d2, err := projections.NewDaemon(b.db.Pool, other, readmodel.All(), projections.Config{BatchSize: 7})
	require.NoError(t, err)
	require.NoError(t, d2.Start(ctx))
	defer d2.Stop(context.Background()) //nolint:errcheck

	_, err = simulate.Run(ctx, b.store, simulate.Config{Orders: 300, Customers: 30, Writers: 6, Seed: 3})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "orders", "customer_stats", "daily_sales")
	readmodeltest.RequireExact(t, ctx, b.db.Pool)
}

// TestBatchFindsCheckpointMovedInOneRoundTrip: a live batch sent in one
// round trip, with its writes and COMMIT behind the checks, finds the
// checkpoint moved by another process as a batch that reads first does:
// it writes nothing and the runner goes on from the stored checkpoint.
func TestBatchFindsCheckpointMovedInOneRoundTrip(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	gate := &gatedStore{Store: b.store, open: make(chan struct{})}
	close(gate.open)
	d, err := projections.NewDaemon(b.db.Pool, gate, []projections.Projection{readmodel.Orders{}}, projections.Config{StatusInterval: time.Hour})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(context.Background()) //nolint:errcheck
	r := d.Runner("orders")
	placed := storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c","items":[],"total":1}`)

	require.NoError(t, r.WaitFor(ctx, appendOrder(t, ctx, b.store, "order-1", placed).Position))
	gate.hold()
	moved := appendOrder(t, ctx, b.store, "order-2", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c","items":[],"total":2}`)).Position
	// Another process has applied up to order-2's position (the row it
	// wrote is left out, so that only the checkpoint tells).
	_, err = b.db.Pool.Exec(ctx, `UPDATE sightline.checkpoints SET commit_position = $1, prepare_position = $2
		WHERE projection = 'orders' AND generation = (SELECT generation FROM sightline.projections WHERE name = 'orders')`,
		int64(moved.Commit), int64(moved.Prepare))
	require.NoError(t, err)
	gate.release()
	last := appendOrder(t, ctx, b.store, "order-3", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c","items":[],"total":3}`)).Position
	require.NoError(t, r.WaitFor(ctx, last))

	rows, err := b.db.Pool.Query(ctx, `SELECT id FROM readmodel.orders ORDER BY id`)
	require.NoError(t, err)
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Equal(t, []string{"1", "3"}, ids, "order-2 was the other process's to apply")
}

func TestStopBeforeStartReturns(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	r, err := projections.NewRunner(b.db.Pool, b.store, readmodel.Orders{}, projections.Config{})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, r.Stop(ctx))
	require.Error(t, r.Start(ctx), "a stopped runner does not start")
	require.NoError(t, r.Stop(ctx), "twice is fine")
}

// TestLagWhileBehind: a projection that has caught up and then receives
// nothing while the store moves on (its deliveries are held) shows lag
// above zero and a status that is not live; once deliveries resume, lag
// returns to zero.
func TestLagWhileBehind(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	gate := &gatedStore{Store: b.store, open: make(chan struct{})}
	close(gate.open)
	d, err := projections.NewDaemon(b.db.Pool, gate, []projections.Projection{readmodel.Orders{}},
		projections.Config{StatusInterval: 10 * time.Millisecond, LiveLag: 10 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(context.Background()) //nolint:errcheck
	r := d.Runner("orders")
	live := func() bool { st := r.Status(); return st.Lag == 0 && st.Status == projections.StatusLive }

	appendOrder(t, ctx, b.store, "order-1", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c","items":[],"total":1}`))
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "orders")
	require.Eventually(t, live, 10*time.Second, 5*time.Millisecond, "%+v", r.Status())

	gate.hold()
	appendOrder(t, ctx, b.store, "order-2", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c","items":[],"total":1}`))
	require.Eventually(t, func() bool {
		st := r.Status()
		return st.Lag > 20*time.Millisecond && st.Status == projections.StatusCatchingUp
	}, 10*time.Second, 5*time.Millisecond, "%+v", r.Status())
	gate.release()
	require.Eventually(t, live, 10*time.Second, 5*time.Millisecond, "%+v", r.Status())
}

// gatedStore holds back its subscriptions' messages while held.
type gatedStore struct {
	*pgstore.Store
	mu   sync.Mutex
	open chan struct{}
}

func (g *gatedStore) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.open = make(chan struct{})
}

func (g *gatedStore) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.open)
}

func (g *gatedStore) Subscribe(ctx context.Context, from eventstore.Position, f eventstore.Filter) (eventstore.Subscription, error) {
	sub, err := g.Store.Subscribe(ctx, from, f)
	return gatedSub{Subscription: sub, g: g}, err
}

type gatedSub struct {
	eventstore.Subscription
	g *gatedStore
}

func (s gatedSub) Recv(ctx context.Context) (eventstore.Message, error) {
	msg, err := s.Subscription.Recv(ctx)
	s.g.mu.Lock()
	open := s.g.open
	s.g.mu.Unlock()
	select {
	case <-open:
	case <-ctx.Done():
		return eventstore.Message{}, ctx.Err()
	}
	return msg, err
}

// flaky fails every batch as a lost connection would, until healed.
type flaky struct {
	readmodel.DailySales
	healed atomic.Bool
}

func (f *flaky) Name() string { return "flaky" }
func (f *flaky) Apply(ctx context.Context, b *projections.Batch) error {
	if !f.healed.Load() {
		return fmt.Errorf("look up: %w", &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"})
	}
	return f.DailySales.Apply(ctx, b)
}

// TestStalledWhileBatchesFailTransiently: a projection whose batches keep
// failing on the infrastructure is stalled, says why, applies nothing,
// parks nothing, and recovers on its own once the batches succeed.
func TestStalledWhileBatchesFailTransiently(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	p := &flaky{}
	d := b.start(t, ctx, p)
	appendOrder(t, ctx, b.store, "order-1", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c","items":[],"total":1}`))
	r := d.Runner("flaky")
	require.Eventually(t, func() bool {
		st := r.Status()
		return st.Status == projections.StatusStalled && strings.Contains(st.LastError, "administrator command") && st.Lag > 0
	}, 10*time.Second, 10*time.Millisecond, "%+v", r.Status())
	var rows int
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM sl_flaky_g1.daily_sales`).Scan(&rows))
	require.Zero(t, rows, "nothing applied while failing")
	require.Positive(t, testutil.ToFloat64(b.metrics.BatchRetries.WithLabelValues("flaky")))
	p.healed.Store(true)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "flaky")
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM sightline.parked`).Scan(&rows))
	require.Zero(t, rows, "a transient failure parks nothing")
	require.Equal(t, 1, int(testutil.ToFloat64(b.metrics.EventsApplied.WithLabelValues("flaky"))))
	require.Eventually(t, func() bool {
		st := r.Status()
		return st.Status == projections.StatusLive && st.LastError == ""
	}, 10*time.Second, 10*time.Millisecond, "%+v", r.Status())
}

// TestLagStaysSmallWhileKeepingUp: under steady traffic the projector is
// always a few events behind the head, yet keeps up; its lag must stay the
// age of what it has not applied, not grow with the time it has been busy.
func TestLagStaysSmallWhileKeepingUp(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.start(t, ctx, readmodel.Orders{})
	r := d.Runner("orders")
	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 400, Customers: 20, Writers: 2, Rate: 300, Seed: 5})
		traffic <- err
	}()
	worst := time.Duration(0)
	for done := false; !done; {
		select {
		case err := <-traffic:
			require.NoError(t, err)
			done = true
		case <-time.After(20 * time.Millisecond):
			head, err := b.store.Head(ctx)
			require.NoError(t, err)
			worst = max(worst, r.StatusAt(head).Lag)
		}
	}
	// The traffic lasts about five seconds; a lag that grew with it would
	// pass two seconds well before the end.
	require.Less(t, worst, 2*time.Second, "worst lag while keeping up")
}

// A projection keeping up with live traffic on a young store analyzes its
// tables as they grow, in the background, instead of running on plans made
// while they were empty until autovacuum comes round.
func TestLiveProjectionAnalyzesWhileYoung(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.start(t, ctx, readmodel.Orders{})
	r := d.Runner("orders")
	require.Eventually(t, func() bool { return r.Status().Status == projections.StatusLive }, 10*time.Second, 10*time.Millisecond)

	res, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 500, Customers: 20, Writers: 4, Seed: 9})
	require.NoError(t, err)
	require.Greater(t, res.Events, int64(1000))
	head, err := b.store.Head(ctx)
	require.NoError(t, err)
	require.NoError(t, r.WaitFor(ctx, head.Position))
	require.Eventually(t, func() bool {
		var analyzes int64
		require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT coalesce(sum(analyze_count), 0) FROM pg_stat_user_tables
			WHERE schemaname LIKE 'sl\_orders\_g%'`).Scan(&analyzes))
		return analyzes > 0
	}, 20*time.Second, 100*time.Millisecond, "the live projection's tables were analyzed")
}
