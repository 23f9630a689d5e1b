package migrate

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var files embed.FS

// lockKey serialises migrators across processes.
const lockKey = 7406745143525210946

// Migration is one numbered schema change.
type Migration struct {
	Version int
	Name    string
	Up      string
	Down    string
}

// All returns the embedded migrations in version order.
func All() ([]Migration, error) {
	entries, err := fs.Glob(files, "migrations/*.up.sql")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, up := range entries {
		base := strings.TrimSuffix(path.Base(up), ".up.sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil {
			return nil, fmt.Errorf("migration file %q: want NNNN_name.up.sql", up)
		}
		upSQL, err := files.ReadFile(up)
		if err != nil {
			return nil, err
		}
		downSQL, err := files.ReadFile(strings.TrimSuffix(up, ".up.sql") + ".down.sql")
		if err != nil {
			return nil, fmt.Errorf("migration %d has no down file: %w", v, err)
		}
		out = append(out, Migration{Version: v, Name: name, Up: string(upSQL), Down: string(downSQL)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Conn is what the migrator needs: a pool or a single connection.
type Conn interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Up applies every migration not yet applied, each in its own transaction,
// holding an advisory lock so that concurrent migrators take turns.
func Up(ctx context.Context, db Conn, logger *slog.Logger) error {
	all, err := All()
	if err != nil {
		return err
	}
	for _, m := range all {
		applied, err := applyOne(ctx, db, m)
		if err != nil {
			return fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
		}
		if applied && logger != nil {
			logger.Info("applied migration", "version", m.Version, "name", m.Name)
		}
	}
	return nil
}

// beginLocked begins a transaction holding the migrators' lock, so that
// concurrent migrators take turns.
func beginLocked(ctx context.Context, db Conn) (pgx.Tx, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(lockKey)); err != nil {
		tx.Rollback(ctx) //nolint:errcheck // the error above is the one to tell
		return nil, err
	}
	return tx, nil
}

func applyOne(ctx context.Context, db Conn, m Migration) (bool, error) {
	tx, err := beginLocked(ctx, db)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS sightline;
		CREATE TABLE IF NOT EXISTS sightline.schema_migrations (
			version    integer PRIMARY KEY,
			name       text NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return false, err
	}
	var done bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM sightline.schema_migrations WHERE version = $1)`, m.Version).Scan(&done); err != nil {
		return false, err
	}
	if done {
		return false, tx.Commit(ctx)
	}
	if _, err := tx.Exec(ctx, m.Up); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO sightline.schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
		return false, err
	}
	return true, tx.Commit(ctx)
}

// Down rolls back, newest first, every applied migration above version
// to, each with its down file in its own transaction under the
// migrators' lock. Rolling back drops what those migrations created, the
// data in it included (below 0002 the projections' bookkeeping, below 0001
// the embedded store's events): it is for stepping back to an older
// sightline, not for everyday use.
func Down(ctx context.Context, db Conn, to int, logger *slog.Logger) error {
	all, err := All()
	if err != nil {
		return err
	}
	for i := len(all) - 1; i >= 0; i-- {
		m := all[i]
		if m.Version <= to {
			break
		}
		undone, err := undoOne(ctx, db, m)
		if err != nil {
			return fmt.Errorf("migration %04d_%s down: %w", m.Version, m.Name, err)
		}
		if undone && logger != nil {
			logger.Info("rolled back migration", "version", m.Version, "name", m.Name)
		}
	}
	return nil
}

func undoOne(ctx context.Context, db Conn, m Migration) (bool, error) {
	tx, err := beginLocked(ctx, db)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	var applied bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('sightline.schema_migrations') IS NOT NULL
		AND EXISTS (SELECT 1 FROM sightline.schema_migrations WHERE version = $1)`, m.Version).Scan(&applied); err != nil {
		return false, err
	}
	if !applied {
		return false, tx.Commit(ctx)
	}
	if _, err := tx.Exec(ctx, m.Down); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM sightline.schema_migrations WHERE version = $1`, m.Version); err != nil {
		return false, err
	}
	return true, tx.Commit(ctx)
}

// EnsureDatabase creates the database that databaseURL names if it does not
// exist, by connecting to the server's "postgres" database. It returns a
// clear error when the server cannot be reached at all.
func EnsureDatabase(ctx context.Context, databaseURL string) error {
	// Parsed as the pool's URL: its pool_* settings are the pool's, and the
	// server would refuse them as parameters of the connection.
	pcfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPoolSettings, err)
	}
	return ensureDatabase(ctx, pcfg.ConnConfig)
}

func ensureDatabase(ctx context.Context, cfg *pgx.ConnConfig) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		return conn.Close(ctx)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "3D000" { // invalid_catalog_name
		return Unreachable(cfg, err)
	}
	admin := cfg.Copy()
	admin.Database = "postgres"
	aconn, err := pgx.ConnectConfig(ctx, admin)
	if err != nil {
		return Unreachable(cfg, err)
	}
	defer aconn.Close(ctx)
	_, err = aconn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{cfg.Database}.Sanitize())
	if err != nil {
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created meanwhile
			return nil
		}
		return fmt.Errorf("create database %q: %w", cfg.Database, err)
	}
	return nil
}

// ErrPoolSettings marks a database URL that does not parse, its
// connection-pool settings (pool_max_conns and the like) included.
var ErrPoolSettings = errors.New("database URL")

// Open creates the database that databaseURL names if it is missing,
// connects to it with at least maxConns connections and the settings
// sightline runs with, and migrates it.
//
// JIT compiling is turned off: it costs more than it saves on sightline's
// short, frequent queries (it once took 200 ms of a 4 ms read).
func Open(ctx context.Context, databaseURL string, maxConns int32, logger *slog.Logger) (*pgxpool.Pool, error) {
	return OpenAs(ctx, databaseURL, maxConns, "", logger)
}

// OpenAs is Open with the connections' application_name set, when given,
// whatever the URL says: a process names its sessions so that another can
// end them (see projections.ApplicationName).
func OpenAs(ctx context.Context, databaseURL string, maxConns int32, applicationName string, logger *slog.Logger) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPoolSettings, err)
	}
	if err := ensureDatabase(ctx, cfg.ConnConfig); err != nil {
		return nil, err
	}
	cfg.MaxConns = max(cfg.MaxConns, maxConns)
	cfg.ConnConfig.RuntimeParams["jit"] = "off"
	if applicationName != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = applicationName
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := Up(ctx, pool, logger); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// Unreachable wraps a connection error with what to do about it.
func Unreachable(cfg *pgx.ConnConfig, err error) error {
	where := (&url.URL{Scheme: "postgres", User: url.User(cfg.User), Host: fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), Path: "/" + cfg.Database}).String()
	return fmt.Errorf("cannot reach PostgreSQL at %s: %w\n"+
		"  Start a local server (Debian/Ubuntu: sudo pg_ctlcluster 15 main start, or apt-get install postgresql),\n"+
		"  or point --database-url / SIGHTLINE_DATABASE_URL at one you have", where, err)
}
