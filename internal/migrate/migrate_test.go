package migrate_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/internal/migrate"
	"github.com/sightlinehq/sightline/internal/testdb"
)

func TestUpIsIdempotentAndRecorded(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := testdb.New(t) // already migrated from the template
	require.NoError(t, migrate.Up(ctx, db.Pool, nil))
	require.NoError(t, migrate.Up(ctx, db.Pool, nil))
	all, err := migrate.All()
	require.NoError(t, err)
	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM sightline.schema_migrations`).Scan(&n))
	require.Equal(t, len(all), n)
	for i, m := range all {
		require.Equal(t, i+1, m.Version, "versions are numbered without holes")
		require.NotEmpty(t, m.Down)
	}
}

func TestDownUndoesUp(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := testdb.New(t)
	all, err := migrate.All()
	require.NoError(t, err)
	for i := len(all) - 1; i >= 0; i-- {
		_, err := db.Pool.Exec(ctx, all[i].Down)
		require.NoError(t, err, "down %d", all[i].Version)
	}
	_, err = db.Pool.Exec(ctx, `DELETE FROM sightline.schema_migrations`)
	require.NoError(t, err)
	require.NoError(t, migrate.Up(ctx, db.Pool, nil), "up again after down")
}

func TestEnsureDatabaseCreatesAMissingOne(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := missingDatabase(t, "sltest_ensure")
	require.NoError(t, migrate.EnsureDatabase(ctx, url))
	require.NoError(t, migrate.EnsureDatabase(ctx, url), "and leaves an existing one alone")
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	require.NoError(t, conn.Close(ctx))
}

// missingDatabase is the URL of a database that does not exist yet on the
// test server, dropped when t ends if something created it.
func missingDatabase(t *testing.T, prefix string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(testdb.AdminURL())
	require.NoError(t, err)
	name := fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano())
	t.Cleanup(func() {
		admin, err := pgx.Connect(context.Background(), testdb.AdminURL())
		if err == nil {
			_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			admin.Close(context.Background())
		}
	})
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
}

// TestOpenTakesPoolSettings: a database URL may carry pgxpool's settings;
// they go to the pool, not to the server, which refuses them. A bad one is
// ErrPoolSettings.
func TestOpenTakesPoolSettings(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := missingDatabase(t, "sltest_pool")
	pool, err := migrate.Open(ctx, url+"&pool_max_conns=7&pool_min_conns=1", 2, slog.New(slog.DiscardHandler))
	require.NoError(t, err, "a missing database created and migrated, with the pool's settings")
	defer pool.Close()
	require.Equal(t, int32(7), pool.Config().MaxConns)
	require.NoError(t, pool.Ping(ctx))

	_, err = migrate.Open(ctx, url+"&pool_max_conns=many", 2, slog.New(slog.DiscardHandler))
	require.ErrorIs(t, err, migrate.ErrPoolSettings)
}

func TestEnsureDatabaseSaysHowToStartPostgres(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := migrate.EnsureDatabase(ctx, "postgres://postgres@127.0.0.1:1/nothing?sslmode=disable&connect_timeout=2")
	require.Error(t, err)
	require.Contains(t, err.Error(), "cannot reach PostgreSQL at postgres://postgres@127.0.0.1:1/nothing")
	require.True(t, strings.Contains(err.Error(), "pg_ctlcluster") && strings.Contains(err.Error(), "--database-url"), err.Error())
}

// TestDownToStepsBack: Down rolls back the migrations above a version,
// newest first, records it, and Up brings them back.
func TestDownToStepsBack(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := testdb.New(t)
	all, err := migrate.All()
	require.NoError(t, err)
	newest := all[len(all)-1].Version
	versions := func() []int {
		rows, err := db.Pool.Query(ctx, `SELECT version FROM sightline.schema_migrations ORDER BY 1`)
		require.NoError(t, err)
		vs, err := pgx.CollectRows(rows, pgx.RowTo[int])
		require.NoError(t, err)
		return vs
	}
	require.Equal(t, newest, versions()[len(versions())-1])

	require.NoError(t, migrate.Down(ctx, db.Pool, 2, nil))
	require.Equal(t, []int{1, 2}, versions())
	var parked *string
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT to_regclass('sightline.parked')::text`).Scan(&parked))
	require.Nil(t, parked, "0003 is undone")
	require.NoError(t, migrate.Down(ctx, db.Pool, 2, nil), "nothing more to undo")

	require.NoError(t, migrate.Up(ctx, db.Pool, nil))
	require.Equal(t, newest, versions()[len(versions())-1])
	require.Len(t, versions(), len(all))
}
