package projections

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
)

// apply applies one batch in one transaction: the read-model writes, the
// per-stream revisions, the parked events and the checkpoint commit
// together or not at all.
//
// The batch goes to the projection in one Apply call. When that fails on
// the events rather than the infrastructure, apply returns a handlerError
// and the batch is applied again with an isolation: in savepoints, halving
// the set of streams until each failing stream is alone, then that stream's
// events one at a time. An event that fails its last attempt is parked with
// the rest of its stream held behind it, and every other stream is applied
// and the checkpoint advances all the same; one that has attempts left
// rolls the transaction back with an eventRetryError, so that the backoff
// before its next attempt holds no transaction open.
func (r *Runner) apply(ctx context.Context, events []eventstore.RecordedEvent, checkpoint eventstore.Position, iso *isolation) error {
	err := r.applyOnce(ctx, events, checkpoint, iso, true)
	if errors.Is(err, errNotAsAssumed) {
		return r.applyOnce(ctx, events, checkpoint, iso, false)
	}
	return err
}

// errNotAsAssumed says a batch sent in one round trip found its streams
// other than it assumed (see oneTrip), and rolled back.
var errNotAsAssumed = errors.New("streams not where the batch assumed")

// applyOnce is one attempt at apply. With assume, a live batch without an
// isolation whose streams' events follow one another goes to the server in
// one round trip (see oneTrip), and so does a builder's batch whose
// streams the builder knows, which it leaves in flight (see inFlightBatch).
func (r *Runner) applyOnce(ctx context.Context, events []eventstore.RecordedEvent, checkpoint eventstore.Position, iso *isolation, assume bool) (err error) {
	start := time.Now()
	streams := byStream(events, r.p.Filter(), r.segment, r.segments)

	r.mu.Lock()
	expected, reg := r.position, r.reg
	r.mu.Unlock()
	if r.inFlight != nil {
		expected = r.inFlight.position // where it leaves the checkpoint, if it commits
	}
	if len(streams.order) == 0 && !expected.Before(checkpoint) {
		return nil // nothing to apply and nothing to record
	}

	revsTable := pgx.Identifier{reg.schema, "_stream_revisions"}.Sanitize()
	var known *knownRevisions // a builder's memory of its generation: nil otherwise
	if r.build != nil {
		m := &r.build.memory
		m.mu.Lock()
		defer m.mu.Unlock()
		defer func() {
			if err != nil && !failedOnEvents(err) {
				m.forget() // a COMMIT that failed may have happened; the next batch loads what is there
			}
		}()
		known = m.recall(ctx, r.pool, revsTable, r.p.Name(), reg.generation)
	}
	pipelined := assume && r.build != nil && !r.oneAtATime && r.shared == nil && iso == nil && known != nil && !known.readsHeld()
	if !pipelined {
		if err := r.awaitInFlight(); err != nil {
			return err
		}
	}

	conn, err := r.acquire(ctx)
	if err != nil {
		return err
	}
	handedOff := false // to the batch in flight, which releases the connection
	defer func() {
		if !handedOff {
			conn.Release() // back to the pool only when idle: after COMMIT or the rollback below
		}
	}()

	var tx *batchTx
	var last, held map[string]int64
	if assume && r.build == nil && iso == nil {
		last = assumedRevisions(streams)
	}
	assumed := last != nil
	if !assumed && !pipelined && r.shared != nil { // reads first: no group waits for it
		r.shared.alone(r)
		defer r.shared.free(r)
	}
	switch {
	case pipelined:
		tx, last = r.buildTrip(conn.Conn(), reg, expected), known.last // plan only reads it
	case assumed:
		tx = r.oneTrip(conn.Conn(), reg, expected, revsTable, streams, last)
	default:
		tx, last, held, known, err = r.readFirst(ctx, conn.Conn(), reg, expected, revsTable, streams, known)
	}
	if tx != nil {
		defer func() {
			if !handedOff {
				tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // ErrTxClosed once committed; otherwise the error that brought us here is the one to report
			}
		}()
	}
	if err != nil {
		return err
	}

	plan, err := r.plan(ctx, streams, last, held)
	if err != nil {
		return err
	}
	if iso != nil {
		live := plan.live()
		for _, s := range live {
			iso.recall(s)
		}
		if err := r.isolate(ctx, tx, iso, live, true); err != nil {
			return err
		}
	}
	// The projection's queued writes, the bookkeeping and the COMMIT go to
	// the server in one round trip.
	queue := &pgx.Batch{}
	if toApply := plan.live(); iso == nil && len(toApply) > 0 {
		b := &Batch{Tx: tx, Schema: reg.schema, Events: eventsOf(toApply), queue: queue}
		if err := safeApply(ctx, r.p, b); err != nil {
			// Apply may have failed on an event the checks, still unsent,
			// would have kept from it (a duplicate, one of a held stream):
			// they answer first, so that only an event that is its to
			// apply gets isolated and perhaps parked.
			if cerr := tx.ready(ctx); cerr != nil {
				return r.assumptionFailed(cerr, reg, expected)
			}
			return classify(ctx, tx.conn, err)
		}
	}
	if tx.unsentErr != nil { // Apply read, the checks sent before its read failed, and Apply went on
		return r.assumptionFailed(tx.unsentErr, reg, expected)
	}
	fromProjection := queue.Len()

	parked, err := r.park(ctx, tx, plan)
	if err != nil {
		return r.assumptionFailed(err, reg, expected)
	}
	if streams, revs := plan.revisions(); known != nil {
		known.queueWrites(queue, revsTable, streams, revs)
	} else if assumed {
		// The checks hold the streams where last says: which are new is
		// known.
		(&knownRevisions{last: last}).queueWrites(queue, revsTable, streams, revs)
	} else if len(streams) > 0 {
		queue.Queue(`INSERT INTO `+revsTable+` (stream_id, revision)
			SELECT * FROM unnest($1::text[], $2::bigint[])
			ON CONFLICT (stream_id) DO UPDATE SET revision = excluded.revision`, streams, revs)
	}
	for _, g := range plan.gaps {
		queue.Queue(`INSERT INTO sightline.gaps (projection, generation, stream_id, from_revision, to_revision)
			VALUES ($1, $2, $3, $4, $5)`, r.p.Name(), reg.generation, g.stream, int64(g.from), int64(g.to))
	}
	newPosition := expected
	if expected.Before(checkpoint) {
		newPosition = checkpoint
		queue.Queue(`UPDATE sightline.checkpoints SET commit_position = $3, prepare_position = $4, updated_at = now()
			WHERE projection = $1 AND generation = $2 AND segment = $5`, r.p.Name(), reg.generation, int64(checkpoint.Commit), int64(checkpoint.Prepare), r.segment)
		r.queueNotify(queue, checkpoint)
	}
	if pipelined {
		// The batch before must have committed: this one's checks assume
		// its checkpoint, and the builder's memory its revisions.
		if err := tx.awaitBefore(); err != nil {
			return err
		}
		// Remembered as committed, so that the next batch, prepared
		// while this one is on its way, plans on it; if it fails, the
		// next batch fails with it and the memory is loaded again.
		r.build.memory.committed(plan, parked)
		wait := sendCommit(ctx, tx, queue, fromProjection)
		handedOff = true
		r.inFlight = &inFlightBatch{events: events, checkpoint: checkpoint, position: newPosition, finish: func() error {
			defer conn.Release()
			defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // as above
			if err := wait(); err != nil {
				return r.assumptionFailed(err, reg, expected)
			}
			r.committed(ctx, reg, plan, parked, newPosition, start, len(events))
			return nil
		}}
		return nil
	}
	if err := r.commit(ctx, tx, queue, fromProjection, newPosition); err != nil {
		return r.assumptionFailed(err, reg, expected)
	}
	if r.build != nil {
		r.build.memory.committed(plan, parked)
	}
	r.committed(ctx, reg, plan, parked, newPosition, start, len(events))
	return nil
}

// committed records a committed batch: the runner's position, the
// streams' watchers, the metrics and logs, and the tables' statistics.
func (r *Runner) committed(ctx context.Context, reg registration, plan batchPlan, parked []parkedRow, newPosition eventstore.Position, start time.Time, events int) {
	now := time.Now()
	applied := 0
	for e := range plan.applied() {
		applied++
		r.m.endToEnd.Observe(now.Sub(e.CreatedAt).Seconds())
	}
	moved, _ := plan.revisions()
	for _, row := range parked {
		moved = append(moved, row.event.StreamID)
	}
	r.mu.Lock()
	r.setPositionLocked(newPosition)
	r.wakeStreamsLocked(moved)
	r.state.applied += uint64(applied)
	r.state.lastProgress = now
	r.mu.Unlock()
	r.m.applied.Add(float64(applied))
	r.m.duplicate.Add(float64(plan.duplicates))
	r.m.gapUnfilled.Add(float64(plan.unfilled))
	r.m.gapsRepaired.Add(float64(plan.repaired))
	r.m.batchDuration.Observe(now.Sub(start).Seconds())
	r.m.batchEvents.Observe(float64(events))
	for _, g := range plan.gaps {
		r.log.Warn("revisions missing from the store; going on without them",
			"stream", g.stream, "from_revision", g.from, "to_revision", g.to)
	}
	if len(parked) > 0 {
		r.logParked(parked)
		r.refreshParked(ctx)
	}
	r.mu.Lock()
	filling := r.build != nil || !r.state.caughtUp
	r.mu.Unlock()
	r.analyzeWhileGrowing(ctx, reg, applied, filling)
}

// assumedRevisions is what a batch may assume of its streams when it is
// sent in one round trip: that each stands just before the batch's first
// event of it, as it does when nothing arrived twice, late or out of
// order. It returns the last revision so assumed of each stream that has
// one (a stream whose first event in the batch is revision 0 is assumed
// new), or nil when some stream's events in the batch do not follow one
// another, so that the batch must read first.
func assumedRevisions(s streamEvents) map[string]int64 {
	last := make(map[string]int64, len(s.order))
	for i, stream := range s.order {
		events := s.events[i]
		slices.SortStableFunc(events, func(a, b eventstore.RecordedEvent) int { return compareUint(a.Revision, b.Revision) })
		if !inSequence(events, events[0].Revision) {
			return nil
		}
		if first := events[0].Revision; first > 0 {
			last[stream] = int64(first) - 1
		}
	}
	return last
}

// oneTrip starts a batch of the active generation that need not wait for
// the answers to its first statements. It assumes what a batch that reads
// first would have read (assumedRevisions: no duplicate, no gap, no held
// stream, and the checkpoint where this runner left it), and queues,
// behind the BEGIN, statements that lock the checkpoint and check those
// assumptions, raising if one is wrong (sightline.lock_checkpoint and
// expect_streams, migration 0008). They go to the server with the batch's
// writes and its COMMIT, in one round trip; a raise skips the rest of the
// round trip, so the batch writes nothing (assumptionFailed). A projection
// that reads through the batch's Tx sends them, in a round trip of their
// own, before its first read, so that it reads under the lock.
//
// Live batches nearly always arrive so. On a busy server, the round trip
// saved was about a tenth of the time from an append to the read model.
func (r *Runner) oneTrip(conn *pgx.Conn, reg registration, expected eventstore.Position, revsTable string, streams streamEvents, last map[string]int64) *batchTx {
	tx, checks := deferBegin(conn)
	r.queueFence(checks)
	checks.Queue(`SELECT sightline.lock_checkpoint($1, $2, $3, $4, $5)`, r.p.Name(), reg.generation, r.segment, int64(expected.Commit), int64(expected.Prepare))
	if len(streams.order) == 0 {
		return tx
	}
	previous := make([]int64, len(streams.order))
	for i, stream := range streams.order {
		previous[i] = -1 // new
		if rev, ok := last[stream]; ok {
			previous[i] = rev
		}
	}
	checks.Queue(`SELECT sightline.expect_streams(
			NOT EXISTS (SELECT FROM unnest($1::text[], $2::bigint[]) AS u (stream_id, previous)
				LEFT JOIN `+revsTable+` r USING (stream_id)
				WHERE r.revision IS DISTINCT FROM nullif(u.previous, -1))
			AND NOT EXISTS (SELECT FROM sightline.parked
				WHERE projection = $3 AND generation = $4 AND `+waitingRows+` AND stream_id = ANY($1)))`,
		streams.order, previous, r.p.Name(), reg.generation)
	return tx
}

// readFirst starts a batch with a round trip that begins, locks the
// checkpoint row, so that batches of the same projection (and parked-event
// retries) never interleave, and reads the streams' last revisions and
// which of them are held, unless the builder knows them. It returns the
// transaction even with an error, for the caller to roll back, and the
// builder's memory, which it retires when the generation is no longer
// being built.
func (r *Runner) readFirst(ctx context.Context, conn *pgx.Conn, reg registration, expected eventstore.Position, revsTable string, streams streamEvents, known *knownRevisions) (tx *batchTx, last, held map[string]int64, _ *knownRevisions, err error) {
	read := &pgx.Batch{}
	tx = queueBegin(conn, read)
	if r.build != nil {
		// A rebuild's batches may be lost in a server crash without harm: a
		// lost commit loses its checkpoint with its rows, and nobody reads
		// the generation before it takes over.
		read.Queue(`SET LOCAL synchronous_commit = off`)
	}
	fenced := r.queueFence(read)
	read.Queue(`SELECT commit_position, prepare_position, superseded FROM sightline.checkpoints
		WHERE projection = $1 AND generation = $2 AND segment = $3 FOR UPDATE`, r.p.Name(), reg.generation, r.segment)
	if known != nil {
		// Whether the generation is still built: read once the lock is
		// held, this sees a take-over, and any operator's decision after
		// it, committed before the lock was granted.
		read.Queue(`SELECT state IN ('building', 'scratch') FROM sightline.generations
			WHERE projection = $1 AND generation = $2`, r.p.Name(), reg.generation)
	}
	r.queueStreamReads(read, known, revsTable, reg.generation, streams.order)
	res := tx.SendBatch(ctx, read)
	defer func() {
		if cerr := res.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("read stream revisions: %w", cerr)
		}
	}()
	if _, err := res.Exec(); err != nil {
		return tx, nil, nil, known, fmt.Errorf("begin and read checkpoint and revisions: %w", err)
	}
	if r.build != nil {
		if _, err := res.Exec(); err != nil {
			return tx, nil, nil, known, err
		}
	}
	if fenced {
		if _, err := res.Exec(); err != nil {
			return tx, nil, nil, known, notOwner(err)
		}
	}
	var commit, prepare int64
	var superseded bool
	if err := res.QueryRow().Scan(&commit, &prepare, &superseded); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return tx, nil, nil, known, fmt.Errorf("%w: generation %d of %s is gone", errSuperseded, reg.generation, r.p.Name())
		}
		return tx, nil, nil, known, fmt.Errorf("lock checkpoint: %w", err)
	}
	if superseded {
		return tx, nil, nil, known, fmt.Errorf("%w: generation %d of %s was replaced", errSuperseded, reg.generation, r.p.Name())
	}
	if stored := (eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}); stored != expected {
		return tx, nil, nil, known, r.checkpointMoved(expected, stored)
	}
	if known != nil {
		var built bool
		if err := res.QueryRow().Scan(&built); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return tx, nil, nil, known, fmt.Errorf("read the generation's state: %w", err)
		}
		if !built {
			// Taken over by a builder that replaced this one, which then
			// lost its build lock: others may have written the generation.
			// From here on the batch reads what it needs, as others do.
			res.Close()
			r.build.memory.retireLocked()
			known = nil
			again := &pgx.Batch{}
			r.queueStreamReads(again, nil, revsTable, reg.generation, streams.order)
			res = tx.SendBatch(ctx, again)
		}
	}
	if known != nil {
		last = known.last // plan only reads it
	} else if last, err = readRevisions(res); err != nil {
		return tx, nil, nil, known, fmt.Errorf("read stream revisions: %w", err)
	}
	if known.readsHeld() {
		if held, err = readRevisions(res); err != nil {
			return tx, nil, nil, known, fmt.Errorf("read stream revisions: %w", err)
		}
	}
	return tx, last, held, known, nil
}

// commitWith sends queue and a COMMIT in one round trip, behind whatever
// of tx is still unsent (its BEGIN and the checks of a oneTrip batch). The
// first fromProjection statements of queue are the projection's, so their
// errors are classified as the events' errors may be; an error of the
// unsent statements is an uncheckedError, for assumptionFailed; the rest
// are the projector's.
//
// The COMMIT goes in the batch rather than through tx.Commit, which would
// cost a round trip of its own; tx is closed once it has succeeded. When
// it fails, the caller rolls tx back, or releases the connection, which
// pgxpool closes if it is still inside the transaction.
func commitWith(ctx context.Context, tx *batchTx, queue *pgx.Batch, fromProjection int) error {
	return sendCommit(ctx, tx, queue, fromProjection)()
}

// sendCommit sends what commitWith does and returns at once; the returned
// func reads the answers, as commitWith does, and must be called once.
func sendCommit(ctx context.Context, tx *batchTx, queue *pgx.Batch, fromProjection int) (wait func() error) {
	if err := tx.awaitBefore(); err != nil {
		return func() error { return err }
	}
	all := queue
	unsentLen := 0 // the first statements of all, tx's unsent ones
	if unsent := tx.takeUnsent(); unsent != nil {
		unsentLen = unsent.Len()
		all = &pgx.Batch{QueuedQueries: append(unsent.QueuedQueries, queue.QueuedQueries...)}
	}
	all.Queue(`COMMIT`)
	res := tx.SendBatch(ctx, all)
	return func() error { return readCommit(ctx, tx, res, all, unsentLen, fromProjection) }
}

// readCommit reads the answers to a batch sendCommit sent.
func readCommit(ctx context.Context, tx *batchTx, res pgx.BatchResults, all *pgx.Batch, unsentLen, fromProjection int) error {
	for i := range all.Len() {
		tag, err := res.Exec()
		var pre pgx.ErrPreprocessingBatch
		if errors.As(err, &pre) {
			// Reported on the first statement, whichever failed to prepare.
			i = slices.IndexFunc(all.QueuedQueries, func(q *pgx.QueuedQuery) bool { return q.SQL == pre.SQL() })
		}
		switch {
		case err != nil && i >= 0 && i < unsentLen:
			res.Close()
			return &uncheckedError{err}
		case err != nil && i >= unsentLen && i < unsentLen+fromProjection:
			res.Close()
			return classify(ctx, tx.conn, err)
		case err != nil && i == all.Len()-1:
			res.Close()
			return fmt.Errorf("commit: %w", err)
		case err != nil:
			res.Close()
			return fmt.Errorf("write revisions and checkpoint: %w", err)
		case i == all.Len()-1 && tag.String() != "COMMIT":
			res.Close()
			return fmt.Errorf("commit: the server rolled the transaction back (%s)", tag)
		}
	}
	err := res.Close()
	tx.closed = err == nil
	return err
}

// queueStreamReads queues the reads of streams' last revisions and of
// which of them are held, but what known makes needless.
func (r *Runner) queueStreamReads(b *pgx.Batch, known *knownRevisions, revsTable string, gen int, streams []string) {
	if known == nil {
		b.Queue(`SELECT stream_id, revision FROM `+revsTable+` WHERE stream_id = ANY($1)`, streams)
	}
	if known.readsHeld() {
		b.Queue(`SELECT stream_id, max(revision) FROM sightline.parked
			WHERE projection = $1 AND generation = $2 AND `+waitingRows+` AND stream_id = ANY($3)
			GROUP BY stream_id`, r.p.Name(), gen, streams)
	}
}

// failedOnEvents says a batch failed on its events, in a transaction
// rolled back before its COMMIT: it wrote nothing.
func failedOnEvents(err error) bool {
	var herr *handlerError
	var rerr *eventRetryError
	return errors.As(err, &herr) || errors.As(err, &rerr)
}

func readRevisions(res pgx.BatchResults) (map[string]int64, error) {
	revs := map[string]int64{}
	rows, err := res.Query()
	if err != nil {
		return nil, err
	}
	var id string
	var rev int64
	_, err = pgx.ForEachRow(rows, []any{&id, &rev}, func() error { revs[id] = rev; return nil })
	return revs, err
}

// safeApply calls p.Apply, turning a panic into an error, so that a handler
// that panics on some event parks that event instead of ending the process.
func safeApply(ctx context.Context, p Projection, b *Batch) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%s panicked: %v\n%s", p.Name(), v, debug.Stack())
		}
	}()
	return p.Apply(ctx, b)
}
