package readmodel_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/chaos"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// TestRebuildOrdersUnderTrafficWhileReadersQuery rebuilds orders while
// orders keep coming and readers query readmodel.orders in a loop: no read
// fails, none sees fewer orders or less paid than the read before it (an
// empty or partly built table would), and after the swap the read model
// equals the fold of sightline.events.
func TestRebuildOrdersUnderTrafficWhileReadersQuery(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, store := openStore(t, pgstore.Config{ReadBatch: 500})
	// Replays are slowed down, so that the build takes a while.
	d, _ := startExamples(t, ctx, db.Pool, slowReplay{store}, projections.Config{StatusInterval: 20 * time.Millisecond, RebuildBatchSize: 500})
	_, err := simulate.Run(ctx, store, simulate.Config{Orders: 2000, Customers: 100, Writers: 4, Seed: 41})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	var seeded int64
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM readmodel.orders`).Scan(&seeded))

	traffic, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	trafficDone := make(chan error, 1)
	go func() {
		_, err := simulate.Run(traffic, store, simulate.Config{Orders: 1_000_000, Customers: 100, Writers: 4, Rate: 600, Seed: 42})
		trafficDone <- err
	}()

	var reads, failures atomic.Int64
	var failed sync.Once
	var firstFailure error
	fail := func(err error) {
		failures.Add(1)
		failed.Do(func() { firstFailure = err })
	}
	readers, stopReaders := context.WithCancel(ctx)
	defer stopReaders()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lastCount, lastPaid := seeded, int64(0)
			for readers.Err() == nil {
				var count, paid int64
				err := db.Pool.QueryRow(readers, `SELECT count(*), coalesce(sum(paid), 0) FROM readmodel.orders`).Scan(&count, &paid)
				switch {
				case readers.Err() != nil:
					return
				case err != nil:
					fail(err)
				case count < lastCount || paid < lastPaid:
					fail(fmt.Errorf("read %d orders paid %d after %d orders paid %d", count, paid, lastCount, lastPaid))
				default:
					lastCount, lastPaid = count, paid
					reads.Add(1)
				}
			}
		}()
	}

	r := d.Runner("orders")
	var atRequest int64
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM readmodel.orders`).Scan(&atRequest))
	rb, err := r.Rebuild(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, rb.Generation)
	require.Eventually(t, func() bool {
		var gen int
		var count int64
		err := db.Pool.QueryRow(ctx, `SELECT (SELECT generation FROM sightline.projections WHERE name = 'orders'), count(*) FROM readmodel.orders`).Scan(&gen, &count)
		return err == nil && gen == 1 && count > atRequest
	}, time.Minute, 5*time.Millisecond, "the active generation projects new orders while the rebuild runs")
	require.Eventually(t, func() bool {
		var gen int
		return db.Pool.QueryRow(ctx, `SELECT generation FROM sightline.projections WHERE name = 'orders'`).Scan(&gen) == nil && gen == 2
	}, time.Minute, 10*time.Millisecond, "%+v", r.Status())
	readsAtSwap := reads.Load()
	time.Sleep(300 * time.Millisecond) // traffic and reads go on after the swap
	stopTraffic()
	require.ErrorIs(t, <-trafficDone, context.Canceled)
	stopReaders()
	wg.Wait()

	require.Zero(t, failures.Load(), "first failure: %v", firstFailure)
	require.Greater(t, readsAtSwap, int64(20), "readers queried during the rebuild")
	require.Greater(t, reads.Load(), readsAtSwap, "readers queried after the swap")
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, db.Pool)
	st := r.Status()
	require.Equal(t, projections.StatusLive, st.Status, "%+v", st)
	require.Nil(t, st.Rebuild)
}

// slowReplay slows down the messages of subscriptions from the start of the
// store: those of rebuilds.
type slowReplay struct{ *pgstore.Store }

func (s slowReplay) Subscribe(ctx context.Context, from eventstore.Position, f eventstore.Filter) (eventstore.Subscription, error) {
	sub, err := s.Store.Subscribe(ctx, from, f)
	if err != nil || !from.IsStart() {
		return sub, err
	}
	return slowSub{sub}, nil
}

type slowSub struct{ eventstore.Subscription }

func (s slowSub) Recv(ctx context.Context) (eventstore.Message, error) {
	select {
	case <-time.After(100 * time.Millisecond):
	case <-ctx.Done():
		return eventstore.Message{}, ctx.Err()
	}
	return s.Subscription.Recv(ctx)
}

// TestRebuildsExactUnderChaosAndKilledConnections rebuilds every example
// projection from a source that duplicates, reorders, delays, loses and
// redelivers events, while the rebuilds' connections are terminated again
// and again, in small batches so that most streams span many of them: a
// build that applied an event twice, or lost one, would leave a read
// model that differs from the fold of the events.
func TestRebuildsExactUnderChaosAndKilledConnections(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, store := openStore(t, pgstore.Config{ReadBatch: 50})
	_, err := simulate.Run(ctx, store, simulate.Config{Orders: 400, Customers: 30, Writers: 4, Seed: 51})
	require.NoError(t, err)
	d, _ := startExamples(t, ctx, db.Pool, store, projections.Config{})
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	require.NoError(t, d.Stop(ctx))

	cfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	cfg.ConnConfig.RuntimeParams["application_name"] = "sightline-rebuilder"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer pool.Close()
	source, err := pgstore.New(pool, pgstore.Config{ReadBatch: 50})
	require.NoError(t, err)
	defer source.Close()
	chaotic := chaos.Wrap(source, chaos.Config{Seed: 52, Duplicate: 0.05, Reorder: 0.05, Late: 0.03, Drop: 0.05, Fail: 0.02, MaxDelay: 5 * time.Millisecond})

	// Every connection of the builds but the one holding the build lock,
	// whose loss ends a rebuild by design, once a build has begun (a
	// rebuild whose request fails returns the error), and again once a
	// batch has committed since, so that a slow machine still progresses.
	var building atomic.Bool
	killing, stopKilling := context.WithCancel(ctx)
	defer stopKilling()
	killed := make(chan int, 1)
	go func() {
		n, progress := 0, int64(-1)
		defer func() { killed <- n }()
		tick := time.NewTicker(60 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-killing.Done():
				return
			case <-tick.C:
			}
			var now int64
			if !building.Load() || db.Pool.QueryRow(killing, `SELECT sum(commit_position) FROM sightline.checkpoints`).Scan(&now) != nil || now == progress {
				continue
			}
			progress = now
			var k int
			if err := db.Pool.QueryRow(killing, `SELECT count(*) FROM (
				SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE application_name = 'sightline-rebuilder' AND datname = current_database() AND state <> 'idle'
				  AND pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')) k`).Scan(&k); err == nil {
				n += k
			}
		}
	}()
	for _, p := range readmodel.All() {
		err := projections.RunRebuild(ctx, pool, chaotic, p, projections.Config{RebuildBatchSize: 37, StatusInterval: 20 * time.Millisecond},
			func(projections.Rebuild) { building.Store(true) })
		building.Store(false)
		require.NoError(t, err, p.Name())
	}
	stopKilling()
	n := <-killed
	require.Positive(t, n, "connections were terminated")
	t.Logf("terminated %d connections", n)
	readmodeltest.RequireExact(t, ctx, db.Pool)
}
