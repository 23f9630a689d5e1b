package projections_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

const testLease = 600 * time.Millisecond

// startShared starts a daemon of the example projections as a process of
// its own (its own id and metrics) on b's database.
func (b *bundle) startShared(t *testing.T, ctx context.Context, id string) (*projections.Daemon, *projections.Metrics) {
	t.Helper()
	return b.startProcess(t, ctx, id, readmodel.All()...)
}

// startProcess starts a daemon of ps as a process of its own (its own id,
// metrics and pool, as a process has) on b's database.
func (b *bundle) startProcess(t *testing.T, ctx context.Context, id string, ps ...projections.Projection) (*projections.Daemon, *projections.Metrics) {
	t.Helper()
	pool, err := pgxpool.NewWithConfig(ctx, b.db.Pool.Config().Copy())
	require.NoError(t, err)
	t.Cleanup(pool.Close) // after the daemon's Stop, registered below
	m := projections.NewMetrics(prometheus.NewRegistry())
	d, err := projections.NewDaemon(pool, b.store, ps, projections.Config{Metrics: m, StatusInterval: 20 * time.Millisecond,
		ProcessID: id, Lease: testLease})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { _ = d.Stop(context.Background()) })
	return d, m
}

func owned(d *projections.Daemon) (n int) {
	for _, r := range d.Runners() {
		if r.Owned() {
			n++
		}
	}
	return n
}

// TestProcessesShareTheProjections: two processes split the three
// projections, each applied by one; a third joining takes its share
// without a restart; one stopping hands its share over at once; the read
// models are exact throughout, and status says who applies what.
func TestProcessesShareTheProjections(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	a, ma := b.startShared(t, ctx, "proc-a")
	require.Equal(t, 3, owned(a), "alone, it holds them all")
	bb, _ := b.startShared(t, ctx, "proc-b")
	require.Eventually(t, func() bool { return owned(a) == 2 && owned(bb) == 1 }, 10*time.Second, 10*time.Millisecond,
		"a joining process takes its share: a %d, b %d", owned(a), owned(bb))

	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 300, Customers: 30, Writers: 4, Seed: 3})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, b.db.Pool)
	for _, r := range a.Runners() {
		st := r.Status()
		require.NotNil(t, st.Owner, st.Name)
		other := bb.Runner(st.Name).Status()
		require.Equal(t, st.Owner.ID, other.Owner.ID, "both say the same owner of %s", st.Name)
		require.NotEqual(t, st.Owned, other.Owned, "one of them applies %s", st.Name)
		require.Equal(t, st.Position, other.Position, "the other follows %s's checkpoint", st.Name)
	}
	require.Equal(t, 2.0, testutil.ToFloat64(ma.Owned.WithLabelValues("orders", "0"))+testutil.ToFloat64(ma.Owned.WithLabelValues("customer_stats", "0"))+
		testutil.ToFloat64(ma.Owned.WithLabelValues("daily_sales", "0")))

	c, _ := b.startShared(t, ctx, "proc-c")
	require.Eventually(t, func() bool { return owned(a) == 1 && owned(bb) == 1 && owned(c) == 1 }, 10*time.Second, 10*time.Millisecond)

	stopped := time.Now()
	require.NoError(t, a.Stop(ctx))
	require.Eventually(t, func() bool { return owned(bb)+owned(c) == 3 }, 5*time.Second, 5*time.Millisecond)
	handover := time.Since(stopped)
	t.Logf("handover after a stop: %s", handover)
	require.Less(t, handover, time.Second, "a process that stops hands over at once")

	_, err = simulate.Run(ctx, b.store, simulate.Config{Orders: 200, Customers: 30, Writers: 4, Seed: 4})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, b.db.Pool)
}

// TestAFencedOffOwnerCommitsNothing: a process that stops renewing (as a
// paused one does) while its runners go on loses its projections after
// the lease; another takes them up, and from then on the first one's
// batches are refused by the fence: nothing is applied twice.
func TestAFencedOffOwnerCommitsNothing(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	a, _ := b.startShared(t, ctx, "proc-a")
	bb, _ := b.startShared(t, ctx, "proc-b")
	require.Eventually(t, func() bool { return owned(a)+owned(bb) == 3 && owned(bb) > 0 }, 10*time.Second, 10*time.Millisecond)

	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 400, Customers: 30, Writers: 4, Rate: 1500, Seed: 5})
		traffic <- err
	}()
	time.Sleep(200 * time.Millisecond)
	a.PauseOwnership()
	paused := time.Now()
	require.Eventually(t, func() bool { return owned(bb) == 3 }, 10*time.Second, 5*time.Millisecond, "b takes a's projections after the lease")
	t.Logf("takeover %s after the last renewal could have been", time.Since(paused))
	require.NoError(t, <-traffic)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, b.db.Pool)
	require.Eventually(t, func() bool { return owned(a) == 0 }, 10*time.Second, 5*time.Millisecond,
		"a's runners let go once the fence refused them")
}

// TestServeOnlyFollowsByNotification: a process that only serves holds
// nothing, yet knows who applies each projection and follows its
// checkpoint as it commits, woken by notifications: its status ticks are
// an hour apart here, so nothing else could wake it.
func TestServeOnlyFollowsByNotification(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	a, _ := b.startShared(t, ctx, "proc-a")
	s, err := projections.NewDaemon(b.db.Pool, b.store, readmodel.All(), projections.Config{StatusInterval: time.Hour,
		ProcessID: "serve-only", Lease: testLease, ServeOnly: true})
	require.NoError(t, err)
	require.NoError(t, s.Start(ctx))
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	time.Sleep(3 * testLease) // a learns that it is followed
	require.Equal(t, 0, owned(s))
	require.Equal(t, 3, owned(a))

	for i := range 5 {
		res := appendOrder(t, ctx, b.store, fmt.Sprintf("order-n%d", i), storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":5}`))
		waitCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		start := time.Now()
		for _, r := range s.Runners() {
			require.NoError(t, r.WaitFor(waitCtx, res.Position), "%s on the serve-only process", r.Name())
		}
		cancel()
		t.Logf("followed in %s", time.Since(start))
	}
	st := s.Runner("orders").Status()
	require.False(t, st.Owned)
	require.NotNil(t, st.Owner)
	require.Equal(t, "proc-a", st.Owner.ID)
}

// TestFollowerTakesUpARebuiltGeneration: after a rebuild swaps in a new
// generation on the process that applies it, a serve-only process reads
// that generation, and follows its checkpoint.
func TestFollowerTakesUpARebuiltGeneration(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	a, _ := b.startShared(t, ctx, "proc-a")
	s, err := projections.NewDaemon(b.db.Pool, b.store, readmodel.All(), projections.Config{StatusInterval: 20 * time.Millisecond,
		ProcessID: "serve-only", Lease: testLease, ServeOnly: true})
	require.NoError(t, err)
	require.NoError(t, s.Start(ctx))
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	appendOrder(t, ctx, b.store, "order-r1", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":5}`))
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	require.Equal(t, 1, s.Runner("orders").Generation())

	_, err = a.Runner("orders").Rebuild(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return a.Runner("orders").Generation() == 2 }, 30*time.Second, 10*time.Millisecond, "the rebuild takes over")
	require.Eventually(t, func() bool { return s.Runner("orders").Generation() == 2 }, 10*time.Second, 10*time.Millisecond, "the follower reads it")
	res := appendOrder(t, ctx, b.store, "order-r2", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":5}`))
	waitCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, s.Runner("orders").WaitFor(waitCtx, res.Position))
}

// TestProcessesRunningDifferentProjections: a process that runs a
// projection the others do not (a rolling upgrade that adds one) applies
// it, whatever its share of the others; every projection is applied by one
// process, and the read models are exact.
func TestProcessesRunningDifferentProjections(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	start := func(id string, ps ...projections.Projection) *projections.Daemon {
		d, _ := b.startProcess(t, ctx, id, ps...)
		return d
	}
	old1 := start("proc-1", readmodel.Orders{}, readmodel.CustomerStats{})
	old2 := start("proc-2", readmodel.Orders{}, readmodel.CustomerStats{})
	require.Eventually(t, func() bool { return owned(old1) == 1 && owned(old2) == 1 }, 10*time.Second, 10*time.Millisecond)
	upgraded := start("proc-3", readmodel.All()...)
	require.Eventually(t, func() bool {
		return upgraded.Runner("daily_sales").Owned() && owned(old1)+owned(old2)+owned(upgraded) == 3
	}, 10*time.Second, 10*time.Millisecond, "old %d+%d, upgraded %d", owned(old1), owned(old2), owned(upgraded))

	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 200, Customers: 20, Writers: 4, Seed: 9})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, b.db.Pool)
}

// TestABatchAtAStaleEpochIsRefused isolates the fence: the projection is
// taken over behind the back of a process that goes on as if it held it
// (its rounds stopped), with its checkpoint where it left it, so that only
// the epoch can stop its batch. It commits nothing.
func TestABatchAtAStaleEpochIsRefused(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	a, _ := b.startShared(t, ctx, "proc-a")
	require.Equal(t, 3, owned(a))
	first := appendOrder(t, ctx, b.store, "order-1", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":1}`))
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, a.Runner("orders").WaitFor(wait, first.Position))

	a.PauseOwnership()
	_, err := b.db.Pool.Exec(ctx, `INSERT INTO sightline.processes (id, host, pid) VALUES ('proc-b', 'elsewhere', 1)`)
	require.NoError(t, err)
	_, err = b.db.Pool.Exec(ctx, `UPDATE sightline.owners SET owner = 'proc-b', epoch = epoch + 1, since = now() WHERE projection = 'orders'`)
	require.NoError(t, err)
	require.True(t, a.Runner("orders").Owned(), "a does not know yet")

	appendOrder(t, ctx, b.store, "order-1", storetest.Event(readmodel.TypeOrderPaid, `{"amount":1}`))
	require.Eventually(t, func() bool { return !a.Runner("orders").Owned() }, 10*time.Second, 5*time.Millisecond,
		"the fence refuses a's batch, and a lets the projection go")
	var paid int64
	var commit int64
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT paid, (SELECT commit_position FROM sightline.checkpoints WHERE projection = 'orders')
		FROM readmodel.orders WHERE id = '1'`).Scan(&paid, &commit))
	require.Zero(t, paid, "nothing of a's batch at the stale epoch is committed")
	require.Equal(t, int64(first.Position.Commit), commit, "nor its checkpoint")
}

// TestANewerVersionTakesOverAcrossProcesses: a rolling upgrade. A process
// with a newer version of a projection builds it while an older process
// applies the old one; once the new generation has taken over, the older
// runner stops for good and gives the projection up, and the newer process
// applies it.
func TestANewerVersionTakesOverAcrossProcesses(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	start := func(id string, p projections.Projection) *projections.Daemon {
		d, _ := b.startProcess(t, ctx, id, p)
		return d
	}
	old := start("proc-old", readmodel.Orders{})
	require.True(t, old.Runner("orders").Owned())
	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 100, Customers: 10, Writers: 2, Seed: 4})
	require.NoError(t, err)

	upgraded := start("proc-new", split{Projection: readmodel.Orders{}, n: 1, version: 2})
	require.Eventually(t, func() bool {
		var version int
		require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT version FROM sightline.projections WHERE name = 'orders'`).Scan(&version))
		return version == 2 && upgraded.Runner("orders").Owned()
	}, 30*time.Second, 10*time.Millisecond, "the newer version built, took over and is applied by the upgraded process")
	<-old.Runner("orders").Done()

	late := appendOrder(t, ctx, b.store, "order-late", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":3}`))
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, upgraded.Runner("orders").WaitFor(wait, late.Position))
	diff, err := readmodeltest.DiffOf(ctx, b.db.Pool, 5, "orders")
	require.NoError(t, err)
	require.Empty(t, diff["orders"])
}
