package testdb

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
)

// Restart restarts the local PostgreSQL server with pg_ctlcluster and
// returns once it accepts connections again. With crash set, the server is
// stopped with -m immediate, which is what a crash looks like to it: no
// shutdown checkpoint, and whatever WAL it had not yet written is lost.
// Otherwise it is a fast, clean restart.
//
// It stops the server every other test uses, so the drills that call it are
// built only with the pgrestart tag and run alone (make drill).
func Restart(t *testing.T, ctx context.Context, pool *pgxpool.Pool, crash bool) {
	t.Helper()
	cluster := clusterVersion(t)
	startedAt := func() (at time.Time) {
		require.Eventually(t, func() bool {
			return pool.QueryRow(ctx, `SELECT pg_postmaster_start_time()`).Scan(&at) == nil
		}, 30*time.Second, 100*time.Millisecond)
		return at
	}
	before := startedAt()
	steps := [][]string{{"restart"}}
	if crash {
		steps = [][]string{{"stop", "-m", "immediate"}, {"start"}}
	}
	for _, step := range steps {
		args := append([]string{"--skip-systemctl-redirect", cluster, "main"}, step...)
		out, err := exec.CommandContext(ctx, "pg_ctlcluster", args...).CombinedOutput()
		require.NoError(t, err, "pg_ctlcluster %s: %s", strings.Join(step, " "), out)
	}
	require.True(t, startedAt().After(before), "the server restarted")
}

// clusterVersion is the PostgreSQL cluster version under /etc/postgresql,
// after checking that the tests' server is this machine's.
func clusterVersion(t *testing.T) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(AdminURL())
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
