package projections

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sightlinehq/sightline/eventstore"
)

// The take-over of a rebuild (see rebuild.go): once every segment of the
// build has caught up, swap freezes the active generation and makes the
// built one active in one transaction.

// takeOver waits until the build has caught up with the source, then
// swaps it in; it tries again while the active generation is ahead.
// Caught up means applied as far as the reader had caught up when this
// found it caught up: the reader runs messages ahead, and a take-over
// before they are applied would leave them to whichever projector runs
// next, if any does.
func (b *Runner) takeOver() error {
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(2*time.Second), backoff.WithMaxElapsedTime(0))
	for {
		for _, part := range b.segmentRunners() {
			if err := part.waitCaughtUp(); err != nil {
				return err
			}
		}
		for _, part := range b.segmentRunners() {
			part.build.memory.retire() // the generation may be active from here on
		}
		done, err := b.swap(b.soft)
		if err != nil {
			b.mu.Lock()
			b.state.lastError = err.Error()
			b.mu.Unlock()
		}
		switch {
		case done:
			return nil
		case errors.Is(err, errSuperseded):
			return err
		case takeOverFatal(err):
			b.log.Error("the rebuild cannot take over; it stops", "error", err)
			return err
		case err != nil && b.soft.Err() == nil:
			b.log.Warn("taking over failed; trying again", "error", err)
		}
		if !sleep(b.soft, retry.NextBackOff()) {
			return b.soft.Err()
		}
	}
}

// waitCaughtUp waits until the builder's segment has applied as far as its
// reader had caught up when it first caught up.
func (b *Runner) waitCaughtUp() error {
	for {
		b.mu.Lock()
		caughtUp, at := b.state.caughtUp, b.state.caughtUpAt
		b.mu.Unlock()
		if caughtUp {
			if err := b.waitSegment(b.soft, at); err != nil {
				return cmp.Or(b.soft.Err(), err)
			}
			return nil
		}
		if !sleep(b.soft, 100*time.Millisecond) {
			return b.soft.Err()
		}
	}
}

// takeOverFatal says a take-over failed for a reason that trying again does
// not change: a view that depends on a readmodel view whose columns
// changed, an index the data violates, a statement PostgreSQL rejects, or
// the lost build lock.
func takeOverFatal(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "2B", "23", "42":
			return true
		}
	}
	return errors.Is(err, errClaimLost)
}

// errClaimLost: the connection that held the build lock is gone, so
// another process may be building.
var errClaimLost = errors.New("lost the build lock")

// reached says whether the build has applied as far as target. Only its
// checkpoint says so: a live subscription with nothing pending may still
// have events on their way that the active generation has applied.
func (b *Runner) reached(target eventstore.Position) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return !b.position.Before(target)
}

// waitReached waits up to d for the build to reach target.
func (b *Runner) waitReached(ctx context.Context, target eventstore.Position, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return b.WaitFor(ctx, target) == nil
}

// reconcile applies to the generation that took over the decisions
// operators took on the one it replaced while it was built: an event parked
// in both and skipped (or retried and applied) there is skipped (or
// retried) here too, so that its stream is not held again.
func (b *Runner) reconcile(ctx context.Context) {
	rows, err := b.pool.Query(ctx, `SELECT DISTINCT ON (n.id) n.id, o.state FROM sightline.parked n
		JOIN sightline.parked o ON o.projection = n.projection AND o.stream_id = n.stream_id AND o.revision = n.revision
			AND o.event_id = n.event_id AND o.generation < n.generation AND o.state IN ('skipped', 'applied')
		WHERE n.projection = $1 AND n.generation = $2 AND n.state = 'parked'
		ORDER BY n.id, o.generation DESC`, b.p.Name(), b.reg.generation)
	if err != nil {
		b.log.Warn("could not carry operators' decisions over to the new generation", "error", err)
		return
	}
	type decision struct {
		ID    int64
		State string
	}
	decisions, err := pgx.CollectRows(rows, pgx.RowToStructByPos[decision])
	if err != nil {
		b.log.Warn("could not carry operators' decisions over to the new generation", "error", err)
		return
	}
	for _, d := range decisions {
		release := RetryParked
		if d.State == ParkedStateSkipped {
			release = SkipParked
		}
		rel, err := release(ctx, b.pool, b.p, d.ID)
		switch {
		case err != nil:
			b.log.Warn("could not carry an operator's decision over to the new generation", "parked_id", d.ID, "was", d.State, "error", err)
		case rel.Parked != nil:
			b.log.Warn("carried an operator's decision over; its stream is held again", "parked_id", d.ID, "was", d.State, "now_parked", rel.Parked.ID)
		default:
			b.log.Info("carried an operator's decision over to the new generation", "parked_id", d.ID, "was", d.State, "applied", len(rel.Applied))
		}
	}
}

// index creates the generation's deferred indexes, once.
func (b *Runner) index(ctx context.Context) error {
	if b.build.indexed {
		return nil
	}
	start := time.Now()
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	var indexed bool
	var state string
	if err := tx.QueryRow(ctx, `SELECT indexed, state FROM sightline.generations WHERE projection = $1 AND generation = $2 FOR UPDATE`,
		b.p.Name(), b.reg.generation).Scan(&indexed, &state); err != nil {
		return err
	}
	if state != genBuilding {
		return fmt.Errorf("%w: generation %d of %s is %s", errSuperseded, b.reg.generation, b.p.Name(), state)
	}
	if !indexed {
		if err := createIndexes(ctx, tx, b.p, b.reg.schema); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE sightline.generations SET indexed = true WHERE projection = $1 AND generation = $2`,
			b.p.Name(), b.reg.generation); err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	if !indexed {
		if _, ok := b.p.(Indexer); ok {
			b.log.Info("indexes built after the bulk load", "took", time.Since(start).Round(time.Millisecond))
		}
	}
	// Dashboards' queries meet the new tables with their statistics.
	if err := analyze(ctx, b.pool, b.reg.schema, false); err != nil && ctx.Err() == nil {
		b.log.Warn("could not analyze the rebuilt tables; autovacuum will", "error", err)
	}
	b.build.indexed = true
	return nil
}

// swap makes the generation built the active one, in one transaction; false
// when the build did not catch up with the active generation in time.
func (b *Runner) swap(ctx context.Context) (bool, error) {
	if b.build.claim != nil {
		if err := b.build.claim.Ping(ctx); err != nil {
			return false, fmt.Errorf("%w: %v", errClaimLost, err)
		}
	}
	if err := b.index(ctx); err != nil {
		return false, err
	}
	name, gen := b.p.Name(), b.reg.generation
	// Taking over waits for every query reading the views; a long one would
	// hold the active generation back, and queue every reader behind it.
	var long int
	var views, names []string
	for _, t := range b.p.Tables() {
		views, names = append(views, pgx.Identifier{"readmodel", t}.Sanitize()), append(names, "readmodel."+t)
	}
	if err := b.pool.QueryRow(ctx, `SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
			AND l.relation IN (SELECT to_regclass(v) FROM unnest($1::text[]) v)
			AND a.xact_start < now() - interval '1 second'`, views).Scan(&long); err != nil {
		return false, err
	}
	if long > 0 {
		return false, fmt.Errorf("waiting for %d transactions that have read %s for over a second", long, strings.Join(names, ", "))
	}
	// Come close to the active generation before holding it back: every
	// segment of the build as far as the furthest segment of the active
	// one, which may have another number of them.
	var activePos eventstore.Position
	if err := b.pool.QueryRow(ctx, `SELECT c.commit_position, c.prepare_position
		FROM sightline.projections p JOIN sightline.checkpoints c ON c.projection = p.name AND c.generation = p.generation
		WHERE p.name = $1 ORDER BY c.commit_position DESC, c.prepare_position DESC LIMIT 1`, name).Scan(&activePos.Commit, &activePos.Prepare); err != nil {
		return false, err
	}
	if !b.waitReached(ctx, activePos, takeOverWait) {
		return false, ctx.Err()
	}
	tx, err := beginLocked(ctx, b.pool, name)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	// A builder that vanishes mid-swap must not hold the active generation
	// back until TCP gives up on it.
	if _, err := tx.Exec(ctx, `SET LOCAL idle_in_transaction_session_timeout = '15s'`); err != nil {
		return false, err
	}
	var state string
	if err := tx.QueryRow(ctx, `SELECT state FROM sightline.generations WHERE projection = $1 AND generation = $2`, name, gen).Scan(&state); err != nil {
		return false, err
	}
	if state != genBuilding {
		return false, fmt.Errorf("%w: generation %d of %s is %s", errSuperseded, gen, name, state)
	}
	var active int
	if err := tx.QueryRow(ctx, `SELECT generation FROM sightline.projections WHERE name = $1 FOR UPDATE`, name).Scan(&active); err != nil {
		return false, err
	}
	// Freeze the active generation: its batches wait from here to the end
	// of this transaction. The build catches up with its furthest segment.
	_, frozen, err := lockCheckpoints(ctx, tx, name, active)
	if err != nil {
		return false, err
	}
	if !b.waitReached(ctx, frozen, takeOverWait) {
		b.mu.Lock()
		pos := b.position
		b.mu.Unlock()
		b.log.Info("not caught up with the active generation yet", "active_position", frozen.String(), "position", pos.String())
		return false, ctx.Err()
	}
	built, _, err := lockCheckpoints(ctx, tx, name, gen) // the build's batches wait too: its position is final
	if err != nil {
		return false, err
	}
	if built.Before(frozen) {
		return false, nil
	}
	if err := retire(ctx, tx, name, active, genRetired, b.cfg.RetiredGrace); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `UPDATE sightline.generations SET state = 'active', activated_at = now() WHERE projection = $1 AND generation = $2`, name, gen); err != nil {
		return false, err
	}
	if _, err := tx.Exec(ctx, `UPDATE sightline.projections SET generation = $2, version = $3, updated_at = now() WHERE name = $1`,
		name, gen, b.p.Version()); err != nil {
		return false, err
	}
	// Readers of the views wait for this lock; do not keep them waiting
	// long behind a long query: give up and try again.
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '1s'`); err != nil {
		return false, err
	}
	if err := pointViews(ctx, tx, b.p, b.reg.schema); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, err
	}
	b.log.Info("rebuilt generation took over", "replaced", active, "position", built.String(), "replaced_dropped_in", b.cfg.RetiredGrace)
	return true, nil
}

// lockCheckpoints locks a generation's checkpoint rows, every segment's,
// in the order of their segments, and returns the lowest and the highest.
func lockCheckpoints(ctx context.Context, tx pgx.Tx, name string, gen int) (lowest, highest eventstore.Position, err error) {
	rows, err := tx.Query(ctx, `SELECT commit_position, prepare_position FROM sightline.checkpoints
		WHERE projection = $1 AND generation = $2 ORDER BY segment FOR UPDATE`, name, gen)
	if err != nil {
		return lowest, highest, fmt.Errorf("lock checkpoints of %s generation %d: %w", name, gen, err)
	}
	n := 0
	var commit, prepare int64
	_, err = pgx.ForEachRow(rows, []any{&commit, &prepare}, func() error {
		p := eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}
		if n == 0 || p.Before(lowest) {
			lowest = p
		}
		if n == 0 || highest.Before(p) {
			highest = p
		}
		n++
		return nil
	})
	if err == nil && n == 0 {
		err = pgx.ErrNoRows
	}
	if err != nil {
		return lowest, highest, fmt.Errorf("lock checkpoints of %s generation %d: %w", name, gen, err)
	}
	return lowest, highest, nil
}
