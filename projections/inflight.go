package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// A builder's batches overlap. While PostgreSQL writes one batch, the
// builder reads, checks and applies the next, so that neither side of a
// rebuild waits for the other: the batch sent stays in flight, and the
// next one waits for its answer only when it has something to send. A
// batch is sent only once the one before has committed, so the server
// sees what it always did, one transaction after another, each with its
// checkpoint; what overlaps is the builder's own work.
//
// The next batch plans on the one in flight as if it had committed (the
// builder's memory of its streams' revisions, and its checkpoint). When
// the one in flight fails after all, the next one is dropped before
// anything of it is sent, the memory is loaded again, and the failed
// batch is applied again first, with the retries and isolation of any
// batch (applyInOrder).
//
// Only a builder's batches whose streams the builder knows are left in
// flight (see applyOnce); live batches, which are small and commit with
// other projections', go one at a time.

// inFlightBatch is a builder's batch sent and not yet answered. It
// belongs to the goroutine applying the builder's batches.
type inFlightBatch struct {
	events     []eventstore.RecordedEvent
	checkpoint eventstore.Position
	position   eventstore.Position // the checkpoint once it has committed
	finish     func() error        // reads its answer and records it; called once
}

// previousFailed says the batch in flight before this one failed, so
// this one was not sent. It does not unwrap to the failure, which is not
// this batch's: a handler error of the batch before must not isolate this
// one's events.
type previousFailed struct {
	events     []eventstore.RecordedEvent
	checkpoint eventstore.Position
	err        error
}

func (e *previousFailed) Error() string { return "the batch before failed: " + e.err.Error() }

// buildTrip starts a builder's batch whose checks go to the server with
// its writes and COMMIT, behind the BEGIN, as oneTrip's do: the
// checkpoint's lock and where it stands (sightline.lock_checkpoint), and
// that the generation is still being built (a take-over, or an operator's
// decision, committed before the lock was granted fails the batch, which
// then reads first, as readFirst does). Nothing of it goes out before the
// batch in flight has committed.
func (r *Runner) buildTrip(conn *pgx.Conn, reg registration, expected eventstore.Position) *batchTx {
	tx, checks := deferBegin(conn)
	tx.before = r.awaitInFlight
	// As readFirst says: a rebuild's batch may be lost in a crash.
	checks.Queue(`SET LOCAL synchronous_commit = off`)
	checks.Queue(`SELECT sightline.lock_checkpoint($1, $2, $3, $4, $5)`, r.p.Name(), reg.generation, r.segment, int64(expected.Commit), int64(expected.Prepare))
	checks.Queue(`SELECT sightline.expect_streams(coalesce((SELECT state IN ('building', 'scratch') FROM sightline.generations
		WHERE projection = $1 AND generation = $2), false))`, r.p.Name(), reg.generation)
	return tx
}

// awaitInFlight waits for the batch in flight, if any; a *previousFailed
// if it failed.
func (r *Runner) awaitInFlight() error {
	f := r.inFlight
	if f == nil {
		return nil
	}
	r.inFlight = nil
	if err := f.finish(); err != nil {
		return &previousFailed{events: f.events, checkpoint: f.checkpoint, err: err}
	}
	return nil
}

// acquireBeside is how long a batch waits for a connection while the
// batch in flight holds one, before it waits for that one to be answered
// and let its connection go: a pool with no other to give never leaves
// the two waiting on each other.
const acquireBeside = 50 * time.Millisecond

// acquire takes a connection for a batch.
func (r *Runner) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	if r.inFlight != nil {
		short, cancel := context.WithTimeout(ctx, acquireBeside)
		conn, err := r.pool.Acquire(short)
		cancel()
		if err == nil || ctx.Err() != nil {
			return conn, err
		}
		if err := r.awaitInFlight(); err != nil {
			return nil, err
		}
	}
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	return conn, nil
}

// applyInOrder applies a batch with applyWithRetry, after the batch in
// flight before it if that one failed.
func (r *Runner) applyInOrder(ctx context.Context, events []eventstore.RecordedEvent, checkpoint eventstore.Position) error {
	return r.againWhilePreviousFailed(ctx, func() error { return r.applyWithRetry(ctx, events, checkpoint) })
}

// settle waits for the batch in flight, applying it again if it failed,
// until none is.
func (r *Runner) settle(ctx context.Context) error {
	return r.againWhilePreviousFailed(ctx, r.awaitInFlight)
}

// againWhilePreviousFailed runs step until it no longer reports that the
// batch in flight before failed, applying that batch again each time.
func (r *Runner) againWhilePreviousFailed(ctx context.Context, step func() error) error {
	for {
		err := step()
		var prev *previousFailed
		if !errors.As(err, &prev) {
			return err
		}
		if err := r.applyAgain(ctx, prev); err != nil {
			return err
		}
	}
}

// abandon waits for the batch in flight when the pipeline ends: the next
// one starts from the position the runner has recorded, which a failed
// batch did not move.
func (r *Runner) abandon() {
	if err := r.awaitInFlight(); err != nil {
		r.forgetBuilt()
	}
}

// forgetBuilt drops the builder's memory, which planned on a batch that
// failed.
func (r *Runner) forgetBuilt() {
	m := &r.build.memory
	m.mu.Lock()
	defer m.mu.Unlock()
	m.forget()
}

// applyAgain applies a batch that failed in flight, as applyWithRetry
// would have had it failed at once, after dropping the builder's memory,
// which planned on it; the errors that end a pipeline end it.
func (r *Runner) applyAgain(ctx context.Context, prev *previousFailed) error {
	r.forgetBuilt()
	if errors.Is(prev.err, errCheckpointMoved) || errors.Is(prev.err, errSuperseded) || errors.Is(prev.err, errNotOwner) || r.hard.Err() != nil {
		return prev.err
	}
	if errors.Is(prev.err, errNotAsAssumed) {
		// Its generation is no longer being built (buildTrip): from here
		// on its batches read what they need, as readFirst has them do.
		r.build.memory.retire()
	}
	r.m.batchRetries.Inc()
	r.log.Warn("batch failed; applying it again", "events", len(prev.events), "error", prev.err)
	// Not left in flight this time: what it fails on now, applyWithRetry
	// must see, to isolate and park the event to blame.
	r.oneAtATime = true
	defer func() { r.oneAtATime = false }()
	return r.applyWithRetry(ctx, prev.events, prev.checkpoint)
}
