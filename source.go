package sightline

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/esdb"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/migrate"
	"github.com/sightlinehq/sightline/projections"
)

// source is an event store the commands can run on.
type source interface {
	eventstore.Store
	Connected() bool
	Close()
}

// app is what the long-running commands share: the migrated database and
// the event source.
type app struct {
	pool       *pgxpool.Pool
	store      source
	sourceName string // for metrics: postgres or esdb
}

// openDatabase creates the database if missing, connects and migrates.
func openDatabase(ctx context.Context, c *Config) (*pgxpool.Pool, error) {
	pool, err := migrate.OpenAs(ctx, c.DatabaseURL, 16, projections.ApplicationName(c.processID), c.logger)
	if errors.Is(err, migrate.ErrPoolSettings) {
		return nil, usagef("%v", err)
	}
	return pool, err
}

// openApp opens the database and the configured event source.
func openApp(ctx context.Context, c *Config) (*app, error) {
	var esdbURL string
	switch {
	case c.Source == SourcePostgres:
	case esdb.IsURL(c.Source):
		esdbURL = c.Source
	default:
		return nil, usagef(`source %q: want "postgres" or an esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover:// connection string`, c.sourceForLogs())
	}
	if esdbURL != "" {
		if _, err := esdb.ParseURL(esdbURL); err != nil {
			return nil, usagef("source: %v", err)
		}
	}
	pool, err := openDatabase(ctx, c)
	if err != nil {
		return nil, err
	}
	if esdbURL != "" {
		store, err := esdb.New(esdb.Config{URL: esdbURL, Logger: c.logger})
		if err != nil {
			pool.Close()
			return nil, usageError{err}
		}
		return &app{pool: pool, store: store, sourceName: "esdb"}, nil
	}
	store, err := pgstore.New(pool, pgstore.Config{Logger: c.logger})
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &app{pool: pool, store: store, sourceName: "postgres"}, nil
}

func (a *app) Close() {
	a.store.Close()
	a.pool.Close()
}

func fmtCount(n int64) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}
