//go:build pgrestart

package readmodel_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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
	cluster := clusterVersion(t)
	db := testdb.New(t)
	store, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	defer store.Close()
	d, metrics := startExamples(t, ctx, db.Pool, store, projections.Config{BatchSize: 100})

	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, store, simulate.Config{Orders: 800, Customers: 60, Writers: 4, Rate: 600, Seed: 31})
		traffic <- err
	}()
	startedAt := func() (at time.Time) {
		require.Eventually(t, func() bool {
			return db.Pool.QueryRow(ctx, `SELECT pg_postmaster_start_time()`).Scan(&at) == nil
		}, 30*time.Second, 100*time.Millisecond)
		return at
	}
	for range 2 {
		time.Sleep(1500 * time.Millisecond)
		before := startedAt()
		out, err := exec.CommandContext(ctx, "pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart").CombinedOutput()
		require.NoError(t, err, "pg_ctlcluster restart: %s", out)
		require.True(t, startedAt().After(before), "the server restarted")
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

// clusterVersion is the PostgreSQL cluster version under /etc/postgresql,
// after checking that the tests' server is this machine's.
func clusterVersion(t *testing.T) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(testdb.AdminURL())
	require.NoError(t, err)
	if ip := net.ParseIP(cfg.Host); cfg.Host != "localhost" && !strings.HasPrefix(cfg.Host, "/") && (ip == nil || !ip.IsLoopback()) {
		t.Fatalf("this drill restarts the local PostgreSQL, but TEST_DATABASE_URL points at %s: run it against the local server, or run the other tests alone (go test -race ./...)", cfg.Host)
	}
	entries, err := os.ReadDir("/etc/postgresql")
	if err != nil || len(entries) != 1 {
		t.Fatalf("this drill restarts the local PostgreSQL with pg_ctlcluster and needs exactly one cluster under /etc/postgresql: %v", err)
	}
	if _, err := exec.LookPath("pg_ctlcluster"); err != nil {
		t.Fatal("this drill needs pg_ctlcluster (postgresql-common)")
	}
	return strings.TrimSpace(entries[0].Name())
}
