package projections

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/testdb"
)

// A batchTx behaves as pgx's Tx does, savepoints included, though its
// BEGIN went out with other statements.
func TestBatchTx(t *testing.T) {
	ctx := context.Background()
	db := testdb.New(t)
	_, err := db.Pool.Exec(ctx, `CREATE TABLE nums (n int)`)
	require.NoError(t, err)
	conn, err := db.Pool.Acquire(ctx)
	require.NoError(t, err)
	defer conn.Release()
	nums := func() []int {
		rows, _ := db.Pool.Query(ctx, `SELECT n FROM nums ORDER BY n`)
		ns, err := pgx.CollectRows(rows, pgx.RowTo[int])
		require.NoError(t, err)
		return ns
	}

	b := &pgx.Batch{}
	tx := queueBegin(conn.Conn(), b)
	b.Queue(`INSERT INTO nums VALUES (1)`)
	require.NoError(t, tx.SendBatch(ctx, b).Close())
	require.Equal(t, byte('T'), conn.Conn().PgConn().TxStatus(), "begun by the batch")

	sp, err := tx.Begin(ctx)
	require.NoError(t, err)
	_, err = sp.Exec(ctx, `INSERT INTO nums VALUES (2)`)
	require.NoError(t, err)
	require.NoError(t, sp.Rollback(ctx))
	_, err = sp.Exec(ctx, `INSERT INTO nums VALUES (20)`)
	require.ErrorIs(t, err, pgx.ErrTxClosed)

	sp, err = tx.Begin(ctx)
	require.NoError(t, err)
	inner, err := sp.Begin(ctx)
	require.NoError(t, err)
	_, err = inner.Exec(ctx, `INSERT INTO nums VALUES (3)`)
	require.NoError(t, err)
	require.NoError(t, inner.Commit(ctx))
	require.NoError(t, sp.Commit(ctx))
	require.ErrorIs(t, sp.Commit(ctx), pgx.ErrTxClosed)
	require.Empty(t, nums(), "nothing visible before the commit")

	sp, err = tx.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	_, err = sp.Exec(ctx, `INSERT INTO nums VALUES (30)`)
	require.ErrorIs(t, err, pgx.ErrTxClosed, "a savepoint of a committed transaction")
	require.Equal(t, []int{1, 3}, nums())
	require.ErrorIs(t, tx.Rollback(ctx), pgx.ErrTxClosed, "a deferred rollback after the commit")
	_, err = tx.Exec(ctx, `INSERT INTO nums VALUES (4)`)
	require.ErrorIs(t, err, pgx.ErrTxClosed)
	rows, err := tx.Query(ctx, `SELECT 1`)
	require.ErrorIs(t, err, pgx.ErrTxClosed)
	_, err = pgx.CollectRows(rows, pgx.RowTo[int])
	require.ErrorIs(t, err, pgx.ErrTxClosed, "rows readable despite the error, as pgx's are")
	require.ErrorIs(t, tx.QueryRow(ctx, `SELECT 1`).Scan(new(int)), pgx.ErrTxClosed)
	require.ErrorIs(t, tx.SendBatch(ctx, &pgx.Batch{}).Close(), pgx.ErrTxClosed)

	// A transaction that failed rolls back on commit, and says so.
	b = &pgx.Batch{}
	tx = queueBegin(conn.Conn(), b)
	require.NoError(t, tx.SendBatch(ctx, b).Close())
	_, err = tx.Exec(ctx, `INSERT INTO nums VALUES (5)`)
	require.NoError(t, err)
	_, err = tx.Exec(ctx, `SELECT 'x'::int`)
	require.Error(t, err)
	require.ErrorIs(t, tx.Commit(ctx), pgx.ErrTxCommitRollback)
	require.Equal(t, byte('I'), conn.Conn().PgConn().TxStatus())
	require.Equal(t, []int{1, 3}, nums())

	// A transaction whose BEGIN waits sends it with its first statement,
	// or sends nothing if rolled back first.
	tx, unsent := deferBegin(conn.Conn())
	unsent.Queue(`INSERT INTO nums VALUES (6)`)
	require.NoError(t, tx.Rollback(ctx))
	require.Equal(t, byte('I'), conn.Conn().PgConn().TxStatus())
	tx, unsent = deferBegin(conn.Conn())
	unsent.Queue(`INSERT INTO nums VALUES (7)`)
	_, err = tx.Exec(ctx, `INSERT INTO nums VALUES (8)`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit(ctx))
	require.Equal(t, []int{1, 3, 7, 8}, nums())

	// When what waited fails, every statement after fails with its error,
	// and the rollback leaves the connection idle.
	tx, unsent = deferBegin(conn.Conn())
	unsent.Queue(`SELECT 'x'::int`)
	_, err = tx.Exec(ctx, `INSERT INTO nums VALUES (9)`)
	var unchecked *uncheckedError
	require.ErrorAs(t, err, &unchecked)
	require.ErrorAs(t, tx.QueryRow(ctx, `SELECT 1`).Scan(new(int)), &unchecked)
	require.NoError(t, tx.Rollback(ctx))
	require.Equal(t, byte('I'), conn.Conn().PgConn().TxStatus())
	require.Equal(t, []int{1, 3, 7, 8}, nums())
}

// beginCounter counts the transactions pgx began with a round trip of
// their own (pgx's Begin sends "begin" alone).
type beginCounter struct{ n atomic.Int64 }

func (c *beginCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if d.SQL == "begin" {
		c.n.Add(1)
	}
	return ctx
}

func (c *beginCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// tracedRunner runs p alone on a fresh database through a pool whose
// connections report to tracer, and returns the pool and a function that
// appends an event to stream c-1 and waits until p has applied it.
func tracedRunner(t *testing.T, ctx context.Context, tracer pgx.QueryTracer, p Projection) (*pgxpool.Pool, func()) {
	t.Helper()
	cfg := testdb.New(t).Pool.Config()
	cfg.ConnConfig.Tracer = tracer
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	store, err := pgstore.New(pool, pgstore.Config{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	d, err := NewDaemon(pool, store, []Projection{p}, Config{StatusInterval: time.Hour})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { d.Stop(context.WithoutCancel(ctx)) }) //nolint:errcheck // the test is over
	r := d.Runner(p.Name())
	return pool, func() {
		res, err := store.Append(ctx, "c-1", eventstore.Any, eventstore.EventData{EventID: uuid.NewString(), Type: "T", Data: []byte(`{}`)})
		require.NoError(t, err)
		require.NoError(t, r.WaitFor(ctx, res.Position))
	}
}

// A live batch costs no round trip for its BEGIN.
func TestBatchBeginsWithItsReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	begins := &beginCounter{}
	pool, appendOne := tracedRunner(t, ctx, begins, counter{})

	before := begins.n.Load()
	const batches = 20
	for range batches {
		appendOne()
	}
	require.Less(t, begins.n.Load()-before, int64(batches/2), "most batches began with their reads")
	var n, rows int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT max(n), count(*) FROM readmodel.counter`).Scan(&n, &rows))
	require.Equal(t, int64(batches), n, "each batch read the rows of the last through its Tx")
	require.Equal(t, int64(batches), rows)
}

// counter counts its events; it reads through the batch's Tx, as a
// handler that needs the read model's state does.
type counter struct{}

func (counter) Name() string              { return "counter" }
func (counter) Version() int              { return 1 }
func (counter) Tables() []string          { return []string{"counter"} }
func (counter) Filter() eventstore.Filter { return eventstore.Filter{StreamPrefixes: []string{"c-"}} }
func (counter) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "counter"}.Sanitize()+` (n bigint NOT NULL)`)
	return err
}

func (counter) Apply(ctx context.Context, b *Batch) error {
	var n int64
	if err := b.Tx.QueryRow(ctx, `SELECT count(*) FROM `+b.Table("counter")).Scan(&n); err != nil {
		return err
	}
	for range b.Events {
		n++
		b.Queue(`INSERT INTO `+b.Table("counter")+` VALUES ($1)`, n)
	}
	return nil
}

// roundTrips counts the batches pgx sent, and those that carried a whole
// transaction, BEGIN to COMMIT.
type roundTrips struct{ batches, whole atomic.Int64 }

func (c *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}
func (c *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	q := d.Batch.QueuedQueries
	if len(q) > 0 && q[0].SQL == "BEGIN" {
		c.batches.Add(1)
		if q[len(q)-1].SQL == "COMMIT" {
			c.whole.Add(1)
		}
	}
	return ctx
}
func (c *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (c *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

// A live batch of a projection that only writes goes to the server in one
// round trip: its checks, writes and COMMIT behind its BEGIN.
func TestLiveBatchInOneRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	trips := &roundTrips{}
	pool, appendOne := tracedRunner(t, ctx, trips, tally{})

	const appends = 20
	for range appends {
		appendOne()
	}
	require.Greater(t, trips.whole.Load(), int64(appends/2), "most batches went in one round trip (%d of %d)", trips.whole.Load(), trips.batches.Load())

	var n int64
	require.NoError(t, pool.QueryRow(ctx, `SELECT n FROM readmodel.tally`).Scan(&n))
	require.Equal(t, int64(appends), n)
}

// tally counts its events in one row without reading it.
type tally struct{}

func (tally) Name() string              { return "tally" }
func (tally) Version() int              { return 1 }
func (tally) Tables() []string          { return []string{"tally"} }
func (tally) Filter() eventstore.Filter { return eventstore.Filter{StreamPrefixes: []string{"c-"}} }
func (tally) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "tally"}.Sanitize()+` (one bool PRIMARY KEY, n bigint NOT NULL)`)
	return err
}

func (tally) Apply(_ context.Context, b *Batch) error {
	b.Queue(`INSERT INTO `+b.Table("tally")+` VALUES (true, $1) ON CONFLICT (one) DO UPDATE SET n = `+b.Table("tally")+`.n + $1`, len(b.Events))
	return nil
}
