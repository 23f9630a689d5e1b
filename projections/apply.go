package projections

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"runtime/debug"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

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
// one round trip (see oneTrip).
func (r *Runner) applyOnce(ctx context.Context, events []eventstore.RecordedEvent, checkpoint eventstore.Position, iso *isolation, assume bool) (err error) {
	start := time.Now()
	streams := byStream(events, r.p.Filter())

	r.mu.Lock()
	expected, reg := r.position, r.reg
	r.mu.Unlock()
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

	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer conn.Release() // back to the pool only when idle: after COMMIT or the rollback below

	var tx *batchTx
	var last, held map[string]int64
	if assume && r.build == nil && iso == nil {
		last = assumedRevisions(streams)
	}
	assumed := last != nil
	if assumed {
		tx = r.oneTrip(conn.Conn(), reg, expected, revsTable, streams, last)
	} else {
		tx, last, held, known, err = r.readFirst(ctx, conn.Conn(), reg, expected, revsTable, streams, known)
	}
	if tx != nil {
		defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // ErrTxClosed once committed; otherwise the error that brought us here is the one to report
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
			WHERE projection = $1 AND generation = $2`, r.p.Name(), reg.generation, int64(checkpoint.Commit), int64(checkpoint.Prepare))
	}
	if err := commitWith(ctx, tx, queue, fromProjection); err != nil {
		return r.assumptionFailed(err, reg, expected)
	}
	if r.build != nil {
		r.build.memory.committed(plan, parked)
	}

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
	r.m.batchEvents.Observe(float64(len(events)))
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
	return nil
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
	checks.Queue(`SELECT sightline.lock_checkpoint($1, $2, $3, $4)`, r.p.Name(), reg.generation, int64(expected.Commit), int64(expected.Prepare))
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

// assumptionFailed turns the error of the checks that oneTrip queued
// (an uncheckedError) into the error the runner acts on; other errors
// pass unchanged.
func (r *Runner) assumptionFailed(err error, reg registration, expected eventstore.Position) error {
	var checks *uncheckedError
	var pgErr *pgconn.PgError
	if !errors.As(err, &checks) || !errors.As(checks.err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "SLREV":
		return errNotAsAssumed
	case "SLGEN":
		return fmt.Errorf("%w: generation %d of %s is gone or replaced", errSuperseded, reg.generation, r.p.Name())
	case "SLCKM":
		var commit, prepare uint64
		if _, serr := fmt.Sscan(pgErr.Detail, &commit, &prepare); serr != nil {
			// The runner registers again, reading the checkpoint.
			return fmt.Errorf("%w: expected %s, found %q", errCheckpointMoved, expected, pgErr.Detail)
		}
		return r.checkpointMoved(expected, eventstore.Position{Commit: commit, Prepare: prepare})
	}
	return err
}

// checkpointMoved takes up the checkpoint a batch found stored instead of
// the one it expected, which another process moved, and says so: the
// runner's pipeline starts again from there.
func (r *Runner) checkpointMoved(expected, stored eventstore.Position) error {
	r.mu.Lock()
	r.setElsewhereLocked(stored)
	r.mu.Unlock()
	return fmt.Errorf("%w: expected %s, found %s", errCheckpointMoved, expected, stored)
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
	read.Queue(`SELECT commit_position, prepare_position, superseded FROM sightline.checkpoints
		WHERE projection = $1 AND generation = $2 FOR UPDATE`, r.p.Name(), reg.generation)
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
	all := queue
	unsentLen := 0 // the first statements of all, tx's unsent ones
	if unsent := tx.takeUnsent(); unsent != nil {
		unsentLen = unsent.Len()
		all = &pgx.Batch{QueuedQueries: append(unsent.QueuedQueries, queue.QueuedQueries...)}
	}
	all.Queue(`COMMIT`)
	res := tx.SendBatch(ctx, all)
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

// analyzeFirst is how many events a projector applies to a generation
// before it first analyzes the generation's tables; it analyzes them again
// each time that count doubles.
const analyzeFirst = 1_000

// analyzeWhileGrowing keeps the planner's statistics of a generation close
// to its size while it is young. Without them, the plans cached while its
// tables were empty (sequential scans matching each row against a whole
// batch's streams) grow quadratically slower until autovacuum gets round to
// them: a rebuild took minutes instead of seconds, and a new projection
// keeping up with 2 000 events/s spent 3 ms reading its stream revisions
// per batch within its first minute.
//
// A generation filling up (a rebuild, a catch-up) analyzes between two
// batches, since the next ones need the statistics most. One keeping up
// with live traffic analyzes in the background, so that no batch waits, and
// only tables that have changed by more rows than they held when last
// analyzed: the count restarts with every process, and a mature read model
// is left to autovacuum.
func (r *Runner) analyzeWhileGrowing(ctx context.Context, reg registration, applied int, filling bool) {
	r.sinceAttach += applied
	if r.sinceAttach < r.nextAnalyze {
		return
	}
	r.nextAnalyze = 2 * r.sinceAttach
	if filling {
		if err := analyze(ctx, r.pool, reg.schema, false); err != nil && ctx.Err() == nil {
			r.log.Warn("could not analyze the read model's tables", "error", err)
		}
		return
	}
	if !r.analyzing.CompareAndSwap(false, true) {
		return
	}
	r.wg.Add(1) // in run's goroutine, before its Wait
	go func() {
		defer r.wg.Done()
		defer r.analyzing.Store(false)
		if err := analyze(r.soft, r.pool, reg.schema, true); err != nil && r.soft.Err() == nil {
			r.log.Warn("could not analyze the read model's tables", "error", err)
		}
	}()
}

// analyze analyzes the tables of schema; with grownOnly, only those never
// analyzed or changed by more rows than they held when last analyzed.
func analyze(ctx context.Context, pool *pgxpool.Pool, schema string, grownOnly bool) error {
	rows, err := pool.Query(ctx, `SELECT format('%I.%I', t.schemaname, t.relname)
		FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid
		WHERE t.schemaname = $1
		  AND (NOT $2 OR t.last_analyze IS NULL AND t.last_autoanalyze IS NULL OR t.n_mod_since_analyze > greatest(c.reltuples, 0))`,
		schema, grownOnly)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, t := range tables {
		if _, err := pool.Exec(ctx, `ANALYZE (SKIP_LOCKED) `+t); err != nil {
			return err
		}
	}
	return nil
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

// savepoint is the name of the savepoint isolating one attempt.
const savepoint = "sightline_attempt"

// applyInSavepoint hands events to p's Apply and sends what it queued,
// inside a savepoint that a failure rolls back, leaving tx usable. The error
// is a handlerError when the events may be at fault.
func applyInSavepoint(ctx context.Context, tx pgx.Tx, p Projection, schema string, events []eventstore.RecordedEvent) error {
	if _, err := tx.Exec(ctx, `SAVEPOINT `+savepoint); err != nil {
		return err
	}
	b := &Batch{Tx: tx, Schema: schema, Events: events, queue: &pgx.Batch{}}
	err := safeApply(ctx, p, b)
	if err == nil && b.queue.Len() > 0 {
		err = tx.SendBatch(ctx, b.queue).Close()
	}
	if err != nil {
		err = classify(ctx, tx.Conn(), err)
		if _, rerr := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT `+savepoint); rerr != nil {
			// The transaction is lost, whatever the events did: not
			// their failure (%v keeps err from being taken for one).
			return fmt.Errorf("roll back to savepoint after %v: %w", err, rerr)
		}
	}
	if _, rerr := tx.Exec(ctx, `RELEASE SAVEPOINT `+savepoint); rerr != nil {
		return fmt.Errorf("release savepoint: %w", rerr)
	}
	return err
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

// isolation is what isolating a failing batch remembers between its
// transactions: how many times each event has failed, and which are to be
// parked, so that a transaction rolled back for another event's retry
// does not try them again.
type isolation struct {
	attempts map[eventKey]int
	parks    map[eventKey]error
}

func newIsolation() *isolation {
	return &isolation{attempts: map[eventKey]int{}, parks: map[eventKey]error{}}
}

// recall marks the first event of s already due to be parked.
func (iso *isolation) recall(s *streamPlan) {
	for i, e := range s.events {
		k := eventKey{e.StreamID, e.Revision}
		if err, ok := iso.parks[k]; ok {
			s.failed, s.failedAt, s.attempts = err, i, iso.attempts[k]
			return
		}
	}
}

type eventKey struct {
	stream   string
	revision uint64
}

// eventRetryError rolls back a batch so that an event that failed can be
// tried again after a backoff.
type eventRetryError struct {
	event   eventstore.RecordedEvent
	attempt int
	err     error
}

func (e *eventRetryError) Error() string {
	return fmt.Sprintf("%s revision %d failed (attempt %d): %v", e.event.StreamID, e.event.Revision, e.attempt, e.err)
}
func (e *eventRetryError) Unwrap() error { return e.err }

// isolate applies streams in savepoints, splitting the set in halves while
// it fails, down to single events. An event that fails its last attempt
// (or fails for certain: IsPermanent) is marked to be parked with the rest
// of its stream; one with attempts left ends the transaction with an
// eventRetryError. failing says the set is known to fail already. Other
// errors are not the events' doing.
func (r *Runner) isolate(ctx context.Context, tx pgx.Tx, iso *isolation, streams []*streamPlan, failing bool) error {
	if len(streams) == 0 {
		return nil
	}
	reg := r.registration()
	if !failing {
		events := eventsOf(streams)
		if len(events) == 0 {
			return nil
		}
		err := applyInSavepoint(ctx, tx, r.p, reg.schema, events)
		if herr := (*handlerError)(nil); err == nil || !errors.As(err, &herr) {
			return err
		}
	}
	if len(streams) > 1 {
		mid := len(streams) / 2
		if err := r.isolate(ctx, tx, iso, streams[:mid], false); err != nil {
			return err
		}
		return r.isolate(ctx, tx, iso, streams[mid:], false)
	}
	s := streams[0]
	s.carried = nil // found again on every attempt
	for i, e := range s.pending() {
		err := applyInSavepoint(ctx, tx, r.p, reg.schema, s.events[i:i+1:i+1]) // capped: a projection appending to its Events must not overwrite the next event
		if err == nil {
			continue
		}
		if herr := (*handlerError)(nil); !errors.As(err, &herr) {
			return err
		}
		if gen, ok, qerr := skippedBefore(ctx, tx, r.p.Name(), reg.generation, e); qerr != nil {
			return qerr
		} else if ok {
			// An operator skipped it in an earlier generation: a rebuild (or
			// a verify's replay) keeps that decision instead of holding the
			// stream again.
			s.carried = append(s.carried, carriedSkip{event: e, generation: gen})
			continue
		}
		k := eventKey{e.StreamID, e.Revision}
		iso.attempts[k]++
		attempt := iso.attempts[k]
		if attempt >= r.cfg.MaxAttempts || IsPermanent(err) {
			s.failed, s.failedAt, s.attempts = err, i, attempt
			iso.parks[k] = err
			return nil
		}
		return &eventRetryError{event: e, attempt: attempt, err: err}
	}
	return nil // each event passed alone: the failure did not recur
}

// carriedSkip is an event skipped because an operator skipped it in an
// earlier generation of the projection.
type carriedSkip struct {
	event      eventstore.RecordedEvent
	generation int
}

// skippedBefore says whether an operator skipped e in an earlier generation
// of the projection, and in which.
func skippedBefore(ctx context.Context, tx pgx.Tx, name string, gen int, e eventstore.RecordedEvent) (int, bool, error) {
	var skippedIn int
	err := tx.QueryRow(ctx, `SELECT generation FROM sightline.parked
		WHERE projection = $1 AND generation < $2 AND stream_id = $3 AND revision = $4 AND event_id = $5 AND state = 'skipped'
		ORDER BY generation DESC LIMIT 1`, name, gen, e.StreamID, int64(e.Revision), e.EventID).Scan(&skippedIn)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return skippedIn, err == nil, err
}

// parkedRow is a row park wrote, for the log.
type parkedRow struct {
	id       int64
	event    eventstore.RecordedEvent
	state    string
	attempts int
	err      string
}

// park writes the events of held streams, and of streams that failed in
// this batch, to sightline.parked.
func (r *Runner) park(ctx context.Context, tx pgx.Tx, plan batchPlan) ([]parkedRow, error) {
	var rows []parkedRow
	for _, s := range plan.streams {
		for _, c := range s.carried {
			rows = append(rows, parkedRow{event: c.event, state: ParkedStateSkipped, attempts: 1,
				err: fmt.Sprintf("skipped, as it was skipped in generation %d", c.generation)})
		}
		from := len(s.events)
		switch {
		case s.held:
			from = 0
		case s.failed != nil:
			from = s.failedAt
			rows = append(rows, parkedRow{event: s.events[from], state: ParkedStateParked, attempts: s.attempts, err: s.failed.Error()})
			from++
		}
		for _, e := range s.events[from:] {
			rows = append(rows, parkedRow{event: e, state: ParkedStateHeld})
		}
	}
	if len(rows) == 0 {
		return nil, nil
	}
	reg := r.registration()
	n := len(rows)
	var (
		streams, eventIDs, types, states = make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		errs                             = make([]*string, n)
		revisions, commits, prepares     = make([]int64, n), make([]int64, n), make([]int64, n)
		attempts                         = make([]int32, n)
		data, metadata                   = make([][]byte, n), make([][]byte, n)
		created                          = make([]time.Time, n)
	)
	for i, row := range rows {
		e := row.event
		streams[i], eventIDs[i], types[i], states[i] = e.StreamID, e.EventID, e.Type, row.state
		revisions[i], commits[i], prepares[i] = int64(e.Revision), int64(e.Position.Commit), int64(e.Position.Prepare)
		data[i], metadata[i], created[i], attempts[i] = e.Data, e.Metadata, e.CreatedAt, int32(row.attempts)
		if data[i] == nil {
			data[i] = []byte{}
		}
		if row.err != "" {
			errs[i] = &rows[i].err
		}
	}
	ids, err := tx.Query(ctx, `INSERT INTO sightline.parked (projection, generation, stream_id, revision, event_id, type,
			data, metadata, commit_position, prepare_position, created_at, state, attempts, error, resolved_at)
		SELECT $1, $2, *, CASE WHEN u.state = 'skipped' THEN now() END FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::bytea[], $8::bytea[],
			$9::bigint[], $10::bigint[], $11::timestamptz[], $12::text[], $13::int[], $14::text[])
			AS u (stream_id, revision, event_id, type, data, metadata, commit_position, prepare_position, created_at, state, attempts, error)
		ON CONFLICT (projection, generation, stream_id, revision) DO NOTHING
		RETURNING id, stream_id, revision`,
		r.p.Name(), reg.generation, streams, revisions, eventIDs, types, data, metadata, commits, prepares, created, states, attempts, errs)
	if err != nil {
		return nil, fmt.Errorf("park events: %w", err)
	}
	type key struct {
		stream string
		rev    int64
	}
	index := make(map[key]int, n)
	for i := range rows {
		index[key{streams[i], revisions[i]}] = i
	}
	var id, rev int64
	var stream string
	if _, err := pgx.ForEachRow(ids, []any{&id, &stream, &rev}, func() error {
		rows[index[key{stream, rev}]].id = id
		return nil
	}); err != nil {
		return nil, fmt.Errorf("park events: %w", err)
	}
	return rows, nil
}

func (r *Runner) logParked(rows []parkedRow) {
	for _, row := range rows {
		e := row.event
		if row.state == ParkedStateSkipped {
			r.m.skippedParked.Inc()
			r.log.Warn("event skipped: "+row.err, "parked_id", row.id, "stream", e.StreamID, "revision", e.Revision, "event_id", e.EventID, "type", e.Type)
			continue
		}
		if row.state == ParkedStateParked {
			r.m.parked.Inc()
			r.log.Error("event parked; its stream is held until the event is retried or skipped",
				"parked_id", row.id, "stream", e.StreamID, "revision", e.Revision, "event_id", e.EventID, "type", e.Type,
				"attempts", row.attempts, "error", row.err)
			continue
		}
		r.log.Warn("event held behind a parked event of its stream",
			"parked_id", row.id, "stream", e.StreamID, "revision", e.Revision, "event_id", e.EventID, "type", e.Type)
	}
}

// streamEvents groups a batch by stream, in the order streams first appear:
// events[i] is the events of order[i], sharing one array.
type streamEvents struct {
	order  []string
	events [][]eventstore.RecordedEvent
}

func byStream(events []eventstore.RecordedEvent, f eventstore.Filter) streamEvents {
	var s streamEvents
	index := map[string]int{}
	var counts []int
	slot := make([]int, len(events)) // each event's stream in order; -1 when filtered out
	n := 0
	for j, e := range events {
		if !f.Matches(e.StreamID, e.Type) {
			slot[j] = -1 // not this projection's; a source may deliver more than asked
			continue
		}
		i, ok := index[e.StreamID]
		if !ok {
			i = len(s.order)
			index[e.StreamID] = i
			s.order = append(s.order, e.StreamID)
			counts = append(counts, 0)
		}
		slot[j] = i
		counts[i]++
		n++
	}
	all := make([]eventstore.RecordedEvent, 0, n)
	s.events = make([][]eventstore.RecordedEvent, len(s.order))
	for i, c := range counts {
		s.events[i] = all[len(all) : len(all) : len(all)+c]
		all = all[:len(all)+c]
	}
	for j, e := range events {
		if i := slot[j]; i >= 0 {
			s.events[i] = append(s.events[i], e)
		}
	}
	return s
}

type gap struct {
	stream   string
	from, to uint64 // inclusive
}

// streamPlan is what a batch does with one stream.
type streamPlan struct {
	stream string
	// events to apply, or to park when the stream is held: in revision
	// order, without duplicates, gaps filled from the store.
	events []eventstore.RecordedEvent
	// next is the revision the stream expected when the batch began;
	// through is the last revision the batch covers, applied or recorded
	// as a gap (next-1 when it covers none).
	next, through uint64
	// held: the stream has parked events, so its events park behind them.
	held bool
	// failed is set when events[failedAt] failed its last attempt.
	failed   error
	failedAt int
	attempts int
	// carried are events skipped as an operator skipped them before.
	carried []carriedSkip
}

// batchPlan is what a batch does once revisions are checked.
type batchPlan struct {
	streams                        []*streamPlan
	gaps                           []gap
	duplicates, unfilled, repaired int
}

// live is the streams whose events are applied, not parked.
func (p batchPlan) live() []*streamPlan {
	var out []*streamPlan
	for _, s := range p.streams {
		if !s.held && len(s.events) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// applied is the events the batch applies.
func (p batchPlan) applied() iter.Seq[eventstore.RecordedEvent] {
	return func(yield func(eventstore.RecordedEvent) bool) {
		for _, s := range p.streams {
			if s.held {
				continue
			}
			for _, e := range s.pending() {
				if !s.skips(e) && !yield(e) {
					return
				}
			}
		}
	}
}

// skips says whether e is one of the events s skips as skipped before.
func (s *streamPlan) skips(e eventstore.RecordedEvent) bool {
	for _, c := range s.carried {
		if c.event.Revision == e.Revision {
			return true
		}
	}
	return false
}

// revisions is the new last applied revision of each stream the batch
// moves. A held stream does not move; a stream that failed moves to just
// before its parked event.
func (p batchPlan) revisions() ([]string, []int64) {
	var streams []string
	var revs []int64
	for _, s := range p.streams {
		through := s.through
		switch {
		case s.held:
			continue
		case s.failed != nil:
			failed := s.events[s.failedAt].Revision
			if failed == s.next {
				continue // it failed first: nothing moved
			}
			through = failed - 1 // the events before it applied, the gaps before it recorded
		}
		if through+1 > s.next {
			streams = append(streams, s.stream)
			revs = append(revs, int64(through))
		}
	}
	return streams, revs
}

// pending is the events of s still to try: those before the one to be
// parked, if any.
func (s *streamPlan) pending() []eventstore.RecordedEvent {
	if s.failed != nil {
		return s.events[:s.failedAt]
	}
	return s.events
}

func eventsOf(streams []*streamPlan) []eventstore.RecordedEvent {
	n := 0
	for _, s := range streams {
		n += len(s.pending())
	}
	out := make([]eventstore.RecordedEvent, 0, n)
	for _, s := range streams {
		out = append(out, s.pending()...)
	}
	return out
}

// plan checks each stream's events against its last applied (or parked)
// revision: at or below it is a duplicate or late arrival, skipped; above
// the next one is a gap, filled from the store first, or recorded when the
// store cannot.
func (r *Runner) plan(ctx context.Context, s streamEvents, last, held map[string]int64) (batchPlan, error) {
	p := batchPlan{streams: make([]*streamPlan, 0, len(s.order))}
	plans := make([]streamPlan, len(s.order))
	for i, stream := range s.order {
		events := s.events[i]
		slices.SortStableFunc(events, func(a, b eventstore.RecordedEvent) int { return compareUint(a.Revision, b.Revision) })
		next := uint64(0)
		if rev, ok := last[stream]; ok {
			next = uint64(rev) + 1
		}
		sp := &plans[i]
		sp.stream = stream
		if rev, ok := held[stream]; ok {
			sp.held = true
			next = max(next, uint64(rev)+1)
		}
		sp.next = next
		if inSequence(events, next) { // the usual case: nothing to drop or fill
			sp.events = events
			sp.through = events[len(events)-1].Revision
			p.streams = append(p.streams, sp)
			continue
		}
		for _, e := range events {
			switch {
			case e.Revision < next:
				p.duplicates++
				continue
			case e.Revision > next:
				if err := r.fillGap(ctx, &p, sp, next, e.Revision); err != nil {
					return batchPlan{}, err
				}
			}
			sp.events = append(sp.events, e)
			next = e.Revision + 1
		}
		sp.through = next - 1
		p.streams = append(p.streams, sp)
	}
	return p, nil
}

// inSequence says events, in revision order, are next, next+1 and so on.
func inSequence(events []eventstore.RecordedEvent, next uint64) bool {
	for i, e := range events {
		if e.Revision != next+uint64(i) {
			return false
		}
	}
	return len(events) > 0
}

// fillGap reads revisions [from, to) of a stream from the store and plans
// them; what the store does not have is recorded as a gap.
func (r *Runner) fillGap(ctx context.Context, p *batchPlan, sp *streamPlan, from, to uint64) error {
	got, err := r.store.ReadStream(ctx, sp.stream, from, int(to-from))
	if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
		return fmt.Errorf("read back revisions %d..%d of %s: %w", from, to-1, sp.stream, err)
	}
	next := from
	filter := r.p.Filter()
	for _, e := range got {
		if e.Revision < next || e.Revision >= to {
			continue
		}
		if e.Revision > next {
			p.gaps = append(p.gaps, gap{sp.stream, next, e.Revision - 1})
			p.unfilled += int(e.Revision - next)
		}
		if filter.Matches(e.StreamID, e.Type) {
			sp.events = append(sp.events, e)
		}
		next = e.Revision + 1
	}
	if next < to {
		p.gaps = append(p.gaps, gap{sp.stream, next, to - 1})
		p.unfilled += int(to - next)
	}
	if next > from {
		p.repaired++
	}
	return nil
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// setElsewhereLocked records a checkpoint another process committed. Its
// batches moved streams this runner does not know of, so every stream's
// watchers are woken to look again.
func (r *Runner) setElsewhereLocked(p eventstore.Position) {
	if r.position != p {
		r.wakeAllStreamsLocked()
	}
	r.setPositionLocked(p)
}

// setPositionLocked records a committed checkpoint and wakes WaitFor.
func (r *Runner) setPositionLocked(p eventstore.Position) {
	if r.position == p {
		return
	}
	r.position = p
	close(r.advanced)
	r.advanced = make(chan struct{})
}
