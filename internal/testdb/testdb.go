package testdb

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/internal/migrate"
)

// AdminURLDefault is the server tests use when TEST_DATABASE_URL is unset.
const AdminURLDefault = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL is the connection string of the database tests create theirs from.
func AdminURL() string {
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return u
	}
	return AdminURLDefault
}

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
)

// DB is a fresh, migrated database that lives as long as one test.
type DB struct {
	Pool *pgxpool.Pool
	URL  string
	Name string
}

// New creates a fresh migrated database for t and drops it when t ends. It
// fails the test, never skips it, when PostgreSQL cannot be reached.
func New(t testing.TB) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	templateOnce.Do(func() { templateName, templateErr = ensureTemplate(ctx) })
	if templateErr != nil {
		t.Fatalf("test database: %v\n(set TEST_DATABASE_URL to a PostgreSQL server the tests may create databases on)", templateErr)
	}
	admin := connectAdmin(ctx, t)
	defer admin.Close(ctx)
	name := fmt.Sprintf("sltest_%d_%08x", time.Now().UnixNano()%1e9, rand.Uint32())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+" TEMPLATE "+templateName); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	cfg, err := pgxpool.ParseConfig(AdminURL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Database = name
	cfg.MaxConns = 16
	cfg.ConnConfig.RuntimeParams["jit"] = "off" // as migrate.Open sets it
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pool.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Logf("drop test database %s: %v", name, err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	u := cfg.ConnConfig.Config
	return &DB{Pool: pool, Name: name, URL: fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", u.User, u.Host, u.Port, name)}
}

func connectAdmin(ctx context.Context, t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		cfg, _ := pgx.ParseConfig(AdminURL())
		if cfg != nil {
			err = migrate.Unreachable(cfg, err)
		}
		t.Fatalf("test database: %v", err)
	}
	return conn
}

// ensureTemplate creates, once per schema version, a migrated database that
// each test's database is copied from.
func ensureTemplate(ctx context.Context) (string, error) {
	all, err := migrate.All()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, m := range all {
		fmt.Fprintf(h, "%d\n%s\n", m.Version, m.Up)
	}
	name := "sltest_template_" + hex.EncodeToString(h.Sum(nil))[:12]

	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		cfg, _ := pgx.ParseConfig(AdminURL())
		if cfg != nil {
			return "", migrate.Unreachable(cfg, err)
		}
		return "", err
	}
	defer admin.Close(ctx)
	// Test binaries of several packages start at once: take turns.
	if _, err := admin.Exec(ctx, `SELECT pg_advisory_lock(7406745143525210947)`); err != nil {
		return "", err
	}
	defer admin.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(7406745143525210947)`) //nolint:errcheck
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", err
	}
	if exists {
		return name, nil
	}
	// A run that died half-way leaves its work in progress behind.
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+"_wip WITH (FORCE)"); err != nil {
		return "", err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+"_wip"); err != nil {
		return "", err
	}
	cfg, err := pgx.ParseConfig(AdminURL())
	if err != nil {
		return "", err
	}
	cfg.Database = name + "_wip"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", err
	}
	err = migrate.Up(ctx, conn, nil)
	conn.Close(ctx)
	if err != nil {
		return "", err
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+name+"_wip RENAME TO "+name); err != nil {
		return "", err
	}
	return name, nil
}
