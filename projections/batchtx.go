package projections

import (
	"context"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// batchTx is the transaction of a batch, live or a rebuild's. Its BEGIN
// goes to the server in the same round trip as the batch's first reads
// (queue it with queueBegin), where pgx's own Tx would wait for BEGIN's
// answer first: on a busy server every round trip on the path from an
// append to the read model counts. Otherwise it behaves as pgx's Tx: Begin makes a savepoint,
// and statements on a closed transaction fail with pgx.ErrTxClosed.
//
// Large objects are not available through it: LargeObjects returns the
// zero pgx.LargeObjects, which pgx gives no way to build for a transaction
// of one's own.
type batchTx struct {
	txConn
	savepoints int64
	closed     bool
}

var (
	_ pgx.Tx = (*batchTx)(nil)
	_ pgx.Tx = (*savepointTx)(nil)
)

// queueBegin queues the BEGIN of a batchTx on conn as b's first statement;
// the transaction is open once b's results have been read without error.
func queueBegin(conn *pgx.Conn, b *pgx.Batch) *batchTx {
	b.Queue(`BEGIN`)
	tx := &batchTx{}
	tx.txConn = txConn{conn: conn, open: func() bool { return !tx.closed }}
	return tx
}

// Begin makes a savepoint, which the returned Tx releases or rolls back to.
func (tx *batchTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if tx.closed {
		return nil, pgx.ErrTxClosed
	}
	tx.savepoints++
	sp := &savepointTx{tx: tx, name: "sp_" + strconv.FormatInt(tx.savepoints, 10)}
	sp.txConn = txConn{conn: tx.conn, open: func() bool { return !sp.closed && !tx.closed }}
	if _, err := tx.conn.Exec(ctx, "SAVEPOINT "+sp.name); err != nil {
		return nil, err
	}
	return sp, nil
}

// Commit commits the transaction; pgx.ErrTxCommitRollback if the server
// rolled it back instead.
func (tx *batchTx) Commit(ctx context.Context) error {
	if tx.closed {
		return pgx.ErrTxClosed
	}
	tag, err := tx.conn.Exec(ctx, "COMMIT")
	tx.closed = true
	if err != nil {
		return err // a pooled connection released while not idle is closed
	}
	if tag.String() == "ROLLBACK" {
		return pgx.ErrTxCommitRollback
	}
	return nil
}

// Rollback rolls the transaction back; safe to call after Commit.
func (tx *batchTx) Rollback(ctx context.Context) error {
	if tx.closed {
		return pgx.ErrTxClosed
	}
	_, err := tx.conn.Exec(ctx, "ROLLBACK")
	tx.closed = true
	return err
}

// savepointTx is a savepoint of a batchTx, as pgx's nested transactions are.
type savepointTx struct {
	txConn
	tx     *batchTx
	name   string
	closed bool
}

func (sp *savepointTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if sp.closed {
		return nil, pgx.ErrTxClosed
	}
	return sp.tx.Begin(ctx)
}

// Commit releases the savepoint.
func (sp *savepointTx) Commit(ctx context.Context) error {
	if sp.closed {
		return pgx.ErrTxClosed
	}
	_, err := sp.Exec(ctx, "RELEASE SAVEPOINT "+sp.name)
	sp.closed = true
	return err
}

// Rollback rolls back to the savepoint.
func (sp *savepointTx) Rollback(ctx context.Context) error {
	if sp.closed {
		return pgx.ErrTxClosed
	}
	_, err := sp.Exec(ctx, "ROLLBACK TO SAVEPOINT "+sp.name)
	sp.closed = true
	return err
}

// txConn runs the statements of a transaction (or savepoint) on its
// connection while open says it is open, and fails them with
// pgx.ErrTxClosed after.
type txConn struct {
	conn *pgx.Conn
	open func() bool
}

func (t txConn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if !t.open() {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return t.conn.Exec(ctx, sql, args...)
}

func (t txConn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if !t.open() {
		return errRows{pgx.ErrTxClosed}, pgx.ErrTxClosed // readable, as pgx's are
	}
	return t.conn.Query(ctx, sql, args...)
}

func (t txConn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if !t.open() {
		return errRow{pgx.ErrTxClosed}
	}
	return t.conn.QueryRow(ctx, sql, args...)
}

func (t txConn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if !t.open() {
		return errBatchResults{pgx.ErrTxClosed}
	}
	return t.conn.SendBatch(ctx, b)
}

func (t txConn) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if !t.open() {
		return 0, pgx.ErrTxClosed
	}
	return t.conn.CopyFrom(ctx, table, columns, src)
}

func (t txConn) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if !t.open() {
		return nil, pgx.ErrTxClosed
	}
	return t.conn.Prepare(ctx, name, sql)
}

func (t txConn) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

func (t txConn) Conn() *pgx.Conn { return t.conn }

// errRow is a pgx.Row that fails with err.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// errBatchResults is a pgx.BatchResults that fails with err.
type errBatchResults struct{ err error }

func (r errBatchResults) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, r.err }
func (r errBatchResults) Query() (pgx.Rows, error)         { return errRows(r), r.err }
func (r errBatchResults) QueryRow() pgx.Row                { return errRow(r) }
func (r errBatchResults) Close() error                     { return r.err }

// errRows is pgx.Rows that hold no rows and fail with err.
type errRows struct{ err error }

func (r errRows) Close()                                       {}
func (r errRows) Err() error                                   { return r.err }
func (r errRows) CommandTag() pgconn.CommandTag                { return pgconn.CommandTag{} }
func (r errRows) FieldDescriptions() []pgconn.FieldDescription { return nil }
func (r errRows) Next() bool                                   { return false }
func (r errRows) Scan(...any) error                            { return r.err }
func (r errRows) Values() ([]any, error)                       { return nil, r.err }
func (r errRows) RawValues() [][]byte                          { return nil }
func (r errRows) Conn() *pgx.Conn                              { return nil }
