package projections

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
)

// A head learned from a notification carries the time it arrived; the
// store's own word on the same head, with its event's earlier time, wins,
// so that the lag is not measured from the notification.
func TestSeeHead(t *testing.T) {
	r := &Runner{}
	t0 := time.Now()
	r.seeHeadLocked(eventstore.Head{Position: eventstore.At(5), Time: t0})
	r.seeHeadLocked(eventstore.Head{Position: eventstore.At(5), Time: t0.Add(-time.Second)})
	require.Equal(t, eventstore.Head{Position: eventstore.At(5), Time: t0.Add(-time.Second)}, r.state.head, "same head, earlier time")
	r.seeHeadLocked(eventstore.Head{Position: eventstore.At(5), Time: t0})
	r.seeHeadLocked(eventstore.Head{Position: eventstore.At(4), Time: t0.Add(-time.Hour)})
	require.Equal(t, eventstore.Head{Position: eventstore.At(5), Time: t0.Add(-time.Second)}, r.state.head, "later times and older heads change nothing")
	r.seeHeadLocked(eventstore.Head{Position: eventstore.At(6), Time: t0.Add(time.Second)})
	require.Equal(t, eventstore.Head{Position: eventstore.At(6), Time: t0.Add(time.Second)}, r.state.head)
}
