package pgstore

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/internal/testdb"
)

// An appender waiting for an event the database no longer has (its commit
// was lost in a crash before it reached the disk) is told so, instead of
// waiting for ever, and the sequencer goes on serving the others.
func TestWaitForALostEvent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db := testdb.New(t)
	s, err := New(db.Pool, Config{})
	require.NoError(t, err)
	defer s.Close()

	_, err = s.seq.wait(ctx, uuid.New())
	require.ErrorIs(t, err, eventstore.ErrAppendLost)

	res, err := s.Append(ctx, "after", eventstore.NoStream, eventstore.EventData{EventID: uuid.NewString(), Type: "T", Data: []byte(`{}`)})
	require.NoError(t, err)
	require.Equal(t, "1", res.Position.String())
}
