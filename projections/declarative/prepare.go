package declarative

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"weak"

	"github.com/jackc/pgx/v5"
)

// A handler's SQL names its tables unqualified, so PostgreSQL can parse it
// only with the projection's schema on the search path. The batch sets the
// search path as its first statement, but pgx prepares the statements it
// has not seen on a connection before it sends any of them, under the
// connection's own search path; so the handler statements are prepared
// ahead, once per connection, by prepareFirst, which pgx calls (as a
// pgx.QueryRewriter given as the statement's first argument) on whatever
// connection sends the batch: the batch's own, or that of another
// projection's batch that it commits with (projections.Config.CommitWait).
//
// Prepared with their SQL as their name, the statements stay prepared for
// the connection's life (pgx's statement cache never evicts them), and
// pgx sends them as they are. A statement prepared under one generation's
// schema and run under another's is parsed again by PostgreSQL, which
// re-plans a prepared statement when the search path differs.

// prepared remembers the handler statements prepared on each connection
// that sent one.
type prepared struct {
	mu    sync.Mutex
	conns map[weak.Pointer[pgx.Conn]]map[string]bool
}

func (p *prepared) has(conn *pgx.Conn, sql string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conns[weak.Make(conn)][sql]
}

func (p *prepared) add(conn *pgx.Conn, sql string) {
	key := weak.Make(conn)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		p.conns = map[weak.Pointer[pgx.Conn]]map[string]bool{}
	}
	stmts := p.conns[key]
	if stmts == nil {
		stmts = map[string]bool{}
		p.conns[key] = stmts
		runtime.AddCleanup(conn, func(key weak.Pointer[pgx.Conn]) {
			p.mu.Lock()
			defer p.mu.Unlock()
			delete(p.conns, key)
		}, key)
	}
	stmts[sql] = true
}

// prepareFirst is a handler statement's first argument: it prepares the
// statement on the sending connection, under the batch's schema, unless
// that was done before.
type prepareFirst struct {
	prepared *prepared
	schema   string
}

var _ pgx.QueryRewriter = prepareFirst{}

func (f prepareFirst) RewriteQuery(ctx context.Context, conn *pgx.Conn, sql string, args []any) (string, []any, error) {
	if f.prepared.has(conn, sql) {
		return sql, args, nil
	}
	if err := prepareIn(ctx, conn, f.schema, sql); err != nil {
		return "", nil, fmt.Errorf("prepare a handler's statement in %s: %w", f.schema, err)
	}
	f.prepared.add(conn, sql)
	return sql, args, nil
}

// prepareIn prepares sql on conn with schema first on the search path, and
// leaves the search path as it found it. pgx calls it before it sends the
// batch: outside a transaction (the batch begins it), the search path is
// the session's, set and restored around the prepare; inside one, it is
// set for the transaction, as the batch sets it anyway.
func prepareIn(ctx context.Context, conn *pgx.Conn, schema, sql string) error {
	if conn.PgConn().TxStatus() != 'I' {
		if _, err := conn.Exec(ctx, `SELECT set_config('search_path', $1, true)`, searchPath(schema)); err != nil {
			return err
		}
		_, err := conn.Prepare(ctx, sql, sql)
		return err
	}
	var old string
	if err := conn.QueryRow(ctx, `SELECT current_setting('search_path'), set_config('search_path', $1, false)`, searchPath(schema)).Scan(&old, nil); err != nil {
		return err
	}
	_, perr := conn.Prepare(ctx, sql, sql)
	if _, err := conn.Exec(ctx, `SELECT set_config('search_path', $1, false)`, old); err != nil {
		return fmt.Errorf("restore the search path: %w", err)
	}
	return perr
}
