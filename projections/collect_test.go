package projections

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
)

// message is a message of events at positions from..to, checkpointed at
// checkpoint.
func message(from, to, checkpoint uint64) eventstore.Message {
	m := eventstore.Message{Checkpoint: eventstore.Position{Commit: checkpoint, Prepare: checkpoint}}
	for p := from; p <= to; p++ {
		m.Events = append(m.Events, eventstore.RecordedEvent{Position: eventstore.Position{Commit: p, Prepare: p}})
	}
	return m
}

// TestCollectKeepsBatchesWithinTheirLimit: a batch never holds more than
// its limit, however large the store's messages are; what a message has
// past the limit begins the next batch, whose checkpoint is the message's.
func TestCollectKeepsBatchesWithinTheirLimit(t *testing.T) {
	msgs := make(chan eventstore.Message, 4)
	msgs <- message(11, 40, 45)
	events, checkpoint, taken, rest := collect(message(1, 8, 9), msgs, 20)
	require.Len(t, events, 20)
	require.Equal(t, uint64(22), events[19].Position.Commit)
	require.Equal(t, uint64(22), checkpoint.Commit, "checkpointed at the last event taken, not past the rest")
	require.Equal(t, 1, taken, "the second message is taken whole only with its rest")
	require.Len(t, rest.Events, 18)
	require.Equal(t, uint64(45), rest.Checkpoint.Commit)

	events, checkpoint, taken, rest = collect(rest, msgs, 20)
	require.Len(t, events, 18)
	require.Equal(t, uint64(23), events[0].Position.Commit)
	require.Equal(t, uint64(45), checkpoint.Commit)
	require.Equal(t, 1, taken)
	require.Empty(t, rest.Events)

	// One message of many batches.
	big := message(1, 1000, 1000)
	var batches [][]eventstore.RecordedEvent
	for first := big; ; {
		events, _, _, rest := collect(first, msgs, 300)
		require.LessOrEqual(t, len(events), 300)
		batches = append(batches, events)
		if len(rest.Events) == 0 {
			break
		}
		first = rest
	}
	require.Len(t, batches, 4)
	require.Len(t, batches[3], 100)
	batches[0] = append(batches[0], eventstore.RecordedEvent{})
	require.Equal(t, uint64(301), big.Events[300].Position.Commit, "the reader's events are not overwritten by a batch")

	// A message of no events moves the checkpoint.
	msgs <- eventstore.Message{Checkpoint: eventstore.Position{Commit: 70, Prepare: 70}}
	events, checkpoint, taken, _ = collect(message(60, 61, 62), msgs, 20)
	require.Len(t, events, 2)
	require.Equal(t, uint64(70), checkpoint.Commit)
	require.Equal(t, 2, taken)

	// Events out of position order (one delivered late, before the
	// message's own): a cut would checkpoint past an event of the rest, so
	// the message is taken whole.
	late := message(10, 20, 20)
	late.Events = append(late.Events[1:], late.Events[0]) // 11..20, then 10
	events, checkpoint, _, rest = collect(late, msgs, 5)
	require.Len(t, events, 11)
	require.Empty(t, rest.Events)
	require.Equal(t, uint64(20), checkpoint.Commit)
	// Out of order within the part taken only: cut at the furthest.
	swapped := message(1, 10, 10)
	swapped.Events[2], swapped.Events[3] = swapped.Events[3], swapped.Events[2]
	events, checkpoint, _, rest = collect(swapped, msgs, 4)
	require.Len(t, events, 4)
	require.Equal(t, uint64(4), checkpoint.Commit)
	require.Len(t, rest.Events, 6)

	// A source holding an event back keeps the message's checkpoint before
	// it: so does the cut.
	held := message(1, 10, 10)
	held.Events = append(held.Events[:4], held.Events[5:]...) // 5 held back
	held.Checkpoint = eventstore.Position{Commit: 4, Prepare: 4}
	events, checkpoint, _, rest = collect(held, msgs, 6)
	require.Len(t, events, 6)
	require.Equal(t, uint64(4), checkpoint.Commit, "not past the event held back")
	require.Len(t, rest.Events, 3)
	require.Equal(t, uint64(4), rest.Checkpoint.Commit)
}
