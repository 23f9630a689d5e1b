//go:build pgrestart

package readmodel_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// TestPostgresRestartUnderLoad restarts the PostgreSQL server
// (pg_ctlcluster … restart) twice in the middle of live traffic and proves
// the projector recovers by itself, parks nothing (a restart is not a
// poison event), and leaves every read model exact.
//
// It restarts the server every other test uses, so it is built only with
// the pgrestart tag and run alone, after the other tests (make test).
func TestPostgresRestartUnderLoad(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	db, store := openStore(t, pgstore.Config{})
	d, metrics := startExamples(t, ctx, db.Pool, store, projections.Config{BatchSize: 100})

	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, store, simulate.Config{Orders: 800, Customers: 60, Writers: 4, Rate: 600, Seed: 31})
		traffic <- err
	}()
	for range 2 {
		time.Sleep(1500 * time.Millisecond)
		testdb.Restart(t, ctx, db.Pool, false)
		t.Log("PostgreSQL restarted")
	}
	require.NoError(t, <-traffic, "the writers retry through the restarts")

	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, db.Pool)
	// The restarts reached the projector: a batch or a subscription failed
	// and was retried. Which of them depends on what each was doing.
	failures := testutil.ToFloat64(metrics.SourceReconnects.WithLabelValues("postgres"))
	for _, name := range readmodeltest.Names() {
		failures += testutil.ToFloat64(metrics.BatchRetries.WithLabelValues(name))
	}
	require.Positive(t, failures, "the projector saw the restarts and retried")
	require.NoError(t, d.Stop(ctx))
}
