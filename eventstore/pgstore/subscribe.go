package pgstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sightlinehq/sightline/eventstore"
)

// Subscribe delivers the events matching filter after position from. It
// reads in position order below the sequenced head, which never has holes,
// and waits on notifications (not a timer) when it has caught up.
func (s *Store) Subscribe(ctx context.Context, from eventstore.Position, filter eventstore.Filter) (eventstore.Subscription, error) {
	if from.Commit != from.Prepare {
		return nil, fmt.Errorf("%w: %s is not an embedded-store position", eventstore.ErrInvalidPosition, from)
	}
	return &subscription{store: s, cur: from.Commit, prefixes: likePrefixes(filter.Prefixes()), types: append([]string{}, filter.EventTypes...), typePrefixes: likePrefixes(filter.EventTypePrefixes),
		done: make(chan struct{})}, nil
}

// scanWindowFactor times ReadBatch is how many positions one read looks at.
const scanWindowFactor = 4

type subscription struct {
	store        *Store
	cur          uint64
	prefixes     []string
	types        []string
	typePrefixes []string
	told         bool          // a caught-up message was sent for the current position
	done         chan struct{} // closed by Close
	once         sync.Once
}

// Close ends the subscription; a Recv waiting for events returns ErrClosed.
func (sub *subscription) Close() error {
	sub.once.Do(func() { close(sub.done) })
	return nil
}

func (sub *subscription) Recv(ctx context.Context) (eventstore.Message, error) {
	for {
		select {
		case <-sub.done:
			return eventstore.Message{}, eventstore.ErrClosed
		default:
		}
		if sub.told {
			// Caught up at cur: nothing is worth a read until a sequencer
			// run has moved the head past it. This saves a read, which
			// would find nothing, after every batch that caught up.
			if err := sub.store.hub.waitBeyond(ctx, sub.cur, sub.done, sub.store.closed); err != nil {
				return eventstore.Message{}, err
			}
		}
		head, scanned, events, err := sub.read(ctx)
		if err != nil {
			return eventstore.Message{}, err
		}
		if len(events) > 0 || head > sub.cur {
			msg := eventstore.Message{Events: events}
			if len(events) == sub.store.cfg.ReadBatch {
				msg.Checkpoint = events[len(events)-1].Position
			} else {
				msg.Checkpoint, msg.CaughtUp = eventstore.At(scanned), scanned == head
			}
			sub.cur, sub.told = msg.Checkpoint.Commit, msg.CaughtUp
			return msg, nil
		}
		if !sub.told {
			sub.told = true
			return eventstore.Message{Checkpoint: eventstore.At(sub.cur), CaughtUp: true}, nil
		}
	}
}

// read returns the head and the first ReadBatch matching events after cur,
// at or below the head, in one snapshot. It looks at no more than
// scanWindow positions, so that the work of one read stays bounded whatever
// the backlog or the filter; a read that finds nothing in its window still
// moves the subscription past it.
func (sub *subscription) read(ctx context.Context) (uint64, uint64, []eventstore.RecordedEvent, error) {
	window := uint64(sub.store.cfg.ReadBatch) * scanWindowFactor
	sub.store.reads.Add(1)
	rows, err := sub.store.pool.Query(ctx, `
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
		) e ON true`, int64(sub.cur), sub.store.cfg.ReadBatch, sub.prefixes, sub.types, int64(sub.cur+window), sub.typePrefixes)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("read events after %d: %w", sub.cur, err)
	}
	defer rows.Close()
	var head int64
	events := make([]eventstore.RecordedEvent, 0, 16)
	for rows.Next() {
		var pos, rev *int64
		var stream, id, typ *string
		var data, meta []byte
		var created *time.Time
		if err := rows.Scan(&head, &pos, &stream, &rev, &id, &typ, &data, &meta, &created); err != nil {
			return 0, 0, nil, err
		}
		if pos == nil {
			continue
		}
		events = append(events, eventstore.RecordedEvent{
			StreamID: *stream, Revision: uint64(*rev), Position: eventstore.At(uint64(*pos)),
			EventID: *id, Type: *typ, Data: data, Metadata: meta, CreatedAt: *created,
		})
	}
	if err := rows.Err(); err != nil {
		return 0, 0, nil, err
	}
	return uint64(head), min(uint64(head), sub.cur+window), events, nil
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
