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
// append to the read model counts. A batch that needs no reads first holds
// its BEGIN back (deferBegin) until the COMMIT's round trip, or until
// something asks the transaction for an answer. Otherwise it behaves as
// pgx's Tx: Begin makes a savepoint, and statements on a closed
// transaction fail with pgx.ErrTxClosed.
//
// Large objects are not available through it: LargeObjects returns the
// zero pgx.LargeObjects, which pgx gives no way to build for a transaction
// of one's own.
type batchTx struct {
	txConn
	savepoints int64
	closed     bool
	// unsent holds the BEGIN and whatever followed it until the first
	// statement that needs an answer, or the COMMIT, takes it along.
	unsent *pgx.Batch
	// unsentErr is the error of the round trip that sent unsent: the
	// transaction is aborted, and every statement after fails with it.
	unsentErr error
	// before, when set, runs once before anything of the transaction is
	// sent: a builder's batch waits there for the batch before it to
	// commit (see inFlightBatch). Its error stays in beforeErr, and every
	// statement fails with it.
	before    func() error
	beforeErr error
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
	tx.txConn = txConn{conn: conn, ready: tx.ready}
	return tx
}

// deferBegin returns a batchTx on conn whose BEGIN waits in unsent, where
// the caller may queue more statements to go with it: the first statement
// that needs an answer sends them first (and fails if one of them does),
// and commitWith sends them with the COMMIT.
func deferBegin(conn *pgx.Conn) (*batchTx, *pgx.Batch) {
	unsent := &pgx.Batch{}
	tx := queueBegin(conn, unsent)
	tx.unsent = unsent
	return tx, unsent
}

// ready sends what waits in unsent, and says whether statements may run.
func (tx *batchTx) ready(ctx context.Context) error {
	if err := tx.awaitBefore(); err != nil {
		return err
	}
	switch {
	case tx.closed:
		return pgx.ErrTxClosed
	case tx.unsentErr != nil:
		return tx.unsentErr
	case tx.unsent == nil:
		return nil
	}
	b := tx.takeUnsent()
	if err := tx.conn.SendBatch(ctx, b).Close(); err != nil {
		tx.unsentErr = &uncheckedError{err}
	}
	return tx.unsentErr
}

// awaitBefore runs before, once.
func (tx *batchTx) awaitBefore() error {
	if tx.before != nil {
		tx.beforeErr, tx.before = tx.before(), nil
	}
	return tx.beforeErr
}

// uncheckedError is the error of a round trip that carried a batchTx's
// unsent statements: its BEGIN, and the checks of a batch that assumed
// what it did not read (oneTrip).
type uncheckedError struct{ err error }

func (e *uncheckedError) Error() string { return e.err.Error() }
func (e *uncheckedError) Unwrap() error { return e.err }

// takeUnsent returns what waits to be sent, for the caller to send.
func (tx *batchTx) takeUnsent() *pgx.Batch {
	b := tx.unsent
	tx.unsent = nil
	return b
}

// Begin makes a savepoint, which the returned Tx releases or rolls back to.
func (tx *batchTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := tx.ready(ctx); err != nil {
		return nil, err
	}
	tx.savepoints++
	sp := &savepointTx{tx: tx, name: "sp_" + strconv.FormatInt(tx.savepoints, 10)}
	sp.txConn = txConn{conn: tx.conn, ready: func(ctx context.Context) error {
		if sp.closed {
			return pgx.ErrTxClosed
		}
		return tx.ready(ctx)
	}}
	if _, err := tx.conn.Exec(ctx, "SAVEPOINT "+sp.name); err != nil {
		return nil, err
	}
	return sp, nil
}

// Commit commits the transaction; pgx.ErrTxCommitRollback if the server
// rolled it back instead.
func (tx *batchTx) Commit(ctx context.Context) error {
	if err := tx.ready(ctx); err != nil {
		return err
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

// Rollback rolls the transaction back; safe to call after Commit. A
// transaction whose BEGIN was never sent has nothing to roll back.
func (tx *batchTx) Rollback(ctx context.Context) error {
	if tx.closed {
		return pgx.ErrTxClosed
	}
	tx.closed = true
	if tx.unsent != nil {
		tx.unsent = nil
		return nil
	}
	_, err := tx.conn.Exec(ctx, "ROLLBACK")
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
// connection once ready says they may run, and fails them with ready's
// error otherwise (pgx.ErrTxClosed after the end).
type txConn struct {
	conn  *pgx.Conn
	ready func(context.Context) error
}

func (t txConn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.ready(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return t.conn.Exec(ctx, sql, args...)
}

func (t txConn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.ready(ctx); err != nil {
		return errRows{err}, err // readable, as pgx's are
	}
	return t.conn.Query(ctx, sql, args...)
}

func (t txConn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.ready(ctx); err != nil {
		return errRow{err}
	}
	return t.conn.QueryRow(ctx, sql, args...)
}

func (t txConn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.ready(ctx); err != nil {
		return errBatchResults{err}
	}
	return t.conn.SendBatch(ctx, b)
}

func (t txConn) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.ready(ctx); err != nil {
		return 0, err
	}
	return t.conn.CopyFrom(ctx, table, columns, src)
}

func (t txConn) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.ready(ctx); err != nil {
		return nil, err
	}
	return t.conn.Prepare(ctx, name, sql)
}

func (t txConn) LargeObjects() pgx.LargeObjects { return pgx.LargeObjects{} }

// Conn is the transaction's connection. A statement run on it directly
// runs outside the transaction until the transaction has sent its BEGIN,
// which a batch that assumes what it did not read holds back: run
// statements through the transaction.
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
