package readmodel_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// TestConnectionsKilledUnderLoad terminates every connection of the
// projector (pg_terminate_backend: its batches, its sequencer and its
// notification listener) again and again while orders are appended, and
// proves the projector recovers by itself, parks nothing, and the read
// models stay exact.
func TestConnectionsKilledUnderLoad(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, writer := openStore(t, pgstore.Config{})

	cfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	cfg.ConnConfig.RuntimeParams["application_name"] = "sightline-projector"
	cfg.ConnConfig.RuntimeParams["jit"] = "off"
	projPool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	defer projPool.Close()
	projStore, err := pgstore.New(projPool, pgstore.Config{})
	require.NoError(t, err)
	defer projStore.Close()

	d, metrics := startExamples(t, ctx, projPool, projStore, projections.Config{BatchSize: 100})

	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, writer, simulate.Config{Orders: 600, Customers: 50, Writers: 4, Rate: 1500, Seed: 21})
		traffic <- err
	}()
	killed := 0
	tick := time.NewTicker(150 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case err := <-traffic:
			require.NoError(t, err)
			done = true
		case <-tick.C:
			var n int
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM (
				SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE application_name = 'sightline-projector' AND datname = current_database()) k`).Scan(&n))
			killed += n
		}
	}
	require.Positive(t, killed)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, db.Pool)
	require.Positive(t, testutil.ToFloat64(metrics.SourceReconnects.WithLabelValues("postgres")), "subscriptions were lost and reopened")
	t.Logf("terminated %d projector connections", killed)
	require.NoError(t, d.Stop(ctx))
}
