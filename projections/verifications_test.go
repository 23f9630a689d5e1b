package projections_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// ordersV2 is the orders projection at a version the database does not have.
type ordersV2 struct{ readmodel.Orders }

func (ordersV2) Version() int { return 2 }

// cancellingOrders is the orders projection whose replay ends the verify's
// context, as a caller giving up would.
type cancellingOrders struct {
	readmodel.Orders
	cancel context.CancelFunc
}

func (o cancellingOrders) Apply(ctx context.Context, b *projections.Batch) error {
	o.cancel()
	return context.Canceled
}

// TestVerifyIsRecorded: a verify without drift, one with drift and one
// that fails are recorded, and LastVerify returns the newest; one
// cancelled by its caller is not.
func TestVerifyIsRecorded(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	b.start(t, ctx, readmodel.Orders{})
	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 30, Customers: 5, Writers: 2, Seed: 41})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "orders")

	last, err := projections.LastVerify(ctx, b.db.Pool, "orders")
	require.NoError(t, err)
	require.Nil(t, last, "no verify yet")

	before := time.Now().Add(-time.Millisecond)
	clean, err := projections.Verify(ctx, b.db.Pool, b.store, readmodel.Orders{}, 5, projections.Config{})
	require.NoError(t, err)
	require.Zero(t, clean.Drifted)
	last, err = projections.LastVerify(ctx, b.db.Pool, "orders")
	require.NoError(t, err)
	require.NotNil(t, last)
	require.Equal(t, "orders", last.Projection)
	require.Equal(t, 1, last.Version)
	require.Equal(t, 1, last.Generation)
	require.Equal(t, clean.Position.String(), last.Position)
	require.Equal(t, clean.Rows, last.Rows)
	require.Positive(t, last.Rows["orders"])
	require.Zero(t, last.Drifted)
	require.NotNil(t, last.Drift)
	require.Empty(t, last.Drift)
	require.Empty(t, last.Error)
	require.WithinRange(t, last.StartedAt, before, time.Now())
	require.WithinDuration(t, last.StartedAt.Add(clean.Took), last.FinishedAt, time.Millisecond)

	_, err = b.db.Pool.Exec(ctx, `UPDATE readmodel.orders SET paid = paid + 1 WHERE id = (SELECT min(id) FROM readmodel.orders)`)
	require.NoError(t, err)
	drifted, err := projections.Verify(ctx, b.db.Pool, b.store, readmodel.Orders{}, 5, projections.Config{})
	require.NoError(t, err)
	require.EqualValues(t, 1, drifted.Drifted)
	newest, err := projections.LastVerify(ctx, b.db.Pool, "orders")
	require.NoError(t, err)
	require.Greater(t, newest.ID, last.ID)
	require.EqualValues(t, 1, newest.Drifted)
	require.Equal(t, drifted.Drift, newest.Drift, "the reported rows, as reported")
	require.Equal(t, drifted.Position.String(), newest.Position)
	require.Empty(t, newest.Error)

	// A verify that fails part way is recorded with its error.
	_, verr := projections.Verify(ctx, b.db.Pool, b.store, ordersV2{}, 5, projections.Config{})
	require.ErrorIs(t, verr, projections.ErrVersionChanged)
	failed, err := projections.LastVerify(ctx, b.db.Pool, "orders")
	require.NoError(t, err)
	require.Greater(t, failed.ID, newest.ID)
	require.Equal(t, verr.Error(), failed.Error)
	require.Equal(t, 1, failed.Version, "the active generation's")
	require.Equal(t, 1, failed.Generation)
	require.Empty(t, failed.Position)
	require.Zero(t, failed.Drifted)
	require.Empty(t, failed.Drift)
	require.Empty(t, failed.Rows)

	// One its caller cancels is not.
	vctx, cancel := context.WithCancel(ctx)
	defer cancel()
	_, err = projections.Verify(vctx, b.db.Pool, b.store, cancellingOrders{cancel: cancel}, 5, projections.Config{})
	require.ErrorIs(t, err, context.Canceled)
	still, err := projections.LastVerify(ctx, b.db.Pool, "orders")
	require.NoError(t, err)
	require.Equal(t, failed.ID, still.ID, "a cancelled verify is not recorded")
}

// TestVerifyHistoryIsBounded: recording a verify keeps the newest
// VerifyHistory of its projection, and those of others as they are.
func TestVerifyHistoryIsBounded(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	record := func(projection string, i int) {
		t.Helper()
		at := time.Date(2024, 1, 1, 0, 0, i, 0, time.UTC)
		require.NoError(t, projections.RecordVerify(ctx, b.db.Pool, projections.VerifyRecord{
			Projection: projection, Version: 1, Generation: 1, Position: fmt.Sprint(i), StartedAt: at, FinishedAt: at.Add(time.Second),
			Rows: map[string]int64{"t": int64(i)}, Drift: []projections.Drift{},
		}, projections.VerifyHistory))
	}
	for i := range 3 {
		record("other", i)
	}
	const n = projections.VerifyHistory + 7
	for i := range n {
		record("bounded", i)
	}
	count := func(projection string) (n int, oldest string) {
		t.Helper()
		require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT count(*), min(position::int)::text FROM sightline.verifications WHERE projection = $1`,
			projection).Scan(&n, &oldest))
		return n, oldest
	}
	kept, oldest := count("bounded")
	require.Equal(t, projections.VerifyHistory, kept)
	require.Equal(t, fmt.Sprint(n-projections.VerifyHistory), oldest, "the oldest go")
	kept, _ = count("other")
	require.Equal(t, 3, kept)
	last, err := projections.LastVerify(ctx, b.db.Pool, "bounded")
	require.NoError(t, err)
	require.Equal(t, fmt.Sprint(n-1), last.Position)
	require.Equal(t, map[string]int64{"t": n - 1}, last.Rows)
}
