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

// States of a parked event.
const (
	// ParkedStateParked: its handler failed its last attempt; it holds its
	// stream until it is retried or skipped.
	ParkedStateParked = "parked"
	// ParkedStateHeld: a later event of a held stream, waiting in revision
	// order behind the parked one.
	ParkedStateHeld = "held"
	// ParkedStateApplied: retried (or released by a retry or skip of the
	// event it waited behind) and applied.
	ParkedStateApplied = "applied"
	// ParkedStateSkipped: skipped by an operator; never applied.
	ParkedStateSkipped = "skipped"
)

// waitingRows selects the rows of events still parked or held; it is the
// predicate of the partial index sightline.parked_unresolved.
const waitingRows = `state IN ('parked', 'held')`

// Errors of the parked-event operations.
var (
	ErrParkedNotFound = errors.New("no such parked event")
	// ErrParkedHeld: the event waits behind another; retry or skip that one.
	ErrParkedHeld = errors.New("parked event is held behind an earlier one of its stream")
	// ErrParkedResolved: the event was already applied or skipped, the
	// other way than asked.
	ErrParkedResolved = errors.New("parked event already resolved")
	// ErrParkedInactive: the event belongs to a generation of the
	// projection that is no longer the active one.
	ErrParkedInactive = errors.New("parked event belongs to an inactive generation")
)

// ParkedEvent is a row of the dead-letter table: an event a projection
// could not apply, or one held behind it, with a copy of the event.
type ParkedEvent struct {
	ID         int64
	Projection string
	Generation int
	Event      eventstore.RecordedEvent
	State      string
	// Error and Attempts are those of the last failed attempt.
	Error      string
	Attempts   int
	ParkedAt   time.Time
	ResolvedAt time.Time // zero while parked or held
}

// Unresolved reports whether the event still waits: parked or held.
func (e ParkedEvent) Unresolved() bool {
	return e.State == ParkedStateParked || e.State == ParkedStateHeld
}

// ListOptions selects parked events.
type ListOptions struct {
	Projection string // all projections when empty
	All        bool   // include applied and skipped events
	AfterID    int64  // only ids above this, for paging
	Limit      int    // 100 when zero
}

const parkedColumns = `id, projection, generation, stream_id, revision, event_id, type, data, metadata,
	commit_position, prepare_position, created_at, state, coalesce(error, ''), attempts, parked_at, resolved_at`

func scanParked(row pgx.CollectableRow) (ParkedEvent, error) {
	var p ParkedEvent
	var rev, commit, prepare int64
	var resolved *time.Time
	err := row.Scan(&p.ID, &p.Projection, &p.Generation, &p.Event.StreamID, &rev, &p.Event.EventID, &p.Event.Type,
		&p.Event.Data, &p.Event.Metadata, &commit, &prepare, &p.Event.CreatedAt, &p.State, &p.Error, &p.Attempts,
		&p.ParkedAt, &resolved)
	p.Event.Revision = uint64(rev)
	p.Event.Position = eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}
	if resolved != nil {
		p.ResolvedAt = *resolved
	}
	return p, err
}

// Querier is what the reads of this package need: a pool, a connection or
// a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ListParked returns parked events in id order. Without All it returns only
// those still parked or held, of the generation each projection has active.
func ListParked(ctx context.Context, db Querier, opts ListOptions) ([]ParkedEvent, error) {
	if opts.Limit <= 0 {
		opts.Limit = 100
	}
	rows, err := db.Query(ctx, `SELECT `+parkedColumns+` FROM sightline.parked k
		WHERE ($1 = '' OR projection = $1) AND id > $2
		  AND ($3 OR (`+waitingRows+`
		       AND generation = (SELECT generation FROM sightline.projections WHERE name = k.projection)))
		ORDER BY id LIMIT $4`, opts.Projection, opts.AfterID, opts.All, opts.Limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, scanParked)
}

// GetParked returns one parked event.
func GetParked(ctx context.Context, db Querier, id int64) (ParkedEvent, error) {
	rows, err := db.Query(ctx, `SELECT `+parkedColumns+` FROM sightline.parked WHERE id = $1`, id)
	if err != nil {
		return ParkedEvent{}, err
	}
	p, err := pgx.CollectExactlyOneRow(rows, scanParked)
	if errors.Is(err, pgx.ErrNoRows) {
		return ParkedEvent{}, fmt.Errorf("%w: %d", ErrParkedNotFound, id)
	}
	return p, err
}

// Release is the outcome of a retry or a skip.
type Release struct {
	// Event is the event asked about, as it is now.
	Event ParkedEvent
	// Applied are the events applied: the parked one on a retry, then those
	// that were held behind it, in revision order.
	Applied []eventstore.RecordedEvent
	// Skipped is set when this call skipped the event (not when an earlier
	// call had).
	Skipped bool
	// Parked is the event that holds the stream now, if one failed: the
	// retried one itself, or a held one behind it. Nil when the stream is
	// free.
	Parked *ParkedEvent
}

// RetryParked applies the parked event id of projection p again, then the
// events held behind it, in revision order, each in a savepoint. The first
// that fails stays (or becomes) the parked event, with its error, and
// holds the rest. Retrying an event already applied changes nothing.
//
// It is safe while p's runner runs, in this process or another: both lock
// the projection's checkpoint row, and the runner re-reads which streams
// are held in every batch. (A rebuild's builder, which remembers them
// instead, builds a generation that is not active, which this refuses.)
func RetryParked(ctx context.Context, pool *pgxpool.Pool, p Projection, id int64) (Release, error) {
	return release(ctx, pool, p, id, false)
}

// SkipParked marks the parked event id of projection p skipped, so it is
// never applied, and releases its stream: the events held behind it are
// applied as RetryParked applies them. Skipping an event already skipped
// changes nothing.
func SkipParked(ctx context.Context, pool *pgxpool.Pool, p Projection, id int64) (Release, error) {
	return release(ctx, pool, p, id, true)
}

func release(ctx context.Context, pool *pgxpool.Pool, p Projection, id int64, skip bool) (Release, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return Release{}, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit

	target, err := GetParked(ctx, tx, id)
	if err != nil {
		return Release{}, err
	}
	if target.Projection != p.Name() {
		return Release{}, fmt.Errorf("%w: %d of projection %s", ErrParkedNotFound, id, p.Name())
	}
	var version, gen, segments int
	if err := tx.QueryRow(ctx, `SELECT p.version, p.generation, g.segments FROM sightline.projections p
		JOIN sightline.generations g ON g.projection = p.name AND g.generation = p.generation
		WHERE p.name = $1`, p.Name()).Scan(&version, &gen, &segments); err != nil {
		return Release{}, fmt.Errorf("read projection %s: %w", p.Name(), err)
	}
	if gen != target.Generation {
		return Release{}, fmt.Errorf("%w: %d belongs to generation %d of %s, and %d is active", ErrParkedInactive, id, target.Generation, p.Name(), gen)
	}
	if version != p.Version() {
		return Release{}, fmt.Errorf("%w: %s is at version %d in the database and %d in code", ErrVersionChanged, p.Name(), version, p.Version())
	}
	// The batches of the runner of the stream's segment take this lock
	// too: from here on the stream's revision and its parked rows stay as
	// read.
	var superseded bool
	if err := tx.QueryRow(ctx, `SELECT superseded FROM sightline.checkpoints WHERE projection = $1 AND generation = $2 AND segment = $3 FOR UPDATE`,
		p.Name(), gen, SegmentOf(target.Event.StreamID, segments)).Scan(&superseded); err != nil {
		return Release{}, fmt.Errorf("lock checkpoint: %w", err)
	}
	if superseded { // replaced while we waited for the lock
		return Release{}, fmt.Errorf("%w: generation %d of %s was just replaced", ErrParkedInactive, gen, p.Name())
	}
	rows, err := tx.Query(ctx, `SELECT `+parkedColumns+` FROM sightline.parked
		WHERE projection = $1 AND generation = $2 AND stream_id = $3 AND (`+waitingRows+` OR id = $4)
		ORDER BY revision`, p.Name(), gen, target.Event.StreamID, id)
	if err != nil {
		return Release{}, err
	}
	waiting, err := pgx.CollectRows(rows, scanParked)
	if err != nil {
		return Release{}, err
	}
	for _, w := range waiting {
		if w.ID == id {
			target = w // as it is under the lock
		}
	}
	switch {
	case target.State == ParkedStateApplied && !skip, target.State == ParkedStateSkipped && skip:
		// Done before: nothing to do, but say what holds the stream now.
		out := Release{Event: target}
		for _, w := range waiting {
			if w.State == ParkedStateParked {
				out.Parked = &w
				break
			}
		}
		return out, tx.Commit(ctx)
	case !target.Unresolved():
		return Release{}, fmt.Errorf("%w: %d was %s", ErrParkedResolved, id, target.State)
	case target.State == ParkedStateHeld:
		return Release{}, fmt.Errorf("%w: %d waits behind parked event %d; retry or skip that one", ErrParkedHeld, id, waiting[0].ID)
	}

	schema := schemaName(p.Name(), gen)
	revsTable := pgx.Identifier{schema, "_stream_revisions"}.Sanitize()
	last := int64(-1)
	if err := tx.QueryRow(ctx, `SELECT revision FROM `+revsTable+` WHERE stream_id = $1`, target.Event.StreamID).Scan(&last); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Release{}, fmt.Errorf("read stream revision: %w", err)
	}
	if int64(waiting[0].Event.Revision) <= last {
		return Release{}, fmt.Errorf("stream %s is applied through revision %d, past its parked revision %d: the dead-letter rows disagree with the read model",
			target.Event.StreamID, last, waiting[0].Event.Revision)
	}

	out := Release{}
	queue := waiting
	if skip {
		if _, err := tx.Exec(ctx, `UPDATE sightline.parked SET state = 'skipped', resolved_at = now() WHERE id = $1`, id); err != nil {
			return Release{}, err
		}
		last = int64(target.Event.Revision)
		out.Skipped = true
		queue = waiting[1:]
	}
	// Apply what waits in revision order, one event per savepoint; the first
	// failure parks its event and holds the rest.
	var appliedIDs []int64
	for _, w := range queue {
		err := applyInSavepoint(ctx, tx, p, schema, []eventstore.RecordedEvent{w.Event})
		if herr := (*handlerError)(nil); err != nil && !errors.As(err, &herr) {
			return Release{}, err // not the event's doing: nothing changes
		}
		if err != nil {
			if _, err := tx.Exec(ctx, `UPDATE sightline.parked SET state = 'parked', error = $2, attempts = attempts + 1, parked_at = now() WHERE id = $1`,
				w.ID, err.Error()); err != nil {
				return Release{}, err
			}
			still := w
			still.State, still.Error, still.Attempts = ParkedStateParked, err.Error(), w.Attempts+1
			out.Parked = &still
			break
		}
		appliedIDs = append(appliedIDs, w.ID)
		out.Applied = append(out.Applied, w.Event)
		last = int64(w.Event.Revision)
	}
	if len(appliedIDs) > 0 {
		if _, err := tx.Exec(ctx, `UPDATE sightline.parked SET state = 'applied', resolved_at = now() WHERE id = ANY($1)`, appliedIDs); err != nil {
			return Release{}, err
		}
	}
	if skip || len(appliedIDs) > 0 {
		if _, err := tx.Exec(ctx, `INSERT INTO `+revsTable+` (stream_id, revision) VALUES ($1, $2)
			ON CONFLICT (stream_id) DO UPDATE SET revision = excluded.revision`, target.Event.StreamID, last); err != nil {
			return Release{}, fmt.Errorf("write stream revision: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return Release{}, fmt.Errorf("commit: %w", err)
	}
	if out.Event, err = GetParked(ctx, pool, id); err != nil {
		return Release{}, err
	}
	return out, nil
}

// Hold says whether a stream is held and whether it holds back a write.
type Hold struct {
	// ParkedID is the parked event holding the stream; 0 when it is not held.
	ParkedID int64
	// From is the first revision not in the read model.
	From uint64
	// Covers is set when an event at or before the position asked about
	// waits: a write at that position is not in the read model.
	Covers bool
}

// Retry is RetryParked for the runner's projection, with its metrics and
// log.
func (r *Runner) Retry(ctx context.Context, id int64) (Release, error) {
	rel, err := RetryParked(ctx, r.pool, r.p, id)
	r.noteRelease(rel, err, "retry")
	return rel, err
}

// Skip is SkipParked for the runner's projection, with its metrics and log.
func (r *Runner) Skip(ctx context.Context, id int64) (Release, error) {
	rel, err := SkipParked(ctx, r.pool, r.p, id)
	r.noteRelease(rel, err, "skip")
	return rel, err
}

func (r *Runner) noteRelease(rel Release, err error, action string) {
	if err != nil {
		return
	}
	e := rel.Event.Event
	part := r.segmentOf(e.StreamID)
	part.mu.Lock()
	part.wakeStreamsLocked([]string{e.StreamID})
	part.mu.Unlock()
	r.m.applied.Add(float64(len(rel.Applied)))
	if rel.Skipped {
		r.m.skippedParked.Inc()
		r.log.Warn("parked event skipped; it will never be applied",
			"parked_id", rel.Event.ID, "stream", e.StreamID, "revision", e.Revision, "event_id", e.EventID, "type", e.Type)
	}
	if len(rel.Applied) > 0 || rel.Skipped {
		r.log.Info("parked events released", "action", action, "parked_id", rel.Event.ID, "stream", e.StreamID, "applied", len(rel.Applied))
	}
	if p := rel.Parked; p != nil && (len(rel.Applied) > 0 || rel.Skipped || p.ID == rel.Event.ID) {
		if p.ID != rel.Event.ID {
			r.m.parked.Inc() // a held event, parked in its turn
		}
		r.log.Error("parked event failed; its stream stays held",
			"action", action, "parked_id", p.ID, "stream", p.Event.StreamID, "revision", p.Event.Revision,
			"event_id", p.Event.EventID, "type", p.Event.Type, "attempts", p.Attempts, "error", p.Error)
	}
	r.refreshParked(context.Background())
}

// refreshParked counts the projection's waiting events for its status and
// the parked gauge. Counts are taken one at a time, so an older count never
// overwrites a newer one.
func (r *Runner) refreshParked(ctx context.Context) {
	if r.lead != nil {
		r = r.lead // the count is the projection's, every segment's
	}
	r.parkedMu.Lock()
	defer r.parkedMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var n int
	if err := r.pool.QueryRow(ctx, `SELECT count(*) FROM sightline.parked
		WHERE projection = $1 AND generation = $2 AND `+waitingRows, r.p.Name(), r.registration().generation).Scan(&n); err != nil {
		return // the next status tick tries again
	}
	r.mu.Lock()
	r.state.parked = n
	r.m.parkedNow.Set(float64(n))
	r.mu.Unlock()
}
