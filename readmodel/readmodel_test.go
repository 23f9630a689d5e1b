package readmodel_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore/chaos"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// TestExactUnderChaos drives the example projections through a source that
// duplicates, reorders, delays, loses and redelivers events and drops the
// subscription, during catch-up and live traffic, and proves every read
// model equals the fold of the events.
func TestExactUnderChaos(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, store := openStore(t, pgstore.Config{ReadBatch: 64})

	// Traffic before the projector starts: it catches up under chaos.
	_, err := simulate.Run(ctx, store, simulate.Config{Orders: 300, Customers: 40, Writers: 4, Seed: 1})
	require.NoError(t, err)

	chaotic := chaos.Wrap(store, chaos.Config{Seed: 7, Duplicate: 0.05, Reorder: 0.05, Late: 0.03, Drop: 0.05, MaxDelay: time.Millisecond, Fail: 0.02})
	d, metrics := startExamples(t, ctx, db.Pool, chaotic, projections.Config{BatchSize: 50, StatusInterval: 50 * time.Millisecond})

	// Live traffic while it projects.
	_, err = simulate.Run(ctx, store, simulate.Config{Orders: 300, Customers: 40, Writers: 8, Seed: 2})
	require.NoError(t, err)

	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, db.Pool)

	// The faults did happen: otherwise this test proves nothing.
	for _, name := range readmodeltest.Names() {
		require.Positive(t, testutil.ToFloat64(metrics.EventsSkipped.WithLabelValues(name, projections.SkipDuplicate)), "%s: duplicates skipped", name)
		require.Positive(t, testutil.ToFloat64(metrics.GapsRepaired.WithLabelValues(name)), "%s: gaps repaired", name)
		require.Zero(t, testutil.ToFloat64(metrics.EventsSkipped.WithLabelValues(name, projections.SkipGapUnfilled)), "%s: nothing is unfillable", name)
	}
	require.Positive(t, testutil.ToFloat64(metrics.SourceReconnects.WithLabelValues("postgres")), "subscriptions were dropped and reopened")
	require.NoError(t, d.Stop(ctx))
}
