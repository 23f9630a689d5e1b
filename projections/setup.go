package projections

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// ErrVersionChanged is returned when a projection's code has a different
// version than the one whose read model is active.
var ErrVersionChanged = errors.New("projection version changed")

// registration is what the database says about a projection's active generation.
type registration struct {
	generation int
	schema     string
	checkpoint eventstore.Position
}

// register makes sure the projection's active generation exists: its schema
// with the projection's tables and the per-stream revisions table, its
// checkpoint row and the readmodel views. It is idempotent and safe to run
// from several processes at once.
func register(ctx context.Context, pool *pgxpool.Pool, p Projection) (registration, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return registration{}, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey(p.Name())); err != nil {
		return registration{}, err
	}
	var version, gen int
	err = tx.QueryRow(ctx, `SELECT version, generation FROM sightline.projections WHERE name = $1`, p.Name()).Scan(&version, &gen)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		gen = 1
		if err := createGeneration(ctx, tx, p, gen); err != nil {
			return registration{}, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO sightline.projections (name, version, generation, status) VALUES ($1, $2, $3, 'catching-up')`,
			p.Name(), p.Version(), gen); err != nil {
			return registration{}, err
		}
		if err := pointViews(ctx, tx, p, schemaName(p.Name(), gen)); err != nil {
			return registration{}, err
		}
	case err != nil:
		return registration{}, err
	case version != p.Version():
		return registration{}, fmt.Errorf("%w: %s is at version %d in the database and %d in code; rebuild it to switch",
			ErrVersionChanged, p.Name(), version, p.Version())
	}
	reg := registration{generation: gen, schema: schemaName(p.Name(), gen)}
	var commit, prepare int64
	if err := tx.QueryRow(ctx, `SELECT commit_position, prepare_position FROM sightline.checkpoints WHERE projection = $1 AND generation = $2`,
		p.Name(), gen).Scan(&commit, &prepare); err != nil {
		return registration{}, fmt.Errorf("read checkpoint of %s: %w", p.Name(), err)
	}
	reg.checkpoint = eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}
	return reg, tx.Commit(ctx)
}

// createGeneration creates the schema and tables of one generation.
func createGeneration(ctx context.Context, tx pgx.Tx, p Projection, gen int) error {
	schema := schemaName(p.Name(), gen)
	ident := pgx.Identifier{schema}.Sanitize()
	if _, err := tx.Exec(ctx, `CREATE SCHEMA `+ident); err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE `+ident+`._stream_revisions (
		stream_id text PRIMARY KEY,
		revision  bigint NOT NULL)`); err != nil {
		return err
	}
	if err := p.Setup(ctx, tx, schema); err != nil {
		return fmt.Errorf("set up %s: %w", p.Name(), err)
	}
	_, err := tx.Exec(ctx, `INSERT INTO sightline.checkpoints (projection, generation) VALUES ($1, $2)`, p.Name(), gen)
	return err
}

// pointViews makes readmodel.<table> read the tables in schema.
func pointViews(ctx context.Context, tx pgx.Tx, p Projection, schema string) error {
	for _, t := range p.Tables() {
		view := pgx.Identifier{"readmodel", t}.Sanitize()
		// Dropped first: a new generation's table may have other columns.
		if _, err := tx.Exec(ctx, `DROP VIEW IF EXISTS `+view+`; CREATE VIEW `+view+` AS SELECT * FROM `+pgx.Identifier{schema, t}.Sanitize()); err != nil {
			return fmt.Errorf("view %s: %w", view, err)
		}
	}
	return nil
}

func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte("sightline.projection/" + name))
	return int64(h.Sum64())
}
