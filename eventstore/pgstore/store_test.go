package pgstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/testdb"
)

func newStore(t testing.TB, cfg pgstore.Config) (*pgstore.Store, *testdb.DB) {
	db := testdb.New(t)
	s, err := pgstore.New(db.Pool, cfg)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s, db
}

func TestContract(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Features{HeadTime: true, StrictIdempotency: true}, func(t *testing.T) eventstore.Store {
		s, _ := newStore(t, pgstore.Config{})
		return s
	})
}

// TestReadsAreWindowed: with small reads, a subscription whose filter
// matches one event far into the store walks there window by window,
// reports progress on the way, and says caught up only at the head.
func TestReadsAreWindowed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t, pgstore.Config{ReadBatch: 2})
	for range 150 {
		_, err := s.Append(ctx, "order-noise", eventstore.Any, storetest.Event("Noise", `{}`))
		require.NoError(t, err)
	}
	want, err := s.Append(ctx, "order-signal", eventstore.Any, storetest.Event("Signal", `{}`))
	require.NoError(t, err)
	for range 3 {
		_, err := s.Append(ctx, "order-noise", eventstore.Any, storetest.Event("Noise", `{}`))
		require.NoError(t, err)
	}
	head, err := s.Head(ctx)
	require.NoError(t, err)

	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{"order-signal"}})
	require.NoError(t, err)
	defer sub.Close()
	var got []eventstore.RecordedEvent
	last, messages := eventstore.Start, 0
	for {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		messages++
		require.True(t, last.Before(msg.Checkpoint), "every message moves the checkpoint on")
		last = msg.Checkpoint
		got = append(got, msg.Events...)
		if msg.CaughtUp {
			break
		}
	}
	require.Equal(t, head.Position, last)
	require.Len(t, got, 1)
	require.Equal(t, want.Position, got[0].Position)
	// A catch-up read fetches 4 messages of 2 events and looks at 4 times
	// as many positions: 154 positions in windows of 32.
	require.Greater(t, messages, 4, "154 positions in windows of 32")
}

// TestKnownHead: a store knows the head without asking the server, its
// own appends' as soon as they return, another process's once notified.
func TestKnownHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, db := newStore(t, pgstore.Config{})
	other, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	t.Cleanup(other.Close)
	require.Eventually(t, s.Connected, 10*time.Second, 10*time.Millisecond)

	before := time.Now()
	own, err := s.Append(ctx, "order-1", eventstore.Any, storetest.Event("T", `{}`))
	require.NoError(t, err)
	head, ok := s.KnownHead()
	require.True(t, ok)
	require.Equal(t, own.Position, head.Position, "known as soon as the append returns")
	require.False(t, head.Time.Before(before), "learned after it was written")

	theirs, err := other.Append(ctx, "order-2", eventstore.Any, storetest.Event("T", `{}`))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		head, ok := s.KnownHead()
		return ok && head.Position == theirs.Position
	}, 10*time.Second, 5*time.Millisecond, "another process's append, notified")
}

// TestCloseReleasesWaiters: Close ends a Recv waiting for events, and so
// does closing the subscription itself.
func TestCloseReleasesWaiters(t *testing.T) {
	t.Parallel()
	ctx := context.Background() // no deadline: only Close can end the waits
	s, _ := newStore(t, pgstore.Config{})
	recv := func(sub eventstore.Subscription) chan error {
		errs := make(chan error, 1)
		go func() {
			for {
				if _, err := sub.Recv(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
		return errs
	}
	own, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	require.NoError(t, err)
	ownErr := recv(own)
	other, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	require.NoError(t, err)
	otherErr := recv(other)

	require.NoError(t, own.Close())
	require.ErrorIs(t, <-ownErr, eventstore.ErrClosed)
	s.Close()
	require.ErrorIs(t, <-otherErr, eventstore.ErrClosed)
	_, err = s.Append(ctx, "order-late", eventstore.Any, storetest.Event("A", `{}`))
	require.ErrorIs(t, err, eventstore.ErrClosed, "a closed store writes nothing")
}

// TestCatchUpReadsKeepMessagesSmall: a subscription catching up reads
// several messages' worth at once, and still delivers messages of at most
// ReadBatch events, each full one checkpointed at its last event and only
// the last one caught up, at the head.
func TestCatchUpReadsKeepMessagesSmall(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, _ := newStore(t, pgstore.Config{ReadBatch: 2})
	var positions []eventstore.Position
	for i := range 5 {
		res, err := s.Append(ctx, fmt.Sprintf("order-%d", i), eventstore.NoStream, storetest.Event("Placed", `{}`))
		require.NoError(t, err)
		positions = append(positions, res.Position)
	}
	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{})
	require.NoError(t, err)
	defer sub.Close()
	var sizes []int
	var got []eventstore.Position
	for {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		sizes = append(sizes, len(msg.Events))
		for _, e := range msg.Events {
			got = append(got, e.Position)
		}
		if msg.CaughtUp {
			require.Equal(t, positions[4], msg.Checkpoint, "caught up at the head")
			break
		}
		require.Len(t, msg.Events, 2, "a message before the last is full")
		require.Equal(t, msg.Events[1].Position, msg.Checkpoint, "a full message is checkpointed at its last event")
	}
	require.Equal(t, []int{2, 2, 1}, sizes)
	require.Equal(t, positions, got)
}
