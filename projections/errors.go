package projections

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Permanent marks a handler error as certain to recur for the same event,
// such as an event that cannot be decoded: the projector parks the event at
// once instead of trying it again first.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// IsPermanent reports whether err recurs for the same event: it was marked
// with Permanent, or PostgreSQL rejected the data itself (SQLSTATE class 22,
// such as a value that is not a number).
func IsPermanent(err error) bool {
	var p *permanentError
	if errors.As(err, &p) {
		return true
	}
	var pg *pgconn.PgError
	return errors.As(err, &pg) && len(pg.Code) == 5 && pg.Code[:2] == "22"
}

// transientClasses are SQLSTATE classes that say nothing about the event.
// The infrastructure: connection exceptions (08), invalid transaction state
// such as a session ended for idling (25), transaction rollbacks such as
// serialization failures and deadlocks (40), insufficient resources (53),
// objects in use (55), the operator intervening: shutdown, restart,
// terminated backend, statement timeout (57), system and internal errors
// (58, XX), configuration file errors (F0). And the schema: a table or
// column missing or renamed, a privilege revoked (42), a cached plan gone
// stale after an ALTER (0A), an unknown database or schema (3D, 3F). Those
// fail every event alike until someone fixes the schema; parking would
// hold every stream and need a retry for each.
var transientClasses = map[string]bool{
	"08": true, "25": true, "40": true, "53": true, "55": true, "57": true, "58": true, "XX": true, "F0": true,
	"42": true, "0A": true, "3D": true, "3F": true,
}

// IsTransient reports whether err comes from the infrastructure or the
// schema rather than from the event: a lost or refused connection, a
// server shutting down or restarting, a serialization failure or deadlock,
// a timeout, a missing table or privilege. A batch that fails with one is
// retried whole from the checkpoint, parks nothing, and shows the
// projection stalled until it succeeds.
func IsTransient(err error) bool {
	if err == nil {
		return false
	}
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return len(pg.Code) == 5 && transientClasses[pg.Code[:2]]
	}
	var netErr net.Error
	var connectErr *pgconn.ConnectError
	switch {
	case pgconn.SafeToRetry(err), pgconn.Timeout(err),
		errors.As(err, &netErr), errors.As(err, &connectErr),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, pgx.ErrTxClosed), errors.Is(err, context.DeadlineExceeded):
		return true
	}
	return false
}

// handlerError is a batch failure that the projection's Apply caused (or its
// queued statements did) on a healthy connection: it may be a poison event.
type handlerError struct{ err error }

func (e *handlerError) Error() string { return e.err.Error() }
func (e *handlerError) Unwrap() error { return e.err }

// classify wraps err from Apply or its queued statements in a handlerError
// unless it is transient, the connection is gone, or ctx has ended (the
// projector is stopping): only then may the events be at fault.
func classify(ctx context.Context, conn *pgx.Conn, err error) error {
	if err == nil || ctx.Err() != nil || IsTransient(err) || conn.IsClosed() {
		return err
	}
	return &handlerError{err}
}
