package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
)

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
