package chaos

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/sightlinehq/sightline/eventstore"
)

// Config says which faults to inject and how often. Rates are
// probabilities per event (per message for Fail); zero turns a fault off.
type Config struct {
	// Seed makes the faults repeatable.
	Seed uint64
	// Duplicate delivers an event a second time, in a later message.
	Duplicate float64
	// Reorder swaps an event with a later event of the same stream in the
	// same message, so a later revision arrives first.
	Reorder float64
	// Late holds an event back and delivers it in a later message, after
	// events that came after it. Held events are all delivered at the
	// latest with the next caught-up message.
	Late float64
	// Drop loses an event for good. Only events that a later event of the
	// same stream in the same message follows are dropped: no consumer
	// that tracks revisions can see a lost last event before the stream's
	// next one, so dropping it would test nothing but the source.
	Drop float64
	// MaxDelay delays each message by a random time up to this.
	MaxDelay time.Duration
	// Fail ends the subscription with ErrInjected instead of a message.
	Fail float64
}

// ErrInjected is the error of an injected subscription failure.
var ErrInjected = errors.New("chaos: injected subscription failure")

// Store wraps an eventstore.Store and injects faults into its
// subscriptions. Appends, stream reads and the head pass through untouched,
// so gap repair reads the real store.
type Store struct {
	eventstore.Store
	cfg Config

	mu  sync.Mutex
	rng *rand.Rand
}

// Wrap returns s with faults injected as cfg says.
func Wrap(s eventstore.Store, cfg Config) *Store {
	return &Store{Store: s, cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, cfg.Seed^0x5eed))}
}

func (s *Store) chance(p float64) bool {
	if p <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rng.Float64() < p
}

func (s *Store) duration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Duration(s.rng.Int64N(int64(d)))
}

// Subscribe subscribes to the wrapped store and returns a subscription that
// misdelivers.
func (s *Store) Subscribe(ctx context.Context, from eventstore.Position, f eventstore.Filter) (eventstore.Subscription, error) {
	inner, err := s.Store.Subscribe(ctx, from, f)
	if err != nil {
		return nil, err
	}
	return &subscription{s: s, inner: inner}, nil
}

type subscription struct {
	s     *Store
	inner eventstore.Subscription
	held  []held              // late events and duplicates to deliver later
	last  eventstore.Position // the last checkpoint delivered
}

// held is an event delivered later than the store sent it. A late event
// keeps the checkpoints of the messages it is held through at or before
// the event that preceded it, as a source must: no real source reports a
// checkpoint past an event it has not delivered.
type held struct {
	event  eventstore.RecordedEvent
	late   bool
	before eventstore.Position
}

func (sub *subscription) Close() error { return sub.inner.Close() }

func (sub *subscription) Recv(ctx context.Context) (eventstore.Message, error) {
	s := sub.s
	if s.chance(s.cfg.Fail) {
		return eventstore.Message{}, ErrInjected
	}
	msg, err := sub.inner.Recv(ctx)
	if err != nil {
		return msg, err
	}
	if d := s.duration(s.cfg.MaxDelay); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return eventstore.Message{}, ctx.Err()
		}
	}
	in := append([]eventstore.RecordedEvent(nil), msg.Events...) // the store's slice stays as it was
	// What preceded each event as the store sent them: swaps below must not
	// change where a late event's checkpoint stops.
	before := make(map[string]eventstore.Position, len(in))
	for i, e := range in {
		if i == 0 {
			before[e.EventID] = sub.last
		} else {
			before[e.EventID] = in[i-1].Position
		}
	}
	out := make([]eventstore.RecordedEvent, 0, len(in)+len(sub.held))
	// Deliver some of what was held back, before this message's events.
	var keep []held
	for _, h := range sub.held {
		if msg.CaughtUp || s.chance(0.5) {
			out = append(out, h.event)
		} else {
			keep = append(keep, h)
		}
	}
	sub.held = keep
	var tail []eventstore.RecordedEvent // late events when nothing later is certain
	for i := range in {
		e := in[i]
		switch {
		case s.chance(s.cfg.Drop) && nextInStream(in, i) > 0:
			continue
		case s.chance(s.cfg.Late):
			if msg.CaughtUp {
				tail = append(tail, e)
			} else {
				sub.held = append(sub.held, held{event: e, late: true, before: before[e.EventID]})
			}
			continue
		case s.chance(s.cfg.Reorder):
			if j := nextInStream(in, i); j > 0 {
				in[i], in[j] = in[j], in[i]
				e = in[i]
			}
		}
		out = append(out, e)
		if s.chance(s.cfg.Duplicate) {
			if msg.CaughtUp {
				tail = append(tail, e)
			} else {
				sub.held = append(sub.held, held{event: e})
			}
		}
	}
	out = append(out, tail...)
	for _, h := range sub.held {
		if h.late && h.before.Before(msg.Checkpoint) {
			msg.Checkpoint, msg.CaughtUp = h.before, false
		}
	}
	if sub.last.Before(msg.Checkpoint) {
		sub.last = msg.Checkpoint
	}
	msg.Events = out
	return msg, nil
}

func nextInStream(events []eventstore.RecordedEvent, i int) int {
	for j := i + 1; j < len(events); j++ {
		if events[j].StreamID == events[i].StreamID {
			return j
		}
	}
	return -1
}
