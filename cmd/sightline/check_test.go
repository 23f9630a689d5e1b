package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCheckCommand: check passes the shipped example and names every
// problem of a bad file, with its file, query and PostgreSQL's reason;
// run refuses to start on the same file and creates nothing for it.
func TestCheckCommand(t *testing.T) {
	t.Parallel()
	ctx, db, _ := newDatabase(t, 2*time.Minute)
	dbURL := []string{"--database-url", db.URL}

	out, errOut, code := runCLI(t, append([]string{"check", "../../examples/projections"}, dbURL...)...)
	require.Zero(t, code, "%s%s", out, errOut)
	require.Contains(t, out, "ok: 1 projection (order_activity), 2 queries", "DIR alone, as run --projections DIR runs it")
	require.Contains(t, out, "GET /v1/projections/order_activity/queries/by_order")
	out, errOut, code = runCLI(t, append([]string{"check", "../../examples/projections", "--examples"}, dbURL...)...)
	require.Zero(t, code, "%s%s", out, errOut)
	require.Contains(t, out, "ok: 4 projections (orders, customer_stats, daily_sales, order_activity), 6 queries", "DIR with the examples, as run --examples runs it")
	out, errOut, code = runCLI(t, append([]string{"check", "--examples"}, dbURL...)...)
	require.Zero(t, code, "%s%s", out, errOut)
	require.Contains(t, out, "(also /v1/orders/:id)", "without DIR: what run would run")
	out, errOut, code = runCLI(t, append([]string{"check"}, dbURL...)...)
	require.Equal(t, exitUsage, code, "%s%s", out, errOut)
	require.Contains(t, errOut, "no projections to check")

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte(`name: bad_one
version: 1
streams: [order-]
tables:
  bad_one: CREATE TABLE bad_one (id text PRIMARY KEY, n int NOT NULL)
handlers:
  OrderPlaced: INSERT INTO bad_one VALUES (:stream_id, 1) ON CONFLICT DO NOTHING
queries:
  by_id:
    params: {id: {type: text, required: true}}
    one: true
    sql: SELECT id, nope FROM bad_one WHERE id = :id
  locked:
    sql: SELECT id FROM bad_one FOR UPDATE
    page_by: [id]
  fine:
    sql: SELECT id, n FROM bad_one
    page_by: [id]
`), 0o600))
	out, errOut, code = runCLI(t, append([]string{"check", dir}, dbURL...)...)
	require.Equal(t, 1, code, "%s%s", out, errOut)
	require.Contains(t, out, bad+`: query by_id: sql: column "nope" does not exist (SQLSTATE 42703)`)
	require.Contains(t, out, bad+": query locked: sql: cannot execute SELECT FOR UPDATE in a read-only transaction")
	require.NotContains(t, out, "query fine")
	require.Contains(t, errOut, "2 problem(s) in 1 projection")

	out, errOut, code = runCLI(t, append([]string{"run", "--http-addr", "127.0.0.1:0", "--projections", dir}, dbURL...)...)
	require.Equal(t, 1, code, "%s%s", out, errOut)
	require.Contains(t, out+errOut, `query by_id: sql: column "nope" does not exist`)
	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sl_bad_one%'`).Scan(&n))
	require.Zero(t, n, "nothing created for a projection that does not check")

	// A route that an example's query has already.
	clash := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(clash, "clash.yaml"), []byte(`name: clash
version: 1
streams: [order-]
tables: {clash: 'CREATE TABLE clash (id text PRIMARY KEY)'}
handlers: {OrderPlaced: 'INSERT INTO clash VALUES (:stream_id) ON CONFLICT DO NOTHING'}
queries:
  by_id: {params: {id: {type: text, required: true}}, one: true, route: "/v1/orders/:id", sql: "SELECT id FROM clash WHERE id = :id"}
`), 0o600))
	out, errOut, code = runCLI(t, append([]string{"check", clash, "--examples"}, dbURL...)...)
	require.Equal(t, 1, code, "%s%s", out, errOut)
	require.Contains(t, out+errOut, "clash.yaml, query by_id: route /v1/orders/:id is also projection orders (Go, readmodel.Orders), query by_id's")
	require.NoError(t, os.WriteFile(filepath.Join(clash, "clash.yaml"), []byte(`name: clash
version: 1
streams: [order-]
tables: {clash: 'CREATE TABLE clash (id text PRIMARY KEY)'}
handlers: {OrderPlaced: 'INSERT INTO clash VALUES (:stream_id) ON CONFLICT DO NOTHING'}
queries:
  health: {one: true, route: /healthz, sql: "SELECT 1 AS ok"}
`), 0o600))
	out, errOut, code = runCLI(t, append([]string{"check", clash}, dbURL...)...)
	require.Equal(t, 1, code, "%s%s", out, errOut)
	require.Contains(t, out+errOut, `query health: route "/healthz": that path is the server's own`)

	out, errOut, code = runCLI(t, "check", filepath.Join(dir, "missing"), "--database-url", db.URL)
	require.Equal(t, 1, code, "%s%s", out, errOut)
	require.Contains(t, errOut, "no *.yaml projections in")
}
