package projections

import (
	"context"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// batchTx is the transaction of a live batch. Its BEGIN goes to the server
// in the same round trip as the batch's first reads (queue it with
// queueBegin), where pgx's own Tx would wait for BEGIN's answer first: on
// a busy server every round trip on the path from an append to the read
// model counts. Otherwise it behaves as pgx's Tx: Begin makes a savepoint,
// and statements on a closed transaction fail with pgx.ErrTxClosed.
//
// Large objects are not available through it: LargeObjects returns the
// zero pgx.LargeObjects, which pgx gives no way to build for a transaction
// of one's own.
type batchTx struct {
	conn       *pgx.Conn
	savepoints int64
	closed     bool
}

var _ pgx.Tx = (*batchTx)(nil)

// queueBegin queues the BEGIN of a batchTx on conn as b's first statement;
// the transaction is open once b's results have been read without error.
func queueBegin(conn *pgx.Conn, b *pgx.Batch) *batchTx {
	b.Queue(`BEGIN`)
	return &batchTx{conn: conn}
}

// Begin makes a savepoint, which the returned Tx releases or rolls back to.
func (tx *batchTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if tx.closed {
		return nil, pgx.ErrTxClosed
	}
	tx.savepoints++
	sp := &savepointTx{tx: tx, name: "sp_" + strconv.FormatInt(tx.savepoints, 10)}
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

func (tx *batchTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if tx.closed {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return tx.conn.Exec(ctx, sql, args...)
}

func (tx *batchTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if tx.closed {
		return errRows{pgx.ErrTxClosed}, pgx.ErrTxClosed // readable, as pgx's are
	}
	return tx.conn.Query(ctx, sql, args...)
}

func (tx *batchTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if tx.closed {
		return errRow{pgx.ErrTxClosed}
	}
	return tx.conn.QueryRow(ctx, sql, args...)
}

func (tx *batchTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if tx.closed {
		return errBatchResults{pgx.ErrTxClosed}
	}
	return tx.conn.SendBatch(ctx, b)
}

func (tx *batchTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if tx.closed {
		return 0, pgx.ErrTxClosed
	}
	return tx.conn.CopyFrom(ctx, table, columns, src)
}

func (tx *batchTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if tx.closed {
		return nil, pgx.ErrTxClosed
	}
	return tx.conn.Prepare(ctx, name, sql)
}

func (tx *batchTx) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

func (tx *batchTx) Conn() *pgx.Conn { return tx.conn }

// savepointTx is a savepoint of a batchTx, as pgx's nested transactions are.
type savepointTx struct {
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
	_, err := sp.tx.Exec(ctx, "RELEASE SAVEPOINT "+sp.name)
	sp.closed = true
	return err
}

// Rollback rolls back to the savepoint.
func (sp *savepointTx) Rollback(ctx context.Context) error {
	if sp.closed {
		return pgx.ErrTxClosed
	}
	_, err := sp.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT "+sp.name)
	sp.closed = true
	return err
}

func (sp *savepointTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if sp.closed {
		return pgconn.CommandTag{}, pgx.ErrTxClosed
	}
	return sp.tx.Exec(ctx, sql, args...)
}

func (sp *savepointTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if sp.closed {
		return errRows{pgx.ErrTxClosed}, pgx.ErrTxClosed
	}
	return sp.tx.Query(ctx, sql, args...)
}

func (sp *savepointTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if sp.closed {
		return errRow{pgx.ErrTxClosed}
	}
	return sp.tx.QueryRow(ctx, sql, args...)
}

func (sp *savepointTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if sp.closed {
		return errBatchResults{pgx.ErrTxClosed}
	}
	return sp.tx.SendBatch(ctx, b)
}

func (sp *savepointTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if sp.closed {
		return 0, pgx.ErrTxClosed
	}
	return sp.tx.CopyFrom(ctx, table, columns, src)
}

func (sp *savepointTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if sp.closed {
		return nil, pgx.ErrTxClosed
	}
	return sp.tx.Prepare(ctx, name, sql)
}

func (sp *savepointTx) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

func (sp *savepointTx) Conn() *pgx.Conn { return sp.tx.conn }

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
