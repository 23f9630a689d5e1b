package projections

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
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

	// It writes what it was told: inserts for streams it has not seen,
	// updates for the others; an insert it was wrong about fails.
	q := &pgx.Batch{}
	(&knownRevisions{last: map[string]int64{"a": 4, "b": 0}}).queueWrites(q, revs, []string{"a", "c", "d"}, []int64{6, 2, 0})
	require.Len(t, q.QueuedQueries, 2)
	require.NoError(t, db.Pool.SendBatch(ctx, q).Close())
	require.Equal(t, map[string]int64{"a": 6, "b": 0, "c": 2, "d": 0}, tableRevisions(t, db))
	q = &pgx.Batch{}
	(&knownRevisions{last: map[string]int64{}}).queueWrites(q, revs, []string{"a"}, []int64{7})
	require.Error(t, db.Pool.SendBatch(ctx, q).Close())
	_, err = db.Pool.Exec(ctx, `DELETE FROM g._stream_revisions WHERE stream_id IN ('c', 'd')`)
	require.NoError(t, err)

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

func tableRevisions(t *testing.T, db *testdb.DB) map[string]int64 {
	rows, err := db.Pool.Query(context.Background(), `SELECT stream_id, revision FROM g._stream_revisions`)
	require.NoError(t, err)
	got := map[string]int64{}
	var s string
	var r int64
	_, err = pgx.ForEachRow(rows, []any{&s, &r}, func() error { got[s] = r; return nil })
	require.NoError(t, err)
	return got
}
