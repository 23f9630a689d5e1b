package projections

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/internal/testdb"
)

// A builder's memory starts from what its generation holds, follows its
// commits, is loaded again after forget, stops at its bound, and is never
// used again once retired.
func TestBuildMemory(t *testing.T) {
	ctx := context.Background()
	db := testdb.New(t)
	_, err := db.Pool.Exec(ctx, `CREATE SCHEMA g; CREATE TABLE g._stream_revisions (stream_id text PRIMARY KEY, revision bigint NOT NULL);
		INSERT INTO g._stream_revisions VALUES ('a', 4), ('b', 0)`)
	require.NoError(t, err)
	const revs = `"g"."_stream_revisions"`
	m := &buildMemory{max: 3}

	k := m.recall(ctx, db.Pool, revs, "p", 2)
	require.NotNil(t, k)
	require.Equal(t, map[string]int64{"a": 4, "b": 0}, k.last)
	require.False(t, k.held)

	// A commit that moved a, started c and parked d behind a failed event.
	plan := batchPlan{streams: []*streamPlan{
		{stream: "a", next: 5, through: 6},
		{stream: "c", next: 0, through: 2},
		{stream: "d", next: 0, through: 0, held: true},
	}}
	m.committed(plan, []parkedRow{{event: eventstore.RecordedEvent{StreamID: "d"}, state: ParkedStateParked}})
	require.Same(t, k, m.recall(ctx, db.Pool, revs, "p", 2), "kept, not loaded again")
	require.Equal(t, map[string]int64{"a": 6, "b": 0, "c": 2}, k.last)
	require.True(t, k.held)

	// After forget it knows what the table holds, and whether the
	// generation has held streams.
	m.forget()
	_, err = db.Pool.Exec(ctx, `UPDATE g._stream_revisions SET revision = 9 WHERE stream_id = 'a'`)
	require.NoError(t, err)
	k = m.recall(ctx, db.Pool, revs, "p", 2)
	require.Equal(t, map[string]int64{"a": 9, "b": 0}, k.last)
	require.False(t, k.held)
	_, err = db.Pool.Exec(ctx, `INSERT INTO sightline.parked (projection, generation, stream_id, revision, event_id, type, data,
		commit_position, prepare_position, created_at, state) VALUES ('p', 2, 'd', 0, 'e', 't', '', 1, 1, now(), 'held')`)
	require.NoError(t, err)
	m.forget()
	require.True(t, m.recall(ctx, db.Pool, revs, "p", 2).held)

	// Past its bound it lets go for good.
	m.committed(batchPlan{streams: []*streamPlan{{stream: "e", through: 0}, {stream: "f", through: 0}}}, nil)
	require.Nil(t, m.recall(ctx, db.Pool, revs, "p", 2))

	// So does a table already past it, and a retired memory.
	m = &buildMemory{max: 1}
	require.Nil(t, m.recall(ctx, db.Pool, revs, "p", 2))
	m = &buildMemory{}
	require.NotNil(t, m.recall(ctx, db.Pool, revs, "p", 2))
	m.retire()
	require.Nil(t, m.recall(ctx, db.Pool, revs, "p", 2))
}
