package projections_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/projections"
)

// sick fails every batch, while sick is set, with an error that blames no
// event (a serialization failure): nothing to park, the batch is retried
// whole.
type sick struct{ sick *atomic.Bool }

func (sick) Name() string     { return "sick" }
func (sick) Version() int     { return 1 }
func (sick) Tables() []string { return nil }
func (sick) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"order-"}}
}
func (sick) Setup(context.Context, pgx.Tx, string) error { return nil }
func (p sick) Apply(context.Context, *projections.Batch) error {
	if p.sick.Load() {
		return &pgconn.PgError{Code: "40001", Message: "simulated serialization failure"}
	}
	return nil
}

// TestFailingBatchesReportFailedWithTheReason: batches that keep failing
// make the projection stalled, then failed past FailAfter, with the
// error as the reason in the status, the status row and the metric; once
// they succeed it is live again and says nothing.
func TestFailingBatchesReportFailedWithTheReason(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	var ill atomic.Bool
	ill.Store(true)
	d, err := projections.NewDaemon(b.db.Pool, b.store, []projections.Projection{sick{&ill}},
		projections.Config{Metrics: b.metrics, StatusInterval: 20 * time.Millisecond, FailAfter: 500 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	appendOrder(t, ctx, b.store, "order-1", storetest.Event("OrderPlaced", `{}`))
	r := d.Runner("sick")

	require.Eventually(t, func() bool { return r.Status().Status == projections.StatusStalled }, 10*time.Second, 5*time.Millisecond,
		"stalled while failing for less than FailAfter: %+v", r.Status())
	require.Contains(t, r.Status().Reason, "simulated serialization failure")
	require.Eventually(t, func() bool { return r.Status().Status == projections.StatusFailed }, 10*time.Second, 10*time.Millisecond)
	st := r.Status()
	require.Regexp(t, `^batches failing for \d+(\.\d+)?m?s: .*simulated serialization failure`, st.Reason)
	require.Eventually(t, func() bool {
		var status, reason string
		return b.db.Pool.QueryRow(ctx, `SELECT status, reason FROM readmodel.projection_status WHERE projection = 'sick'`).Scan(&status, &reason) == nil &&
			status == projections.StatusFailed && reason != ""
	}, 10*time.Second, 10*time.Millisecond, "the status row says so too")
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(b.metrics.Status.WithLabelValues("sick", projections.StatusFailed)) == 1 &&
			testutil.ToFloat64(b.metrics.Status.WithLabelValues("sick", projections.StatusLive)) == 0
	}, 10*time.Second, 10*time.Millisecond)

	ill.Store(false)
	require.Eventually(t, func() bool { st := r.Status(); return st.Status == projections.StatusLive && st.Reason == "" },
		20*time.Second, 10*time.Millisecond, "healed: %+v", r.Status())
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(b.metrics.Status.WithLabelValues("sick", projections.StatusFailed)) == 0 &&
			testutil.ToFloat64(b.metrics.Status.WithLabelValues("sick", projections.StatusLive)) == 1
	}, 10*time.Second, 10*time.Millisecond)
}

// unreachable is a store whose subscriptions fail while down is set.
type unreachable struct {
	eventstore.Store
	down *atomic.Bool
}

func (u unreachable) Subscribe(ctx context.Context, from eventstore.Position, f eventstore.Filter) (eventstore.Subscription, error) {
	if u.down.Load() {
		return nil, errors.New("dial tcp 10.0.0.1:2113: connection refused")
	}
	return u.Store.Subscribe(ctx, from, f)
}

// TestUnreachableSourceReportsDegraded: while the source cannot be
// subscribed to, the projection is degraded, saying why; once it can, it
// catches up and is live.
func TestUnreachableSourceReportsDegraded(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	var down atomic.Bool
	down.Store(true)
	d, err := projections.NewDaemon(b.db.Pool, unreachable{b.store, &down}, []projections.Projection{idle{}},
		projections.Config{Metrics: b.metrics, StatusInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	r := d.Runner("idle")
	require.Eventually(t, func() bool { return r.Status().Status == projections.StatusDegraded }, 10*time.Second, 5*time.Millisecond)
	require.Regexp(t, `^event source unreachable for \d+(\.\d+)?m?s: dial tcp 10.0.0.1:2113: connection refused$`, r.Status().Reason)

	down.Store(false)
	last := appendOrder(t, ctx, b.store, "order-1", storetest.Event("OrderPlaced", `{}`))
	require.Eventually(t, func() bool {
		st := r.Status()
		return st.Status == projections.StatusLive && st.Reason == "" && !st.Position.Before(last.Position)
	}, 20*time.Second, 10*time.Millisecond, "reachable again: %+v", r.Status())
}
