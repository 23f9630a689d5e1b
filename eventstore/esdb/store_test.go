package esdb_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/esdb"
	"github.com/sightlinehq/sightline/eventstore/esdb/esdbtest"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The client abandons a gRPC connection on a reconnect without an
		// endpoint: it starts a new discovery without closing the old
		// connection (esdb/impl.go, connectionStateMachine, v4.2.0). That
		// connection's serializer and its reconnect loop outlive everything;
		// nothing of the adapter's own.
		goleak.IgnoreTopFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("google.golang.org/grpc.(*addrConn).resetTransportAndUnlock"),
	)
}

func newStore(t testing.TB, url string) *esdb.Store {
	t.Helper()
	s, err := esdb.New(esdb.Config{URL: url})
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s
}

// TestContract runs the store contract over the wire-level test double.
func TestContract(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Features{HeadTime: true}, func(t *testing.T) eventstore.Store {
		return newStore(t, esdbtest.Start(t).URL())
	})
}

// TestContractOnRealServer runs the same contract against a real
// EventStoreDB or KurrentDB when SIGHTLINE_TEST_ESDB_URL names one.
func TestContractOnRealServer(t *testing.T) {
	url := os.Getenv("SIGHTLINE_TEST_ESDB_URL")
	if url == "" {
		t.Skip("SIGHTLINE_TEST_ESDB_URL is not set: no real EventStoreDB/KurrentDB to test against (the wire-level double's suite ran instead)")
	}
	storetest.Run(t, storetest.Features{HeadTime: true}, func(t *testing.T) eventstore.Store { return newStore(t, url) })
}

// TestCategoryStreamsResolveLinks subscribes through $ce-order: events come
// resolved, a link to a deleted event is counted and passed over, and a
// subscription resumed from a checkpoint starts right after it.
func TestCategoryStreamsResolveLinks(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := esdbtest.Start(t)
	s := newStore(t, srv.URL())
	var positions []eventstore.Position
	for _, st := range []string{"order-1", "customer-9", "order-2", "order-1"} {
		res, err := s.Append(ctx, st, eventstore.Any, storetest.Event("E", `{"s":"`+st+`"}`))
		require.NoError(t, err)
		positions = append(positions, res.Position)
	}
	srv.DeleteEvent("order-2", 0)

	recv := func(from eventstore.Position) ([]eventstore.RecordedEvent, int) {
		sub, err := s.Subscribe(ctx, from, eventstore.Filter{Category: "order"})
		require.NoError(t, err)
		defer sub.Close()
		var got []eventstore.RecordedEvent
		deleted := 0
		for {
			msg, err := sub.Recv(ctx)
			require.NoError(t, err)
			got = append(got, msg.Events...)
			deleted += msg.DeletedLinks
			if msg.CaughtUp {
				return got, deleted
			}
		}
	}
	got, deleted := recv(eventstore.Start)
	require.Equal(t, 1, deleted, "the link to the deleted event")
	require.Len(t, got, 2)
	require.Equal(t, []string{"order-1", "order-1"}, []string{got[0].StreamID, got[1].StreamID})
	require.Equal(t, []uint64{0, 1}, []uint64{got[0].Revision, got[1].Revision})
	require.Equal(t, positions[0], got[0].Position, "events carry their own positions, not the links'")

	got, _ = recv(positions[2])
	require.Len(t, got, 1, "resumed after the checkpoint")
	require.Equal(t, positions[3], got[0].Position)
}

// TestExactThroughDropsAndRestarts runs the example projections on the
// adapter while the server drops every subscription again and again and
// once goes away altogether, and proves the read models equal the fold of
// the events.
func TestExactThroughDropsAndRestarts(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := esdbtest.Start(t)
	store := newStore(t, srv.URL())
	db := testdb.New(t)

	_, err := simulate.Run(ctx, store, simulate.Config{Orders: 150, Customers: 20, Writers: 4, Seed: 31})
	require.NoError(t, err)
	metrics := projections.NewMetrics(prometheus.NewRegistry())
	d, err := projections.NewDaemon(db.Pool, store, readmodel.All(), projections.Config{BatchSize: 50, Metrics: metrics, Source: "esdb"})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(context.Background()) //nolint:errcheck

	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // the server misbehaves throughout the live traffic
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
			}
			if i == 3 {
				srv.Stop()
				time.Sleep(300 * time.Millisecond)
				srv.Restart()
				continue
			}
			srv.DropSubscriptions()
		}
	}()
	_, err = simulate.Run(ctx, retrying{store}, simulate.Config{Orders: 150, Customers: 20, Writers: 4, Rate: 800, Seed: 32})
	close(stop)
	wg.Wait()
	require.NoError(t, err)

	head, err := store.Head(ctx)
	require.NoError(t, err)
	for _, r := range d.Runners() {
		require.Eventually(t, func() bool { return !r.Status().Position.Before(head.Position) }, time.Minute, 20*time.Millisecond, "%s: %+v", r.Name(), r.Status())
	}
	copyEvents(t, ctx, store, db)
	readmodeltest.RequireExact(t, ctx, db.Pool)
	require.Positive(t, testutil.ToFloat64(metrics.SourceReconnects.WithLabelValues("esdb")), "subscriptions were dropped and reopened")
}

// retrying retries appends that fail while the server is away; an append
// that did go through is answered by idempotency on the retry.
type retrying struct{ *esdb.Store }

func (r retrying) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	for {
		res, err := r.Store.Append(ctx, stream, expected, events...)
		if err == nil || ctx.Err() != nil {
			return res, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// copyEvents writes every order event of the server into the test
// database's event log, so that the fold of sightline.events is the fold of
// what the server holds.
func copyEvents(t *testing.T, ctx context.Context, s *esdb.Store, db *testdb.DB) {
	t.Helper()
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{readmodel.OrderStreamPrefix}})
	require.NoError(t, err)
	defer sub.Close()
	for {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		for _, e := range msg.Events {
			_, err := db.Pool.Exec(ctx, `INSERT INTO sightline.event_log (stream_id, revision, event_id, type, data, metadata, created_at)
				VALUES ($1, $2, $3, $4, $5, coalesce(nullif($6, '')::jsonb, '{}'), $7)`,
				e.StreamID, int64(e.Revision), e.EventID, e.Type, string(e.Data), string(e.Metadata), e.CreatedAt)
			require.NoError(t, err)
		}
		if msg.CaughtUp {
			return
		}
	}
}

// TestLagZeroWhenTheHeadIsNotOurs: once caught up, a projection whose
// filter does not match the newest records of $all (here a system event)
// reports lag 0 and live, though its checkpoint is below the head.
func TestLagZeroWhenTheHeadIsNotOurs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := esdbtest.Start(t)
	store := newStore(t, srv.URL())
	db := testdb.New(t)
	_, err := store.Append(ctx, "order-1", eventstore.NoStream, storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c","items":[],"total":1}`))
	require.NoError(t, err)
	metrics := projections.NewMetrics(prometheus.NewRegistry())
	d, err := projections.NewDaemon(db.Pool, store, []projections.Projection{readmodel.Orders{}}, projections.Config{StatusInterval: 10 * time.Millisecond, Source: "esdb", Metrics: metrics})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(context.Background()) //nolint:errcheck
	r := d.Runner("orders")
	require.Eventually(t, func() bool { return r.Status().Position.Commit > 0 }, 10*time.Second, 5*time.Millisecond)
	srv.AppendSystemEvent()
	head, err := store.Head(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		st := r.StatusAt(head)
		return st.Position.Before(head.Position) && st.Lag == 0 && st.Status == projections.StatusLive
	}, 10*time.Second, 10*time.Millisecond, "%+v", r.Status())
	// Stays so: it is not a stall, and the metrics agree.
	time.Sleep(100 * time.Millisecond)
	st := r.StatusAt(head)
	require.Equal(t, projections.StatusLive, st.Status)
	require.Zero(t, st.Lag)
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(metrics.CaughtUp.WithLabelValues("orders")) == 1 && testutil.ToFloat64(metrics.Lag.WithLabelValues("orders")) == 0
	}, 5*time.Second, 10*time.Millisecond)
}

// TestServerAwayLongerThanDiscovery keeps the server down until the client
// gives up discovering it, while calls keep coming from several goroutines;
// nothing panics or hangs past its context, and once the server is back a
// fresh client serves again.
func TestServerAwayLongerThanDiscovery(t *testing.T) {
	t.Parallel()
	srv := esdbtest.Start(t)
	store := newStore(t, srv.URL())
	ctx := context.Background()
	_, err := store.Head(ctx)
	require.NoError(t, err)
	srv.Stop()
	var wg sync.WaitGroup
	deadline := time.Now().Add(2500 * time.Millisecond)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				callCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				_, _ = store.Head(callCtx)
				cancel()
			}
		}()
	}
	wg.Wait()
	require.False(t, store.Connected())
	srv.Restart()
	require.Eventually(t, func() bool {
		callCtx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := store.Head(callCtx)
		return err == nil
	}, 15*time.Second, 100*time.Millisecond, "a fresh client reaches the server again")
	require.True(t, store.Connected())
}

// TestRebuildAndVerifyOnEventStoreDB rebuilds orders through the adapter,
// from the wire-level double (esdbtest, not a real server), while orders
// keep coming, then verifies every example projection against a replay:
// positions with commit and prepare parts, live subscriptions and filtered
// checkpoints all the way through a take-over.
func TestRebuildAndVerifyOnEventStoreDB(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	store := newStore(t, esdbtest.Start(t).URL())
	db := testdb.New(t)
	_, err := simulate.Run(ctx, store, simulate.Config{Orders: 200, Customers: 20, Writers: 4, Seed: 61})
	require.NoError(t, err)
	cfg := projections.Config{Metrics: projections.NewMetrics(prometheus.NewRegistry()), Source: "esdb", StatusInterval: 50 * time.Millisecond, RebuildBatchSize: 100}
	d, err := projections.NewDaemon(db.Pool, store, readmodel.All(), cfg)
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(context.Background()) //nolint:errcheck

	live := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, store, simulate.Config{Orders: 100, Customers: 20, Writers: 2, Rate: 300, Seed: 62})
		live <- err
	}()
	r := d.Runner("orders")
	rb, err := r.Rebuild(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var gen int
		return db.Pool.QueryRow(ctx, `SELECT generation FROM sightline.projections WHERE name = 'orders'`).Scan(&gen) == nil && gen == rb.Generation
	}, time.Minute, 20*time.Millisecond, "%+v", r.Status().Rebuild)
	require.NoError(t, <-live)

	head, err := store.Head(ctx)
	require.NoError(t, err)
	for _, r := range d.Runners() {
		require.Eventually(t, func() bool { return !r.Status().Position.Before(head.Position) }, time.Minute, 20*time.Millisecond, "%s: %+v", r.Name(), r.Status())
	}
	for _, p := range readmodel.All() {
		report, err := projections.Verify(ctx, db.Pool, store, p, 5, cfg)
		require.NoError(t, err)
		require.Zero(t, report.Drifted, "%s: %+v", p.Name(), report.Drift)
	}
	copyEvents(t, ctx, store, db)
	readmodeltest.RequireExact(t, ctx, db.Pool)
}
