package projections

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// ErrVersionChanged is returned when a projection's code is older than the
// version whose read model is active (or being built): a newer version has
// taken over, and an older one does not rebuild over it.
var ErrVersionChanged = errors.New("projection version changed")

// ErrSegmentsChanged is returned when a projection's code has a number of
// segments other than its active generation's at the same version: the
// number is part of the read model's shape, changed with a new version.
var ErrSegmentsChanged = errors.New("projection segments changed")

// States of a generation, as sightline.generations keeps them.
const (
	genBuilding  = "building"
	genActive    = "active"
	genRetired   = "retired"
	genDropped   = "dropped"
	genCancelled = "cancelled"
	genScratch   = "scratch"
)

// Why a generation was created.
const (
	// ReasonFirst: the projection's first generation, active at once.
	ReasonFirst = "first"
	// ReasonVersion: the code's version is newer than the active one's.
	ReasonVersion = "version"
	// ReasonRequested: an operator asked for a rebuild.
	ReasonRequested = "requested"
	reasonVerify    = "verify"
)

// registration is one generation of a projection as the database has it,
// seen from one of its segments.
type registration struct {
	generation int
	version    int
	schema     string
	segments   int // the generation's
	// checkpoint is the segment's; the lowest segment's when the
	// generation has no such segment (it has fewer than the code).
	checkpoint eventstore.Position
}

// register makes sure the projection has an active generation and returns
// it. A new projection's first generation is created active. When the
// code's version is newer than the active one's, register also makes sure a
// generation of the code's version is being built beside it; the active one
// serves until that one takes over. Code older than the active version is
// ErrVersionChanged, and code of the active version with another number of
// segments ErrSegmentsChanged. It returns the generation as segment sees it.
// Safe to run from several processes at once.
func register(ctx context.Context, pool *pgxpool.Pool, p Projection, segment int) (registration, error) {
	tx, err := beginLocked(ctx, pool, p.Name())
	if err != nil {
		return registration{}, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	var version, gen int
	err = tx.QueryRow(ctx, `SELECT version, generation FROM sightline.projections WHERE name = $1`, p.Name()).Scan(&version, &gen)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		gen, version = 1, p.Version()
		if err := createGeneration(ctx, tx, p, gen, genActive, ReasonFirst); err != nil {
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
	case version > p.Version():
		return registration{}, fmt.Errorf("%w: %s is at version %d in the database and %d in code; an older version does not replace a newer one",
			ErrVersionChanged, p.Name(), version, p.Version())
	case version < p.Version():
		if _, _, err := ensureBuild(ctx, tx, p, ReasonVersion); err != nil {
			return registration{}, err
		}
	}
	reg, err := readRegistration(ctx, tx, p.Name(), gen, segment, SegmentsOf(p))
	if err != nil {
		return registration{}, err
	}
	if version == p.Version() && reg.segments != SegmentsOf(p) {
		return registration{}, fmt.Errorf("%w: %s version %d has %d segments in the database and %d in code; raise the version to rebuild it with %d",
			ErrSegmentsChanged, p.Name(), version, reg.segments, SegmentsOf(p), SegmentsOf(p))
	}
	reg.version = version
	return reg, tx.Commit(ctx)
}

// beginner is a pool or a connection.
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// beginLocked begins a transaction holding the projection's registration
// lock: registering, requesting a rebuild, creating a scratch copy and
// swapping generations take it.
func beginLocked(ctx context.Context, db beginner, name string) (pgx.Tx, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, lockKey("sightline.projection/"+name)); err != nil {
		tx.Rollback(ctx) //nolint:errcheck // the error returned says more
		return nil, err
	}
	return tx, nil
}

// segmentCheckpoint is SQL of the checkpoint row of segment seg of the
// generation g when g has segments segments, or else of its lowest
// segment: a runner of code split otherwise than g (while a rebuild
// changes the number) stands where all of g stands.
func segmentCheckpoint(seg, segments string) string {
	return `(SELECT c.commit_position, c.prepare_position FROM sightline.checkpoints c
		WHERE c.projection = g.projection AND c.generation = g.generation
		ORDER BY c.segment = ` + seg + ` AND g.segments = ` + segments + ` DESC, c.commit_position, c.prepare_position LIMIT 1)`
}

// activeCheckpoint reads the named projection's active generation and the
// checkpoint of segment of segments (see segmentCheckpoint), without
// locking.
func activeCheckpoint(ctx context.Context, db Querier, name string, segment, segments int) (int, eventstore.Position, error) {
	var gen int
	var commit, prepare int64
	err := db.QueryRow(ctx, `SELECT g.generation, c.commit_position, c.prepare_position
		FROM sightline.projections p JOIN sightline.generations g ON g.projection = p.name AND g.generation = p.generation
		CROSS JOIN LATERAL `+segmentCheckpoint("$2", "$3")+` c
		WHERE p.name = $1`, name, segment, segments).Scan(&gen, &commit, &prepare)
	return gen, eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}, err
}

func readRegistration(ctx context.Context, db Querier, name string, gen, segment, segments int) (registration, error) {
	reg := registration{generation: gen, schema: schemaName(name, gen)}
	var commit, prepare int64
	if err := db.QueryRow(ctx, `SELECT c.commit_position, c.prepare_position, g.version, g.segments
		FROM sightline.generations g CROSS JOIN LATERAL `+segmentCheckpoint("$3", "$4")+` c
		WHERE g.projection = $1 AND g.generation = $2`, name, gen, segment, segments).Scan(&commit, &prepare, &reg.version, &reg.segments); err != nil {
		return registration{}, fmt.Errorf("read checkpoint of %s generation %d: %w", name, gen, err)
	}
	reg.checkpoint = eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}
	return reg, nil
}

// ensureBuild makes sure a generation of p's version is being built and
// returns it; created says it is new. A build of an older version is
// cancelled for it; a build of a newer one is ErrVersionChanged.
func ensureBuild(ctx context.Context, tx pgx.Tx, p Projection, reason string) (gen int, created bool, err error) {
	var version int
	err = tx.QueryRow(ctx, `SELECT generation, version FROM sightline.generations WHERE projection = $1 AND state = 'building'`,
		p.Name()).Scan(&gen, &version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return 0, false, err
	case version == p.Version():
		return gen, false, nil
	case version > p.Version():
		return 0, false, fmt.Errorf("%w: version %d of %s is being built, and the code has %d", ErrVersionChanged, version, p.Name(), p.Version())
	default:
		if err := retire(ctx, tx, p.Name(), gen, genCancelled, 0); err != nil {
			return 0, false, err
		}
	}
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(generation), 0) + 1 FROM sightline.generations WHERE projection = $1`,
		p.Name()).Scan(&gen); err != nil {
		return 0, false, err
	}
	if err := createGeneration(ctx, tx, p, gen, genBuilding, reason); err != nil {
		return 0, false, err
	}
	return gen, true, nil
}

// createGeneration creates the schema, tables and checkpoint of one
// generation. An active one gets its deferred indexes at once: its tables
// are empty.
func createGeneration(ctx context.Context, tx pgx.Tx, p Projection, gen int, state, reason string) error {
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
	indexed := state == genActive
	if indexed {
		if err := createIndexes(ctx, tx, p, schema); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO sightline.checkpoints (projection, generation, segment)
		SELECT $1, $2, s FROM generate_series(0, $3 - 1) s`, p.Name(), gen, SegmentsOf(p)); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `INSERT INTO sightline.generations (projection, generation, version, state, reason, indexed, activated_at, segments)
		VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $4 = 'active' THEN now() END, $7)`, p.Name(), gen, p.Version(), state, reason, indexed, SegmentsOf(p))
	return err
}

// createIndexes runs the statements of p's deferred indexes, if it has any.
func createIndexes(ctx context.Context, tx pgx.Tx, p Projection, schema string) error {
	ix, ok := p.(Indexer)
	if !ok {
		return nil
	}
	for _, stmt := range ix.Indexes(schema) {
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("index %s: %w", p.Name(), err)
		}
	}
	return nil
}

// retire ends a generation: state is retired (its tables are kept for
// grace, then dropped), cancelled or dropped. A projector still applying it
// stops at its next batch: the checkpoint row says it is superseded.
func retire(ctx context.Context, tx pgx.Tx, name string, gen int, state string, grace time.Duration) error {
	if _, err := tx.Exec(ctx, `UPDATE sightline.checkpoints SET superseded = true WHERE projection = $1 AND generation = $2`, name, gen); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `UPDATE sightline.generations SET state = $3, retired_at = now(), drop_after = now() + $4::interval
		WHERE projection = $1 AND generation = $2`, name, gen, state, grace)
	return err
}

// pointViews makes readmodel.<table> read the tables in schema. A view
// whose columns stay compatible is replaced in place, so views that
// dashboards built on it survive; one whose columns changed is dropped and
// created again.
func pointViews(ctx context.Context, tx pgx.Tx, p Projection, schema string) error {
	for _, t := range p.Tables() {
		view := pgx.Identifier{"readmodel", t}.Sanitize()
		def := `CREATE OR REPLACE VIEW ` + view + ` AS SELECT * FROM ` + pgx.Identifier{schema, t}.Sanitize()
		if _, err := tx.Exec(ctx, `SAVEPOINT sightline_view`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, def); err == nil {
			if _, err := tx.Exec(ctx, `RELEASE SAVEPOINT sightline_view`); err != nil {
				return err
			}
			continue
		}
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT sightline_view`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DROP VIEW IF EXISTS `+view+`; `+def); err != nil {
			return fmt.Errorf("view %s: %w (a view that depends on it may need dropping first)", view, err)
		}
	}
	return nil
}

// dropGeneration drops a generation's schema and its rows. It gives up,
// to try again later, rather than wait long for a query still reading
// the tables.
func dropGeneration(ctx context.Context, pool *pgxpool.Pool, name string, gen int) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
		return err
	}
	// The checkpoint row first, as batches lock it before the tables: a
	// batch of the generation in flight finishes, and the next finds it gone.
	for _, table := range []string{"sightline.checkpoints", "sightline.parked", "sightline.gaps"} {
		if _, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE projection = $1 AND generation = $2`, name, gen); err != nil {
			return err
		}
	}
	if _, err := tx.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{schemaName(name, gen)}.Sanitize()+` CASCADE`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE sightline.generations SET state = 'dropped' WHERE projection = $1 AND generation = $2`, name, gen); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// dropExpired drops the generations of a projection that are done with:
// retired ones past their grace period, cancelled builds, and scratch
// copies no verify holds any more.
func dropExpired(ctx context.Context, pool *pgxpool.Pool, name string) ([]int, error) {
	rows, err := pool.Query(ctx, `SELECT generation FROM sightline.generations
		WHERE projection = $1 AND (state = 'retired' AND drop_after <= now() OR state = 'cancelled'
			OR state = 'scratch' AND pg_try_advisory_xact_lock(`+scratchKey("projection", "generation")+`))`, name)
	if err != nil {
		return nil, err
	}
	gens, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, err
	}
	var dropped []int
	for _, gen := range gens {
		if err := dropGeneration(ctx, pool, name, gen); err != nil {
			return dropped, fmt.Errorf("drop %s generation %d: %w", name, gen, err)
		}
		dropped = append(dropped, gen)
	}
	return dropped, nil
}

func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64())
}

// buildKey is the session lock a projection's builder holds.
func buildKey(name string) int64 { return lockKey("sightline.build/" + name) }

// buildHeld is SQL that says whether another session holds the build lock
// whose halves are parameters classid and objid (see buildLockHalves). It
// looks rather than trying the lock, so that asking never makes a
// builder's claim fail.
func buildHeld(classid, objid string) string {
	return `EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND pid <> pg_backend_pid()
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		AND classid = ` + classid + `::bigint::oid AND objid = ` + objid + `::bigint::oid)`
}

// buildLockHalves are the two halves of a bigint advisory lock key, as
// pg_locks shows them.
func buildLockHalves(name string) (int64, int64) {
	k := uint64(buildKey(name))
	return int64(k >> 32), int64(k & 0xffffffff)
}

// scratchKey is the SQL of the session lock a verify holds on its scratch
// generation, from SQL expressions of the projection and the generation,
// so that a sweep can tell abandoned scratch copies.
func scratchKey(projection, generation string) string {
	return `hashtext('sightline.scratch'), hashtext(` + projection + ` || '/' || ` + generation + `)`
}
