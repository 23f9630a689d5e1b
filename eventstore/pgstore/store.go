package pgstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// Defaults for Config.
const (
	SequenceBatchDefault = 10000
	ReadBatchDefault     = 1000
	SweepIntervalDefault = time.Second
)

// Config configures a Store.
type Config struct {
	// SequenceBatch caps how many events one sequencer run gives positions to.
	// Defaults to SequenceBatchDefault.
	SequenceBatch int
	// ReadBatch caps the events in one subscription message. Defaults to
	// ReadBatchDefault.
	ReadBatch int
	// SweepInterval is how often the sequencer looks for committed events
	// that nobody woke it for: events of a process that died between its
	// commit and its sequencing. Wake-ups, not this interval, carry normal
	// traffic. Defaults to SweepIntervalDefault.
	SweepInterval time.Duration
	// Logger receives the store's logs. Defaults to slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.SequenceBatch = cmp.Or(c.SequenceBatch, SequenceBatchDefault)
	c.ReadBatch = cmp.Or(c.ReadBatch, ReadBatchDefault)
	c.SweepInterval = cmp.Or(c.SweepInterval, SweepIntervalDefault)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if c.SequenceBatch < 1 || c.ReadBatch < 1 || c.SweepInterval <= 0 {
		return errors.New("pgstore: SequenceBatch, ReadBatch and SweepInterval must be positive")
	}
	return nil
}

// Store is the embedded PostgreSQL event store. The schema must have been
// migrated (internal/migrate) before New is called.
type Store struct {
	pool   *pgxpool.Pool
	cfg    Config
	seq    *sequencer
	hub    *hub
	group  *grouper
	cancel context.CancelFunc
	closed chan struct{} // closed by Close: releases everyone waiting
	wg     sync.WaitGroup
	once   sync.Once

	tail  tail         // live subscribers' shared read
	reads atomic.Int64 // subscription reads, which tests count
}

var _ eventstore.Store = (*Store)(nil)

// New starts a Store on pool: its sequencer and its notification listener
// run until Close.
func New(pool *pgxpool.Pool, cfg Config) (*Store, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{pool: pool, cfg: cfg, cancel: cancel, closed: make(chan struct{})}
	s.hub = newHub(pool, cfg.Logger)
	s.seq = newSequencer(pool, cfg, s.hub, &s.tail, s.closed, &s.wg)
	s.hub.onAppend = s.seq.kick
	s.group = newGrouper(pool, s.seq, s.closed, &s.wg)
	s.wg.Add(3)
	go func() { defer s.wg.Done(); s.group.run(ctx) }()
	go func() { defer s.wg.Done(); s.hub.run(ctx) }()
	go func() { defer s.wg.Done(); s.seq.run(ctx) }()
	return s, nil
}

// Close stops the sequencer and the listener; appends waiting for their
// positions and subscriptions waiting for events return ErrClosed. Safe to
// call twice.
func (s *Store) Close() {
	s.once.Do(func() {
		close(s.closed)
		s.cancel()
		s.wg.Wait()
	})
}

// Connected reports whether the store's notification listener is connected,
// which is what live delivery depends on.
func (s *Store) Connected() bool { return s.hub.connected() }

// KnownHead is the head as this process last learned it, from its own
// sequencer or from the notification every other one sends, without a
// round trip to PostgreSQL. Its Time is when its event was written if
// this process's sequencer positioned it with subscriptions open (it then
// has the rows); otherwise when the head was learned, a little after the
// event was written. ok is false while
// notifications are not being received: the known head may then be
// behind, and Head must be asked.
func (s *Store) KnownHead() (eventstore.Head, bool) {
	head, seen, ok := s.hub.known()
	return eventstore.Head{Position: eventstore.At(head), Time: seen}, ok
}

// ParsePosition parses a token such as "1234".
func (s *Store) ParsePosition(token string) (eventstore.Position, error) {
	p, err := eventstore.ParsePosition(token)
	if err != nil {
		return p, err
	}
	if p.Commit != p.Prepare {
		return eventstore.Position{}, fmt.Errorf("%w: %q: the embedded store's positions are single numbers", eventstore.ErrInvalidPosition, token)
	}
	return p, nil
}

// SequencerRuns counts the sequencer's runs that gave positions since New:
// the runs its appends' groups did not make themselves (see grouper).
func (s *Store) SequencerRuns() int64 { return s.seq.runs.Load() }

// Head reports the newest sequenced position and its event's time.
func (s *Store) Head(ctx context.Context) (eventstore.Head, error) {
	return readHead(ctx, s.pool)
}

// readHead reads the newest sequenced position and its event's time; the
// time is zero while the store is empty.
func readHead(ctx context.Context, q querier) (eventstore.Head, error) {
	var head int64
	var at *time.Time
	if err := q.QueryRow(ctx, `SELECT head, head_at FROM sightline.sequencer`).Scan(&head, &at); err != nil {
		return eventstore.Head{}, fmt.Errorf("read head: %w", err)
	}
	h := eventstore.Head{Position: eventstore.At(uint64(head))}
	if at != nil {
		h.Time = *at
	}
	return h, nil
}

// Append writes events to stream in one statement and returns once the
// events have positions. Appends made at the same time from one process
// share their statement and transaction (see grouper); each keeps its own
// expected revision and outcome. An append whose context ends while it is on
// its way may still be written, as with any statement whose answer never
// came: appending the same event IDs again tells.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	select {
	case <-s.closed:
		return eventstore.AppendResult{}, eventstore.ErrClosed
	default:
	}
	args, err := appendArgs(stream, events)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	next, pos, err := s.insert(ctx, stream, expected, args)
	if err != nil {
		res, again, err := s.retriedAppend(ctx, stream, args, err)
		if !again {
			return res, err
		}
		// An append with the same IDs was under way and rolled back: ours may go ahead.
		if next, err = insertEvents(ctx, unflushed{s.pool}, stream, expected, args, true); err != nil {
			res, _, err := s.retriedAppend(ctx, stream, args, err)
			return res, err
		}
	}
	if pos > 0 { // its group positioned it
		return eventstore.AppendResult{Position: eventstore.At(pos), NextRevision: next}, nil
	}
	pos, err = s.seq.wait(ctx, args.last)
	if errors.Is(err, eventstore.ErrAppendLost) {
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", stream, err)
	}
	if err != nil {
		return eventstore.AppendResult{}, fmt.Errorf("append to %q committed, waiting for its position: %w", stream, err)
	}
	return eventstore.AppendResult{Position: eventstore.At(pos), NextRevision: next}, nil
}

// insert writes an append with its group, or alone if it is large or its
// group failed, and returns the stream's next revision, and its last
// event's position if its group gave it one (0 otherwise: the sequencer
// will).
func (s *Store) insert(ctx context.Context, stream string, expected eventstore.ExpectedRevision, args appendRows) (next, pos uint64, err error) {
	if len(args.ids) <= groupedEventsMax {
		r := s.group.append(ctx, stream, expected, args)
		switch {
		case r.err == nil && r.in:
			return uint64(r.rev+int64(len(args.ids))) + 1, r.pos, nil
		case r.err == nil:
			return 0, 0, &eventstore.WrongExpectedRevisionError{Stream: stream, Expected: expected, Actual: r.rev}
		case ctx.Err() != nil || errors.Is(r.err, eventstore.ErrClosed):
			return 0, 0, r.err
		}
	}
	next, err = insertEvents(ctx, unflushed{s.pool}, stream, expected, args, true)
	return next, 0, err
}

// AppendTx appends events inside the caller's transaction (the outbox
// pattern): the events commit or roll back with the caller's own rows. The
// result's Position is zero because positions are given after commit; the
// commit itself wakes the sequencer. A failed append rolls back only its own
// savepoint, so the caller's transaction stays usable.
func (s *Store) AppendTx(ctx context.Context, tx pgx.Tx, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	args, err := appendArgs(stream, events)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	next, err := insertEvents(ctx, sp, stream, expected, args, false)
	if err != nil {
		_ = sp.Rollback(ctx)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			switch pgErr.ConstraintName {
			case "event_log_event_id_key":
				return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w: an event ID was appended before", stream, eventstore.ErrIdempotency)
			case "event_log_stream_revision_key":
				return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w: another transaction appended to the stream first", stream, eventstore.ErrWrongExpectedRevision)
			}
		}
		return eventstore.AppendResult{}, err
	}
	if _, err := sp.Exec(ctx, `SELECT pg_notify('sightline_append', '')`); err != nil {
		_ = sp.Rollback(ctx)
		return eventstore.AppendResult{}, err
	}
	if err := sp.Commit(ctx); err != nil {
		return eventstore.AppendResult{}, err
	}
	return eventstore.AppendResult{NextRevision: next}, nil
}

type appendRows struct {
	ids, types, data, metadata []string
	last                       uuid.UUID // the last event's ID: what the append waits for
}

func appendArgs(stream string, events []eventstore.EventData) (appendRows, error) {
	ids, err := eventstore.ValidateAppend(stream, events)
	if err != nil {
		return appendRows{}, err
	}
	r := appendRows{
		last:     ids[len(ids)-1],
		ids:      make([]string, len(events)),
		types:    make([]string, len(events)),
		data:     make([]string, len(events)),
		metadata: make([]string, len(events)),
	}
	for i, e := range events {
		meta := e.Metadata
		if len(meta) == 0 {
			meta = []byte("{}")
		}
		r.ids[i], r.types[i], r.data[i], r.metadata[i] = ids[i].String(), e.Type, string(e.Data), string(meta)
	}
	return r, nil
}

// appendSQL inserts an append's events and marks them unsequenced, in one
// statement, if the stream's last revision satisfies the condition that
// follows it. The (stream_id, revision) key turns a concurrent append to the
// same stream into a unique violation, which insertEvents retries.
const appendSQL = `WITH cur AS (
		SELECT coalesce(max(revision), -1) AS rev FROM sightline.event_log WHERE stream_id = $1
	), ins AS (
		INSERT INTO sightline.event_log (stream_id, revision, event_id, type, data, metadata)
		SELECT $1, cur.rev + u.ord, u.event_id::uuid, u.type, u.data::jsonb, u.metadata::jsonb
		FROM cur, unnest($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS u(event_id, type, data, metadata, ord)
		WHERE `

const appendTail = `
		ORDER BY u.ord
		RETURNING id, revision
	), marked AS (
		INSERT INTO sightline.unsequenced (id) SELECT id FROM ins
	)
	SELECT (SELECT rev FROM cur), max(id), max(revision) FROM ins`

// Conditions on a stream's last revision, as the append statements (and a
// group's, groupSQL) take them.
const (
	condAny int32 = iota
	condNoStream
	condExists
	condExact
)

var appendStatements = [...]string{
	condAny:      appendSQL + `true` + appendTail,
	condNoStream: appendSQL + `cur.rev = -1` + appendTail,
	condExists:   appendSQL + `cur.rev >= 0` + appendTail,
	condExact:    appendSQL + `cur.rev = $6` + appendTail,
}

// condition is expected as the append statements take it: the condition
// and, for condExact, the revision.
func condition(expected eventstore.ExpectedRevision) (cond int32, exact int64) {
	switch {
	case expected.IsNoStream():
		return condNoStream, 0
	case expected.IsStreamExists():
		return condExists, 0
	}
	if rev, ok := expected.Exact(); ok {
		return condExact, int64(rev)
	}
	return condAny, 0
}

// appendAttempts bounds the retries of an append that keeps losing the race
// for the next revision of a busy stream.
const appendAttempts = 50

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// unflushed runs each statement in a transaction of its own whose commit does
// not wait for the WAL to reach the disk. Append may commit this way because
// it acknowledges nothing until the sequencer has positioned the events, and
// the sequencer commits synchronously after it has seen them: its commit
// record comes later in the WAL, so flushing it flushes the append's. An
// append lost in a crash before that flush was never acknowledged, as if the
// crash had come before its commit; and no subscriber can have seen it,
// because subscribers read only positioned events. The disk write that a
// plain insert waits for alone is thus shared by every append of a sequencer
// run.
//
// What can see such an event before the flush, as it can see any committed
// event not yet positioned: ReadStream (with a zero position), SQL on
// sightline.events (with a NULL position), and a concurrent append to the
// same stream, whose revision check counts it.
type unflushed struct{ pool *pgxpool.Pool }

// commitUnflushed, selected first in a transaction's round trip, makes its
// commit not wait for the disk (SET LOCAL would warn: not yet in a
// transaction block).
const commitUnflushed = `set_config('synchronous_commit', 'off', true)`

func (u unflushed) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	b := &pgx.Batch{} // one round trip and one implicit transaction
	b.Queue(`SELECT ` + commitUnflushed)
	b.Queue(sql, args...)
	return closingRow{u.pool.SendBatch(ctx, b)}
}

// closingRow is the batch's last statement's row; Scan closes the batch,
// which ends its transaction.
type closingRow struct{ br pgx.BatchResults }

func (r closingRow) Scan(dest ...any) error {
	_, err := r.br.Exec()
	if err == nil {
		err = r.br.QueryRow().Scan(dest...)
	}
	if err != nil {
		r.br.Close() // reports err again
		return err
	}
	return r.br.Close()
}

// insertEvents appends in one statement and returns the stream's next
// revision. Inside a transaction (q is a savepoint's
// Tx) a lost race is not retried: the transaction's snapshot may be older
// than the winner's commit.
func insertEvents(ctx context.Context, q querier, stream string, expected eventstore.ExpectedRevision, r appendRows, retry bool) (uint64, error) {
	args := []any{stream, r.ids, r.types, r.data, r.metadata}
	cond, exact := condition(expected)
	if cond == condExact {
		args = append(args, exact)
	}
	for attempt := 1; ; attempt++ {
		var cur int64
		var lastID, lastRev *int64
		err := q.QueryRow(ctx, appendStatements[cond], args...).Scan(&cur, &lastID, &lastRev)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "event_log_stream_revision_key" && retry && attempt < appendAttempts {
			continue // another append took the revision first: look again
		}
		if err != nil {
			return 0, err
		}
		if lastID == nil { // the condition did not hold
			return 0, &eventstore.WrongExpectedRevisionError{Stream: stream, Expected: expected, Actual: cur}
		}
		return uint64(*lastRev) + 1, nil
	}
}

// retriedAppend handles an append that failed on a wrong expected revision or
// on an event ID that exists: if the same events were appended before as one
// append to this stream, it returns that first result. again says that the
// conflicting IDs are gone (their append rolled back), so the append may be
// tried once more.
func (s *Store) retriedAppend(ctx context.Context, stream string, args appendRows, cause error) (res eventstore.AppendResult, again bool, err error) {
	ids := args.ids
	var pgErr *pgconn.PgError
	dupID := errors.As(cause, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "event_log_event_id_key"
	if !dupID && !errors.Is(cause, eventstore.ErrWrongExpectedRevision) {
		return eventstore.AppendResult{}, false, fmt.Errorf("append to %q: %w", stream, cause)
	}
	rows, err := s.pool.Query(ctx, `SELECT stream_id, revision, position, event_id::text
		FROM sightline.events WHERE event_id = ANY($1::text[]::uuid[])`, ids)
	if err != nil {
		return eventstore.AppendResult{}, false, fmt.Errorf("append to %q: look up earlier append: %w", stream, err)
	}
	type prior struct {
		revision int64
		stream   string
		position *int64
	}
	found := map[string]prior{}
	for rows.Next() {
		var p prior
		var eventID string
		if err := rows.Scan(&p.stream, &p.revision, &p.position, &eventID); err != nil {
			rows.Close()
			return eventstore.AppendResult{}, false, err
		}
		found[eventID] = p
	}
	if err := rows.Err(); err != nil {
		return eventstore.AppendResult{}, false, err
	}
	if len(found) == 0 {
		return eventstore.AppendResult{}, dupID, cause
	}
	var first, last prior
	for i, id := range ids {
		p, ok := found[id] // ids are in canonical form, as PostgreSQL renders them
		if !ok || p.stream != stream || (i > 0 && p.revision != first.revision+int64(i)) {
			return eventstore.AppendResult{}, false, fmt.Errorf("append to %q: %w", stream, eventstore.ErrIdempotency)
		}
		if i == 0 {
			first = p
		}
		last = p
	}
	pos := uint64(0)
	if last.position != nil {
		pos = uint64(*last.position)
	} else if pos, err = s.seq.wait(ctx, args.last); err != nil {
		return eventstore.AppendResult{}, false, err
	}
	return eventstore.AppendResult{Position: eventstore.At(pos), NextRevision: uint64(last.revision) + 1}, false, nil
}

// ReadStream reads a stream from revision from (inclusive). Events not yet
// sequenced have the zero position.
func (s *Store) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if limit <= 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `
		SELECT p.position, e.revision, e.event_id::text, e.type, e.data, e.metadata, e.created_at
		FROM sightline.event_log e
		LEFT JOIN sightline.positions p ON p.event_row = e.id
		WHERE e.stream_id = $1 AND e.revision >= $2
		ORDER BY e.revision LIMIT $3`, stream, int64(from), limit)
	if err != nil {
		return nil, fmt.Errorf("read stream %q: %w", stream, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (eventstore.RecordedEvent, error) {
		var pos *int64
		var rev int64
		e := eventstore.RecordedEvent{StreamID: stream}
		err := row.Scan(&pos, &rev, &e.EventID, &e.Type, &e.Data, &e.Metadata, &e.CreatedAt)
		e.Revision = uint64(rev)
		if pos != nil {
			e.Position = eventstore.At(uint64(*pos))
		}
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("read stream %q: %w", stream, err)
	}
	if len(out) == 0 {
		var exists bool
		if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM sightline.event_log WHERE stream_id = $1)`, stream).Scan(&exists); err != nil {
			return nil, fmt.Errorf("read stream %q: %w", stream, err)
		}
		if !exists {
			return nil, fmt.Errorf("read stream %q: %w", stream, eventstore.ErrStreamNotFound)
		}
	}
	return out, nil
}
