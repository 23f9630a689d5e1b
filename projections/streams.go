package projections

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
)

// StreamState is what a read of one stream's rows knows of that stream in
// the projection's active generation.
type StreamState struct {
	// Stream is the stream's name; "" when the expression naming it gave
	// NULL.
	Stream string
	// Revision is the stream's last applied revision; -1 when none is.
	Revision int64
	// Hold says whether a parked event holds the stream, and whether one
	// at or before the position asked about waits.
	Hold Hold
}

// Applied reports whether revision rev of the stream is in the read model.
func (s StreamState) Applied(rev uint64) bool { return s.Revision >= 0 && uint64(s.Revision) >= rev }

// HeldAt reports whether a parked event holds the stream at or below rev,
// so that revision rev will not be in the read model until it is released.
func (s StreamState) HeldAt(rev uint64) bool { return s.Hold.ParkedID != 0 && s.Hold.From <= rev }

// QueueStream queues on b the query of a stream's state: streamSQL
// selects the stream's name, from args as $1…; upTo is the position
// asked about for Hold.Covers (eventstore.Start for none). st holds the
// answer once b's results are read. b must go to the runner's database.
func (r *Runner) QueueStream(b *pgx.Batch, streamSQL string, args []any, upTo eventstore.Position, st *StreamState) {
	reg := r.registration()
	n := len(args)
	revs := pgx.Identifier{reg.schema, "_stream_revisions"}.Sanitize()
	sql := fmt.Sprintf(`WITH s (stream_id) AS (%s)
		SELECT s.stream_id, (SELECT revision FROM %s r WHERE r.stream_id = s.stream_id), h.id, h.from_revision, h.covers
		FROM s LEFT JOIN LATERAL (
			SELECT (array_agg(id ORDER BY revision))[1] AS id, min(revision) AS from_revision,
				coalesce(bool_or((commit_position, prepare_position) <= ($%d::bigint, $%d::bigint)), false) AS covers
			FROM sightline.parked
			WHERE projection = $%d AND generation = $%d AND stream_id = s.stream_id AND %s
			HAVING count(*) > 0) h ON true`, streamSQL, revs, n+1, n+2, n+3, n+4, waitingRows)
	args = append(args[:n:n], int64(upTo.Commit), int64(upTo.Prepare), r.p.Name(), reg.generation)
	b.Queue(sql, args...).QueryRow(func(row pgx.Row) error {
		var stream *string
		var rev, parked, from *int64
		var covers *bool
		if err := row.Scan(&stream, &rev, &parked, &from, &covers); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return errors.New("the stream expression gave no row")
			}
			return err
		}
		*st = StreamState{Revision: -1}
		if stream != nil {
			st.Stream = *stream
		}
		if rev != nil {
			st.Revision = *rev
		}
		if parked != nil {
			st.Hold = Hold{ParkedID: *parked, From: uint64(*from), Covers: *covers}
		}
		return nil
	})
}

// WatchStream returns a channel closed once a batch that moves the stream
// (applies its events, or parks or releases one) commits, or the runner of
// the stream's segment attaches to another generation or stops; and a func
// that stops watching. A reader checks the stream's state after watching,
// then waits. A stopped runner moves nothing: its channel is nil, never
// ready.
func (r *Runner) WatchStream(stream string) (<-chan struct{}, func()) {
	return r.segmentOf(stream).watchStream(stream)
}

func (r *Runner) watchStream(stream string) (<-chan struct{}, func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state.stopped {
		return nil, func() {}
	}
	ch := make(chan struct{})
	if r.streamWaits == nil {
		r.streamWaits = map[string][]chan struct{}{}
	}
	r.streamWaits[stream] = append(r.streamWaits[stream], ch)
	return ch, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		ws := r.streamWaits[stream]
		for i, w := range ws {
			if w == ch {
				ws = append(ws[:i], ws[i+1:]...)
				break
			}
		}
		if len(ws) == 0 {
			delete(r.streamWaits, stream)
		} else {
			r.streamWaits[stream] = ws
		}
	}
}

// wakeStreamsLocked wakes the watchers of streams. The caller holds mu.
func (r *Runner) wakeStreamsLocked(streams []string) {
	for _, s := range streams {
		for _, w := range r.streamWaits[s] {
			close(w)
		}
		delete(r.streamWaits, s)
	}
}

// wakeAllStreamsLocked wakes every watcher: the generation changed, or
// the runner stopped. The caller holds mu.
func (r *Runner) wakeAllStreamsLocked() {
	for s, ws := range r.streamWaits {
		for _, w := range ws {
			close(w)
		}
		delete(r.streamWaits, s)
	}
}
