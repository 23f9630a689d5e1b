package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// seedOrders appends n orders of three events each, several appends at a
// time: a backlog for a rebuild to replay.
func seedOrders(t *testing.T, ctx context.Context, store eventstore.Store, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				total := 100 + i%900
				_, err := store.Append(ctx, fmt.Sprintf("order-seed-%06d", i), eventstore.NoStream,
					storetest.Event(readmodel.TypeOrderPlaced, fmt.Sprintf(`{"customer_id":"c-%d","items":[{"sku":"A","qty":1,"price":%d}],"total":%d}`, i%50, total, total)),
					storetest.Event(readmodel.TypeOrderPaid, fmt.Sprintf(`{"amount":%d}`, total)),
					storetest.Event(readmodel.TypeOrderShipped, `{"carrier":"dhl"}`))
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	require.NoError(t, <-errs)
}

// TestRebuildSurvivesKillNine requests a rebuild of orders from the command
// line, kills the 'sightline run' building it with SIGKILL half way while
// orders keep coming, and proves that the next run resumes the same
// generation from its checkpoint, swaps it in, and that the result equals
// the fold of the events; then verify finds no drift, and exactly the row
// edited by hand once one is.
func TestRebuildSurvivesKillNine(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 4*time.Minute)
	seedOrders(t, ctx, store, 10_000)

	conf := filepath.Join(t.TempDir(), "sightline.yaml")
	require.NoError(t, os.WriteFile(conf, []byte("rebuild_batch_size: 200\n"), 0o600))
	dbArgs := []string{"--database-url", db.URL, "--config", conf, "--examples"}
	runArgs := append([]string{"run", "--http-addr", "127.0.0.1:0"}, dbArgs...)
	first := start(t, runArgs...)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)

	live := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, store, simulate.Config{Orders: 300, Customers: 50, Writers: 2, Rate: 300, Seed: 5})
		live <- err
	}()
	out, _, code := runCLI(t, append([]string{"rebuild", "orders"}, dbArgs...)...)
	require.Equal(t, 0, code, out)
	require.Contains(t, out, "orders: rebuild requested: generation 2 (version 1).")
	require.Contains(t, out, "The running projector builds it")

	checkpoint := func() (uint64, uint64) {
		var pos, head int64
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT commit_position, (SELECT head FROM sightline.sequencer)
			FROM sightline.checkpoints WHERE projection = 'orders' AND generation = 2`).Scan(&pos, &head))
		return uint64(pos), uint64(head)
	}
	for {
		pos, head := checkpoint()
		if pos > 0 {
			require.Less(t, pos, head, "the rebuild finished before it could be killed half way:\n%s", first.stderr.String())
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	require.NoError(t, first.cmd.Process.Signal(syscall.SIGKILL))
	<-first.done
	killedAt, _ := checkpoint()
	var state string
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT state FROM sightline.generations WHERE projection = 'orders' AND generation = 2`).Scan(&state))
	require.Equal(t, "building", state)

	second := start(t, runArgs...)
	require.Eventually(t, func() bool {
		var gen int
		return db.Pool.QueryRow(ctx, `SELECT generation FROM sightline.projections WHERE name = 'orders'`).Scan(&gen) == nil && gen == 2
	}, 2*time.Minute, 20*time.Millisecond, "%s", second.stderr.String())
	m := regexp.MustCompile(`msg=building projection=orders generation=2 version=1 from=(\d+)`).FindStringSubmatch(second.stderr.String())
	require.NotNil(t, m, second.stderr.String())
	from, err := strconv.ParseUint(m[1], 10, 64)
	require.NoError(t, err)
	require.GreaterOrEqual(t, from, killedAt, "resumed from its checkpoint, not from the start")
	require.NoError(t, <-live)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, db.Pool)

	out, errOut, code := runCLI(t, append([]string{"verify", "orders"}, dbArgs...)...)
	require.Equal(t, 0, code, out+errOut)
	require.Regexp(t, `^orders: no drift: 10,300 rows equal a clean replay at position \d+`, out)

	_, err = db.Pool.Exec(ctx, `UPDATE readmodel.orders SET paid = paid + 1 WHERE id = 'seed-000042'`)
	require.NoError(t, err)
	out, errOut, code = runCLI(t, append([]string{"verify", "orders", "--limit", "5"}, dbArgs...)...)
	require.Equal(t, 1, code, out+errOut)
	require.Regexp(t, `^orders: 1 of 10,300 rows differ from a clean replay at position \d+ \(first 1 below\)
  orders id="seed-000042": paid: live 143, replay 142
$`, out)
	last, err := projections.LastVerify(ctx, db.Pool, "orders")
	require.NoError(t, err)
	require.NotNil(t, last, "the command's verifies are recorded")
	require.EqualValues(t, 1, last.Drifted)
	require.Equal(t, map[string]any{"id": "seed-000042"}, last.Drift[0].Key)
	require.NoError(t, second.cmd.Process.Signal(syscall.SIGTERM))
	<-second.done
	require.NoError(t, second.err, second.stderr.String())
}

// TestRebuildWaitCommand: 'rebuild --wait' refuses a projection that never
// ran and a rebuild another process builds, then builds one here with a
// progress bar until it takes over.
func TestRebuildWaitCommand(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 2*time.Minute)
	seedOrders(t, ctx, store, 2000)
	dbArgs := []string{"--database-url", db.URL, "--examples"}

	_, errOut, code := runCLI(t, append([]string{"rebuild", "orders", "--wait"}, dbArgs...)...)
	require.Equal(t, 1, code, errOut)
	require.Contains(t, errOut, "projection has never run: orders; its first run builds it from the start")
	_, errOut, code = runCLI(t, append([]string{"rebuild", "nope"}, dbArgs...)...)
	require.Equal(t, 2, code, errOut)
	require.Contains(t, errOut, `no projection named "nope"; there are: orders, customer_stats, daily_sales`)

	d, err := projections.NewDaemon(db.Pool, store, readmodel.All(), projections.Config{})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	require.NoError(t, d.Stop(ctx))

	// Another process builds orders and gets nowhere.
	elsewhere, stop := context.WithCancel(ctx)
	built := make(chan error, 1)
	claimed := make(chan struct{})
	go func() {
		built <- projections.RunRebuild(elsewhere, db.Pool, storetest.Silent{Store: store}, readmodel.Orders{}, projections.Config{},
			func(projections.Rebuild) { close(claimed) })
	}()
	<-claimed
	for _, args := range [][]string{{"rebuild", "orders", "--wait"}, {"rebuild", "orders"}} {
		_, errOut, code = runCLI(t, append(args, dbArgs...)...)
		require.Equal(t, 1, code, errOut)
		require.Contains(t, errOut, "a rebuild is already running: generation 2 (version 1) of orders is being built", args)
	}
	stop()
	require.ErrorIs(t, <-built, context.Canceled)
	require.Eventually(t, func() bool { // its server session, and the lock with it, ends a moment after
		var held int
		return db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&held) == nil && held == 0
	}, 10*time.Second, 10*time.Millisecond)

	out, errOut, code := runCLI(t, append([]string{"rebuild", "orders", "--wait"}, dbArgs...)...)
	require.Equal(t, 0, code, errOut)
	require.Contains(t, errOut, "building orders generation 2 100%")
	require.Contains(t, out, "orders: generation 2 (version 1) is active")
	readmodeltest.RequireExact(t, ctx, db.Pool)
	out, _, code = runCLI(t, append([]string{"status"}, dbArgs...)...)
	require.Equal(t, 0, code)
	require.Regexp(t, `orders +1 +stopped +6000 +6000 +0s +0 +- `, out)
}
