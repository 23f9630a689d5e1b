package readmodel_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openStore opens the embedded store with cfg on a fresh database. The
// store is closed when the test ends, after the projectors that
// startExamples started have stopped.
func openStore(t *testing.T, cfg pgstore.Config) (*testdb.DB, *pgstore.Store) {
	t.Helper()
	db := testdb.New(t)
	store, err := pgstore.New(db.Pool, cfg)
	require.NoError(t, err)
	t.Cleanup(store.Close)
	return db, store
}

// startExamples runs the example projections on pool and store with cfg
// and metrics of their own, until the test ends.
func startExamples(t *testing.T, ctx context.Context, pool *pgxpool.Pool, store eventstore.Store, cfg projections.Config) (*projections.Daemon, *projections.Metrics) {
	t.Helper()
	cfg.Metrics = projections.NewMetrics(prometheus.NewRegistry())
	d, err := projections.NewDaemon(pool, store, readmodel.All(), cfg)
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { _ = d.Stop(context.Background()) })
	return d, cfg.Metrics
}
