package pgstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"golang.org/x/sync/singleflight"

	"github.com/sightlinehq/sightline/eventstore"
)

// Subscribe delivers the events matching filter after position from. It
// reads in position order below the sequenced head, which never has holes,
// and waits on notifications (not a timer) when it has caught up.
func (s *Store) Subscribe(ctx context.Context, from eventstore.Position, filter eventstore.Filter) (eventstore.Subscription, error) {
	if from.Commit != from.Prepare {
		return nil, fmt.Errorf("%w: %s is not an embedded-store position", eventstore.ErrInvalidPosition, from)
	}
	// The subscription keeps its own copy, with the category folded into
	// the prefixes once rather than on every event it filters.
	filter.StreamPrefixes, filter.Category = append([]string{}, filter.Prefixes()...), ""
	filter.EventTypes = append([]string{}, filter.EventTypes...)
	filter.EventTypePrefixes = append([]string{}, filter.EventTypePrefixes...)
	s.tail.open.Add(1)
	return &subscription{store: s, cur: from.Commit, filter: filter, done: make(chan struct{})}, nil
}

// scanWindowFactor times a read's limit is how many positions one read
// looks at.
const scanWindowFactor = 4

// catchUpMessages is how many messages of ReadBatch events one read of a
// subscription catching up fetches: the messages stay as large as ReadBatch
// says, but a read costs the server a fixed part (a round trip, the plan,
// the head) besides its rows. Reading four at a time made a rebuild bound
// by its reads (daily_sales, 1M events) about a fifth faster.
const catchUpMessages = 4

type subscription struct {
	store  *Store
	cur    uint64
	filter eventstore.Filter
	told   bool // a caught-up message was sent for the current position
	// ahead holds what a catch-up read fetched beyond the message it
	// returned, from cur on, for the next Recvs.
	ahead tailRead
	done  chan struct{} // closed by Close
	once  sync.Once
}

// Close ends the subscription; a Recv waiting for events returns ErrClosed.
func (sub *subscription) Close() error {
	sub.once.Do(func() {
		close(sub.done)
		sub.store.tail.open.Add(-1)
	})
	return nil
}

func (sub *subscription) Recv(ctx context.Context) (eventstore.Message, error) {
	for {
		select {
		case <-sub.done:
			return eventstore.Message{}, eventstore.ErrClosed
		default:
		}
		if len(sub.ahead.events) > 0 {
			return sub.next(sub.ahead), nil
		}
		if sub.told {
			// Caught up at cur: nothing is worth a read until a sequencer
			// run has moved the head past it. This saves a read, which
			// would find nothing, after every batch that caught up.
			if err := sub.store.hub.waitBeyond(ctx, sub.cur, sub.done, sub.store.closed); err != nil {
				return eventstore.Message{}, err
			}
		}
		read := sub.read
		if sub.told {
			read = sub.readShared
		}
		r, err := read(ctx)
		if err != nil {
			return eventstore.Message{}, err
		}
		if len(r.events) > 0 || r.head > sub.cur {
			return sub.next(r), nil
		}
		if !sub.told {
			sub.told = true
			return eventstore.Message{Checkpoint: eventstore.At(sub.cur), CaughtUp: true}, nil
		}
	}
}

// next returns the message of r's first ReadBatch events, and keeps the
// rest of r in ahead. A message of ReadBatch events is checkpointed at its
// last event, since the read may have stopped there; the last message of a
// read is checkpointed where the read scanned to, caught up if that is the
// head.
func (sub *subscription) next(r tailRead) eventstore.Message {
	limit := sub.store.cfg.ReadBatch
	msg := eventstore.Message{Events: r.events}
	sub.ahead = tailRead{}
	if len(r.events) > limit {
		msg.Events = r.events[:limit:limit]
		sub.ahead = r
		sub.ahead.events = r.events[limit:]
	}
	if len(msg.Events) == limit {
		msg.Checkpoint = msg.Events[limit-1].Position
	} else {
		msg.Checkpoint, msg.CaughtUp = eventstore.At(r.scanned), r.scanned == r.head
	}
	sub.cur, sub.told = msg.Checkpoint.Commit, msg.CaughtUp
	return msg
}

// read returns the head and the first catchUpMessages × ReadBatch matching
// events after cur, at or below the head, in one snapshot, and the
// position it has scanned to.
func (sub *subscription) read(ctx context.Context) (tailRead, error) {
	return sub.store.readAfter(ctx, sub.cur, sub.filter, catchUpMessages*sub.store.cfg.ReadBatch)
}

// readShared is read for a subscriber that has caught up and been woken by
// the head moving. Live subscribers sit at the same position and are woken
// together, so they share one unfiltered read and each filters it: the
// store reads the new events once, not once per projection. When this
// process's sequencer positioned them, it kept their rows, and there is
// nothing to read. A subscriber that finds no shared read from its
// position makes it, and one whose shared read failed (the subscriber that
// made it went away) reads alone.
func (sub *subscription) readShared(ctx context.Context) (tailRead, error) {
	t := &sub.store.tail
	r, ok := t.from(sub.cur)
	if done := sub.store.seq.inRun(); !ok && done != nil {
		// Woken, most likely by the notification of this process's own
		// sequencer run, which is about to keep the rows it positioned
		// in the tail: they are what this subscriber waits for.
		select {
		case <-done:
		case <-time.After(runWait):
		case <-ctx.Done():
			return tailRead{}, ctx.Err()
		case <-sub.done:
			return tailRead{}, eventstore.ErrClosed
		case <-sub.store.closed:
			return tailRead{}, eventstore.ErrClosed
		}
		r, ok = t.from(sub.cur)
	}
	if !ok {
		flight := t.group.DoChan(strconv.FormatUint(sub.cur, 10), func() (any, error) {
			if r, ok := t.from(sub.cur); ok { // made by the flight before this one
				return r, nil
			}
			// Not bound to the context of the subscriber that happens to
			// make the read: the others wait for it too.
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), sharedReadTimeout)
			defer cancel()
			r, err := sub.store.readAfter(ctx, sub.cur, eventstore.Filter{}, sub.store.cfg.ReadBatch)
			if err == nil {
				t.keep(r)
			}
			return r, err
		})
		select {
		case res := <-flight:
			if res.Err != nil {
				return sub.read(ctx)
			}
			r = res.Val.(tailRead)
		case <-ctx.Done():
			return tailRead{}, ctx.Err()
		}
	}
	events := make([]eventstore.RecordedEvent, 0, len(r.events))
	for _, e := range r.events {
		if sub.filter.Matches(e.StreamID, e.Type) {
			events = append(events, e)
		}
	}
	r.events = events
	return r, nil
}

// runWait bounds how long a woken subscriber waits for this process's
// sequencer run to hand over its rows before it reads them instead. The
// wait costs nothing when the run is what woke it: its events are not
// visible to a read before the run is over. When another process's run
// woke it, the wait delays those events by what is left of the local run
// (a few milliseconds; a sweep that finds nothing, less).
const runWait = time.Second

// sharedReadTimeout bounds a shared read, which no subscriber's context
// bounds alone.
const sharedReadTimeout = 30 * time.Second

// tail holds the latest shared read of live subscribers, or the rows the
// last sequencer run positioned, whichever starts later. Its events, and
// the bytes of their data, go to every subscriber that takes them:
// read-only.
type tail struct {
	group singleflight.Group
	open  atomic.Int64 // subscriptions open: with none, sequencer runs return no rows to keep
	mu    sync.Mutex
	last  tailRead // unfiltered: a filtered read kept here would make others skip events
}

// keep keeps r unless what is kept starts later.
func (t *tail) keep(r tailRead) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if r.from >= t.last.from {
		t.last = r
	}
}

// from returns the kept read if it starts at cur and moved past it.
func (t *tail) from(cur uint64) (tailRead, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last, t.last.from == cur && t.last.head > cur
}

// tailRead is one read: the events after from matching the read's filter,
// up to scanned, with the head at the time. Positions never change once
// given, so a read stays true for as long as it is kept.
type tailRead struct {
	from, head, scanned uint64
	events              []eventstore.RecordedEvent
}

// readAfter reads the first limit events matching filter after from, at
// or below the head, in one snapshot. It looks at no more than
// scanWindowFactor × limit positions, so that the work of one read stays
// bounded whatever the backlog or the filter; a read that finds nothing in
// its window still moves the subscription past it. When it returns limit
// events it has scanned to the last of them, else to the end of its window.
func (s *Store) readAfter(ctx context.Context, from uint64, filter eventstore.Filter, limit int) (tailRead, error) {
	window := uint64(limit) * scanWindowFactor
	s.reads.Add(1)
	rows, err := s.pool.Query(ctx, `
		WITH h AS MATERIALIZED (SELECT head FROM sightline.sequencer LIMIT 1)
		SELECT h.head, e.position, e.stream_id, e.revision, e.event_id::text, e.type, e.data, e.metadata, e.created_at
		FROM h
		LEFT JOIN LATERAL (
			SELECT p.position, e.* FROM sightline.positions p
			JOIN sightline.event_log e ON e.id = p.event_row
			WHERE p.position > $1 AND p.position <= least(h.head, $5)
			  AND (coalesce(cardinality($3::text[]), 0) = 0 OR e.stream_id LIKE ANY($3))
			  AND ((coalesce(cardinality($4::text[]), 0) = 0 AND coalesce(cardinality($6::text[]), 0) = 0)
			       OR e.type = ANY($4) OR e.type LIKE ANY($6))
			ORDER BY p.position
			LIMIT $2
		) e ON true`, int64(from), limit, likePrefixes(filter.Prefixes()), filter.EventTypes, int64(from+window), likePrefixes(filter.EventTypePrefixes))
	if err != nil {
		return tailRead{}, fmt.Errorf("read events after %d: %w", from, err)
	}
	defer rows.Close()
	var head int64
	events := make([]eventstore.RecordedEvent, 0, 16)
	// Value types rather than pointers: a pointer costs an allocation per
	// column and row, and a rebuild reads millions of rows.
	var pos, rev pgtype.Int8
	var stream, id, typ pgtype.Text
	var created pgtype.Timestamptz
	for rows.Next() {
		var data, meta []byte
		if err := rows.Scan(&head, &pos, &stream, &rev, &id, &typ, &data, &meta, &created); err != nil {
			return tailRead{}, err
		}
		if !pos.Valid {
			continue // the head's row, when nothing follows from
		}
		events = append(events, eventstore.RecordedEvent{
			StreamID: stream.String, Revision: uint64(rev.Int64), Position: eventstore.At(uint64(pos.Int64)),
			EventID: id.String, Type: typ.String, Data: data, Metadata: meta, CreatedAt: created.Time,
		})
	}
	if err := rows.Err(); err != nil {
		return tailRead{}, err
	}
	r := tailRead{from: from, head: uint64(head), scanned: min(uint64(head), from+window), events: events}
	if len(events) == limit {
		r.scanned = events[len(events)-1].Position.Commit
	}
	return r, nil
}

// likePrefixes turns stream prefixes into LIKE patterns that match them
// literally.
func likePrefixes(prefixes []string) []string {
	out := make([]string, len(prefixes))
	esc := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)
	for i, p := range prefixes {
		out[i] = esc.Replace(p) + "%"
	}
	return out
}
