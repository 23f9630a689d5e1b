package pgstore

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// Grouping. Concurrent appends go to the server together: one statement and
// one transaction for every append that queued while the groups before it
// were in flight, the way concurrent commits share a WAL flush. Under load a
// transaction's fixed cost (its round trip, its snapshot, its commit record)
// is most of what a single-event append costs the server, so a group of n
// appends costs it little more than one. Alone, an append goes at once, in a
// group of one. A group's appends are to distinct streams: a second append to
// a stream waits for the next group.
//
// Each append in a group keeps its own condition on its stream's revision:
// one whose condition fails writes nothing and the others go on. Anything
// that fails the statement itself (a unique violation from a race with an
// append elsewhere, an event ID appended before, a lost connection) sends
// every append of the group back to Append's own path, one transaction each,
// which sorts out each one's outcome as it always has; nothing of the failed
// group committed, or, if its commit's answer was lost, its events are
// recognized by their IDs. A group waits at most groupLockTimeout for a row
// lock (a stream another transaction is appending to, an outbox transaction
// left open): then it fails and its appends go alone, each waiting as long
// as its own caller lets it, so that one busy stream never holds up the
// appends to others. A group's appends are sorted by stream, so that two
// groups lock their streams in the same order.
//
// A second group goes while one is in flight only once that one has taken
// groupOverlapAfter: until then the appends wait for it and go together in
// the next group. One group at a time costs the server and this process
// about half as much per append as two small ones, the second of which
// would find the positioning lock taken and leave its events to a
// sequencer run; a group held up by a row lock still holds the others up
// for no longer than groupOverlapAfter.
const (
	groupsInFlight    = 2                     // groups on their way to the server at once
	groupOverlapAfter = 2 * time.Millisecond  // a second group goes once the one in flight has taken this long
	groupLockTimeout  = 50 * time.Millisecond // a group waits no longer for a row lock
	groupAppendsMax   = 64                    // appends in one group
	groupedEventsMax  = 16                    // an append with more events than this goes alone
)

// groupSQL appends each of a group's appends whose stream satisfies its
// condition and marks the events unsequenced, like appendSQL; it returns each
// append's stream's last revision before the statement and whether its events
// went in. Conditions are condAny, condNoStream, condExists and condExact
// (0 to 3). The appends of a group are to distinct streams.
const groupSQL = `WITH req AS (
		SELECT r.n, r.stream_id,
			coalesce((SELECT max(e.revision) FROM sightline.event_log e WHERE e.stream_id = r.stream_id), -1) AS rev,
			r.kind, r.exact
		FROM unnest($1::text[], $2::int[], $3::bigint[]) WITH ORDINALITY AS r(stream_id, kind, exact, n)
	), ok AS (
		SELECT n, stream_id, rev FROM req
		WHERE CASE kind WHEN 0 THEN true WHEN 1 THEN rev = -1 WHEN 2 THEN rev >= 0 ELSE rev = exact END
	), ins AS (
		INSERT INTO sightline.event_log (stream_id, revision, event_id, type, data, metadata)
		SELECT ok.stream_id, ok.rev + u.ord, u.event_id::uuid, u.type, u.data::jsonb, u.metadata::jsonb
		FROM unnest($4::int[], $5::int[], $6::text[], $7::text[], $8::text[], $9::text[]) WITH ORDINALITY AS u(n, ord, event_id, type, data, metadata, i)
		JOIN ok ON ok.n = u.n
		ORDER BY u.i
		RETURNING id
	), marked AS (
		INSERT INTO sightline.unsequenced (id) SELECT id FROM ins
	)
	SELECT req.rev, ok.n IS NOT NULL FROM req LEFT JOIN ok USING (n) ORDER BY req.n`

// groupedAppend is one append waiting in a group.
type groupedAppend struct {
	ctx      context.Context
	stream   string
	expected eventstore.ExpectedRevision
	rows     appendRows
	done     chan groupResult // buffered: the sender never waits
}

// groupResult is what a grouped append learns. With err set, the group
// failed and the append must go alone.
type groupResult struct {
	rev int64  // the stream's last revision before the group
	in  bool   // the condition held and the events went in
	pos uint64 // the position of the append's last event, if the group gave it one
	err error
}

type grouper struct {
	pool        *pgxpool.Pool
	seq         *sequencer
	reqs        chan *groupedAppend
	slots       chan struct{}   // a token per group in flight
	sending     atomic.Int32    // groups in flight
	sent        chan struct{}   // a group has been answered (buffered: a signal may be stale)
	lockTimeout atomic.Int64    // milliseconds: groupLockTimeout, which tests change
	closed      <-chan struct{} // closed by Store.Close
	wg          *sync.WaitGroup // Store.Close waits for groups in flight
}

func newGrouper(pool *pgxpool.Pool, seq *sequencer, closed <-chan struct{}, wg *sync.WaitGroup) *grouper {
	g := &grouper{pool: pool, seq: seq, reqs: make(chan *groupedAppend, groupAppendsMax), slots: make(chan struct{}, groupsInFlight), sent: make(chan struct{}, 1), closed: closed, wg: wg}
	g.lockTimeout.Store(groupLockTimeout.Milliseconds())
	return g
}

// append sends an append with its group and waits for the group's outcome.
func (g *grouper) append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, rows appendRows) groupResult {
	a := &groupedAppend{ctx: ctx, stream: stream, expected: expected, rows: rows, done: make(chan groupResult, 1)}
	select {
	case g.reqs <- a:
	case <-ctx.Done():
		return groupResult{err: ctx.Err()}
	case <-g.closed:
		return groupResult{err: eventstore.ErrClosed}
	}
	select {
	case r := <-a.done:
		return r
	case <-ctx.Done():
		return groupResult{err: ctx.Err()}
	case <-g.closed:
		return groupResult{err: eventstore.ErrClosed}
	}
}

// run gathers groups until ctx ends. It takes a slot before it gathers, so
// that while every slot is taken the appends queue up for the next group.
func (g *grouper) run(ctx context.Context) {
	var held []*groupedAppend // appends to a stream the group before already had
	for {
		select {
		case g.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		if !g.awaitOverlap(ctx) {
			return
		}
		if len(held) == 0 {
			select {
			case a := <-g.reqs:
				held = append(held, a)
			case <-ctx.Done():
				return
			}
		}
		var group []*groupedAppend
		group, held = g.gather(held)
		if len(group) == 0 {
			<-g.slots
			continue
		}
		slices.SortFunc(group, func(a, b *groupedAppend) int { return strings.Compare(a.stream, b.stream) })
		g.wg.Add(1)
		g.sending.Add(1)
		go func() {
			defer g.wg.Done()
			defer func() { <-g.slots }()
			g.send(ctx, group)
			g.sending.Add(-1)
			select {
			case g.sent <- struct{}{}:
			default:
			}
		}()
	}
}

// awaitOverlap waits, while a group is in flight, until it is answered or
// has taken groupOverlapAfter; false once ctx ends.
func (g *grouper) awaitOverlap(ctx context.Context) bool {
	select {
	case <-g.sent: // stale: from a group answered before
	default:
	}
	if g.sending.Load() == 0 {
		return true
	}
	t := time.NewTimer(groupOverlapAfter)
	defer t.Stop()
	select {
	case <-g.sent:
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	return true
}

// gather takes the held appends, then whatever has queued, into a group of
// appends to distinct streams; it returns the group and what it held back.
func (g *grouper) gather(held []*groupedAppend) (group, rest []*groupedAppend) {
	streams := make(map[string]struct{}, len(held))
	take := func(a *groupedAppend) bool {
		if a.ctx.Err() != nil {
			a.done <- groupResult{err: a.ctx.Err()} // never sent: nothing written
			return true
		}
		if _, dup := streams[a.stream]; dup || len(group) == groupAppendsMax {
			return false
		}
		streams[a.stream] = struct{}{}
		group = append(group, a)
		return true
	}
	for _, a := range held {
		if !take(a) {
			rest = append(rest, a)
		}
	}
	for len(group) < groupAppendsMax {
		select {
		case a := <-g.reqs:
			if !take(a) {
				rest = append(rest, a)
			}
		default:
			return group, rest
		}
	}
	return group, rest
}

// send runs a group's statement in a transaction of its own, which also
// positions the group's events when the sequencer's lock is free, and
// hands each append its result.
func (g *grouper) send(ctx context.Context, group []*groupedAppend) {
	results, err := g.insert(ctx, group)
	if ctx.Err() != nil {
		err = eventstore.ErrClosed // the store is closing: nobody goes alone
	}
	for i, a := range group {
		if err != nil {
			a.done <- groupResult{err: err}
		} else {
			a.done <- results[i]
		}
	}
}

func (g *grouper) insert(ctx context.Context, group []*groupedAppend) ([]groupResult, error) {
	streams := make([]string, len(group))
	kinds := make([]int32, len(group))
	exact := make([]int64, len(group))
	var appendNo, ords []int32
	var ids, types, data, metadata []string
	for i, a := range group {
		streams[i] = a.stream
		kinds[i], exact[i] = condition(a.expected)
		for j := range a.rows.ids {
			appendNo = append(appendNo, int32(i+1))
			ords = append(ords, int32(j+1))
		}
		ids = append(ids, a.rows.ids...)
		types = append(types, a.rows.types...)
		data = append(data, a.rows.data...)
		metadata = append(metadata, a.rows.metadata...)
	}
	b := &pgx.Batch{}
	// Without a generic plan, PostgreSQL plans the statement anew for each
	// group (its arrays' lengths vary), which costs more than running it.
	b.Queue(`SELECT set_config('plan_cache_mode', 'force_generic_plan', true),
		set_config('lock_timeout', $1, true)`, fmt.Sprintf("%dms", g.lockTimeout.Load()))
	b.Queue(groupSQL, streams, kinds, exact, appendNo, ords, ids, types, data, metadata)
	// Positioned in the same transaction when no run is under way, and
	// then committed as a run is, waiting for the disk; otherwise
	// committed as unflushed commits (see position_events_try).
	b.Queue(`SELECT event_id, position, stream_id, revision, type, data, metadata, created_at
		FROM sightline.position_events_try($1, $2)`, g.seq.cfg.SequenceBatch, g.seq.maxRows())
	defer g.seq.beginRun()() // live subscribers woken by its notification wait for its rows
	br := g.pool.SendBatch(ctx, b)
	defer br.Close() //nolint:errcheck // reports the error already returned
	if _, err := br.Exec(); err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	results, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (r groupResult, err error) {
		err = row.Scan(&r.rev, &r.in)
		return r, err
	})
	if err != nil {
		return nil, err
	}
	if len(results) != len(group) {
		return nil, fmt.Errorf("pgstore: a group of %d appends had %d answers", len(group), len(results))
	}
	rows, err = br.Query()
	if err != nil {
		return nil, err
	}
	done, err := scanPositioned(rows)
	if err != nil {
		return nil, err
	}
	if err := br.Close(); err != nil { // the commit's outcome
		return nil, err
	}
	g.seq.publish(done)
	if len(done) > 0 {
		at := make(map[uuid.UUID]uint64, len(done))
		for _, p := range done {
			at[p.ID] = uint64(p.Pos)
		}
		for i, a := range group {
			if results[i].in {
				results[i].pos = at[a.rows.last]
			}
		}
	}
	return results, nil
}
