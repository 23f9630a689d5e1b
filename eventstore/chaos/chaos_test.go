package chaos

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
)

// scripted is a subscription that replays fixed messages.
type scripted struct{ msgs []eventstore.Message }

func (s *scripted) Recv(context.Context) (eventstore.Message, error) {
	if len(s.msgs) == 0 {
		return eventstore.Message{}, eventstore.ErrClosed
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}
func (s *scripted) Close() error { return nil }

// TestNoCheckpointPassesAHeldEvent checks, over many seeds, that no
// message's checkpoint passes an event that has not been delivered yet, so
// a consumer that resubscribes from any checkpoint loses nothing.
func TestNoCheckpointPassesAHeldEvent(t *testing.T) {
	for seed := range uint64(300) {
		var msgs []eventstore.Message
		pos := uint64(0)
		for m := range 6 {
			var events []eventstore.RecordedEvent
			for range 5 {
				pos++
				events = append(events, eventstore.RecordedEvent{
					StreamID: fmt.Sprintf("s-%d", pos%3), Revision: pos, Position: eventstore.At(pos), EventID: fmt.Sprint(pos),
				})
			}
			msgs = append(msgs, eventstore.Message{Events: events, Checkpoint: eventstore.At(pos), CaughtUp: m == 5})
		}
		s := Wrap(nil, Config{Seed: seed, Late: 0.3, Reorder: 0.5, Duplicate: 0.2})
		sub := &subscription{s: s, inner: &scripted{msgs: msgs}}
		delivered := map[uint64]bool{}
		for range msgs {
			msg, err := sub.Recv(context.Background())
			require.NoError(t, err)
			for _, e := range msg.Events {
				delivered[e.Position.Commit] = true
			}
			for p := uint64(1); p <= msg.Checkpoint.Commit; p++ {
				require.True(t, delivered[p], "seed %d: checkpoint %s passes undelivered position %d", seed, msg.Checkpoint, p)
			}
		}
		require.Len(t, delivered, int(pos), "seed %d: everything arrives by the caught-up message", seed)
	}
}
