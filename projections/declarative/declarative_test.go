package declarative_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/projections/declarative"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestExampleMatchesTheEvents runs the shipped YAML example on the
// projector and compares it with a fold of sightline.events.
func TestExampleMatchesTheEvents(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ps, err := declarative.LoadDir("../../examples/projections")
	require.NoError(t, err)
	require.Len(t, ps, 1)

	db := testdb.New(t)
	store, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	defer store.Close()
	_, err = simulate.Run(ctx, store, simulate.Config{Orders: 200, Customers: 20, Writers: 4, Seed: 9})
	require.NoError(t, err)
	d, err := projections.NewDaemon(db.Pool, store, ps, projections.Config{BatchSize: 64})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(ctx) //nolint:errcheck
	_, err = simulate.Run(ctx, store, simulate.Config{Orders: 200, Customers: 20, Writers: 4, Seed: 10})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, "order_activity")

	var diff, rows int
	require.NoError(t, db.Pool.QueryRow(ctx, `
		WITH fold AS (
			SELECT substr(stream_id, 7) AS order_id,
				(array_agg(type ORDER BY revision DESC))[1] AS last_event,
				count(*) AS events,
				(array_agg(data->>'carrier') FILTER (WHERE type = 'OrderShipped'))[1] AS carrier,
				(array_agg(created_at ORDER BY revision DESC))[1] AS last_at
			FROM sightline.events WHERE stream_id LIKE 'order-%' GROUP BY 1),
		rm AS (SELECT order_id, last_event, events, carrier, last_at FROM readmodel.order_activity)
		SELECT (SELECT count(*) FROM ((SELECT * FROM fold EXCEPT SELECT * FROM rm) UNION ALL (SELECT * FROM rm EXCEPT SELECT * FROM fold)) x),
		       (SELECT count(*) FROM rm)`).Scan(&diff, &rows))
	require.Zero(t, diff)
	require.Equal(t, 400, rows)
	require.NoError(t, d.Stop(ctx))
}

func TestBadSpecsAreRefusedClearly(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":   "name: x\nversion: 1\nstreams: [a-]\ntables: {t: 'CREATE TABLE t (a int)'}\nhandlers: {A: 'SELECT 1'}\ntypo: 1\n",
		"unknown param": "name: x\nversion: 1\nstreams: [a-]\ntables: {t: 'CREATE TABLE t (a int)'}\nhandlers: {A: 'INSERT INTO t VALUES (:nope)'}\n",
		"no streams":    "name: x\nversion: 1\ntables: {t: 'CREATE TABLE t (a int)'}\nhandlers: {A: 'SELECT 1'}\n",
		"no handlers":   "name: x\nversion: 1\nstreams: [a-]\ntables: {t: 'CREATE TABLE t (a int)'}\n",
		"unterminated":  "name: x\nversion: 1\nstreams: [a-]\ntables: {t: 'CREATE TABLE t (a int)'}\nhandlers: {A: \"SELECT 'oops\"}\n",
		"segments":      "name: x\nversion: 1\nsegments: 65\nstreams: [a-]\ntables: {t: 'CREATE TABLE t (a int)'}\nhandlers: {A: 'SELECT 1'}\n",
	} {
		path := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
		_, err := declarative.Load(path)
		require.Error(t, err, name)
		require.Contains(t, err.Error(), path, name)
	}
}

// TestSegmentsInYAML: segments: N splits a projection; absent, it has one.
func TestSegmentsInYAML(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for body, want := range map[string]int{
		"name: x\nversion: 1\nsegments: 4\nstreams: [a-]\ntables: {t: 'CREATE TABLE t (a int)'}\nhandlers: {A: 'SELECT 1'}\n": 4,
		"name: x\nversion: 1\nstreams: [a-]\ntables: {t: 'CREATE TABLE t (a int)'}\nhandlers: {A: 'SELECT 1'}\n":              1,
	} {
		path := filepath.Join(dir, "x.yaml")
		require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
		p, err := declarative.Load(path)
		require.NoError(t, err)
		require.Equal(t, want, projections.SegmentsOf(p))
	}
}

// TestParametersKeepCastsAndLiterals checks the :name translation on a
// real server: casts, literals and dollar-quoted text stay as written.
func TestParametersKeepCastsAndLiterals(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := testdb.New(t)
	p, err := declarative.New(declarative.Spec{
		Name: "p", Version: 1, Streams: []string{"s-"}, Tables: map[string]string{"t": "CREATE TABLE t (a text)"},
		Handlers: map[string]string{"E": `SELECT :revision::text || ':revision' || $$:data$$ || (:data->>'k') || :revision`},
	})
	require.NoError(t, err)
	require.Equal(t, []string{"t"}, p.Tables())
	var out string
	// The compiled statement, run the way the projector queues it.
	require.NoError(t, db.Pool.QueryRow(ctx, declarative.DeclarativeSQL(t, p, "E"), int64(7), `{"k":"v"}`).Scan(&out))
	require.Equal(t, "7:revision:datav7", out)
}

// TestFailingStatementParksItsEvent: a handler statement that PostgreSQL
// rejects for one event's data parks that event and holds its stream; the
// statements of the other events in the batch still apply, and a skip
// releases the stream.
func TestFailingStatementParksItsEvent(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := filepath.Join(t.TempDir(), "amounts.yaml")
	require.NoError(t, os.WriteFile(spec, []byte(`name: amounts
version: 1
streams: [acct-]
tables:
  amounts: |
    CREATE TABLE amounts (stream_id text, revision bigint, amount bigint NOT NULL, PRIMARY KEY (stream_id, revision))
handlers:
  Deposited: |
    INSERT INTO amounts VALUES (:stream_id, :revision, (:data->>'amount')::bigint)
`), 0o600))
	p, err := declarative.Load(spec)
	require.NoError(t, err)

	db := testdb.New(t)
	store, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	defer store.Close()
	deposit := func(amount string) eventstore.EventData {
		return storetest.Event("Deposited", `{"amount":`+amount+`}`)
	}
	_, err = store.Append(ctx, "acct-1", eventstore.NoStream, deposit("10"), deposit(`"ten"`), deposit("30"))
	require.NoError(t, err)
	_, err = store.Append(ctx, "acct-2", eventstore.NoStream, deposit("1"), deposit("2"))
	require.NoError(t, err)
	d, err := projections.NewDaemon(db.Pool, store, []projections.Projection{p}, projections.Config{})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(ctx) //nolint:errcheck
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, "amounts")

	sum := func() map[string]int64 {
		rows, err := db.Pool.Query(ctx, `SELECT stream_id, sum(amount)::bigint FROM readmodel.amounts GROUP BY 1`)
		require.NoError(t, err)
		out := map[string]int64{}
		var id string
		var n int64
		_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error { out[id] = n; return nil })
		require.NoError(t, err)
		return out
	}
	require.Equal(t, map[string]int64{"acct-1": 10, "acct-2": 3}, sum())
	list, err := projections.ListParked(ctx, db.Pool, projections.ListOptions{Projection: "amounts"})
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, uint64(1), list[0].Event.Revision)
	require.Contains(t, list[0].Error, "22P02", "PostgreSQL's own error, which says the data is bad")
	require.Equal(t, 1, list[0].Attempts, "bad data is not tried again")

	_, err = d.Runner("amounts").Skip(ctx, list[0].ID)
	require.NoError(t, err)
	require.Equal(t, map[string]int64{"acct-1": 40, "acct-2": 3}, sum())
	require.NoError(t, d.Stop(ctx))
}

// TestHandlerSQLIsLexedAsPostgreSQLDoes: colons in comments, E” strings
// and dollar quoting are not parameters; the handler compiles and runs.
func TestHandlerSQLIsLexedAsPostgreSQLDoes(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := declarative.New(declarative.Spec{
		Name: "lexed", Version: 1, Streams: []string{"l-"},
		Tables:   map[string]string{"t": "CREATE TABLE t (a text)"},
		Handlers: map[string]string{"E": "-- copies :type, not :nope\nINSERT INTO t VALUES (E'it\\'s :nope' || $x$ :nope $x$ || :type) /* :nope */"},
	})
	require.NoError(t, err)
	db := testdb.New(t)
	var out string
	_, err = db.Pool.Exec(ctx, `CREATE TABLE t (a text)`)
	require.NoError(t, err)
	require.NoError(t, db.Pool.QueryRow(ctx, `WITH x AS (`+declarative.DeclarativeSQL(t, p, "E")+` RETURNING a) SELECT a FROM x`, "E").Scan(&out))
	require.Equal(t, "it's :nope :nope E", out)
}

// TestQueriesInYAML: queries and their params keep the file's order;
// projections.Check prepares them against the tables; a file's bad
// queries are all named, each with the file and the query.
func TestQueriesInYAML(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	head := "name: things\nversion: 1\nstreams: [thing-]\n" +
		"tables: {things: 'CREATE TABLE things (id text PRIMARY KEY, kind text NOT NULL, n int NOT NULL)'}\n" +
		"handlers: {ThingMade: \"INSERT INTO things VALUES (substr(:stream_id, 7), :data->>'kind', 1)\"}\n"
	good := filepath.Join(dir, "things.yaml")
	require.NoError(t, os.WriteFile(good, []byte(head+`queries:
  zeta:
    params:
      kind: {type: text, enum: [a, b], default: a}
      above: {type: integer, required: true}
    page_by: [n desc, id]
    sql: SELECT id, kind, n FROM things WHERE kind = :kind AND n > :above
  alpha:
    params: {id: {type: text, required: true}}
    stream: "'thing-' || :id"
    one: true
    sql: SELECT id, n FROM things WHERE id = :id
`), 0o600))
	p, err := declarative.Load(good)
	require.NoError(t, err)
	qs := p.Queries()
	require.Len(t, qs, 2)
	require.Equal(t, []string{"zeta", "alpha"}, []string{qs[0].Name, qs[1].Name})
	require.Equal(t, []string{"kind", "above"}, []string{qs[0].Params[0].Name, qs[0].Params[1].Name})
	require.Equal(t, []string{"a", "b"}, qs[0].Params[0].Enum)
	require.Equal(t, "'thing-' || :id", qs[1].Stream)
	require.Equal(t, good, p.Source())

	db := testdb.New(t)
	prepared, err := projections.Check(ctx, db.Pool, []projections.Projection{p})
	require.NoError(t, err)
	require.Len(t, prepared, 2)
	require.Equal(t, "things", prepared[0].Projection)
	require.Equal(t, []string{"id", "kind", "n"}, []string{prepared[0].Columns[0].Name, prepared[0].Columns[1].Name, prepared[0].Columns[2].Name})
	var schemas int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sl_%'`).Scan(&schemas))
	require.Zero(t, schemas, "a check leaves nothing behind")

	bad := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte(head+`queries:
  wipe: {sql: DELETE FROM things, page_by: [id]}
  two: {sql: "SELECT id FROM things; DROP TABLE things", page_by: [id]}
  typo: {params: {n: {type: integer}}, sql: SELECT id FROM things WHERE n = :m, page_by: [id]}
`), 0o600))
	_, err = declarative.LoadDir(dir)
	require.Error(t, err)
	for _, want := range []string{"query wipe: sql: a query is one SELECT", "query two: sql: more than one statement", "query typo: sql: names :m"} {
		require.Contains(t, err.Error(), bad+": projection things, "+want)
	}
}

// TestABadHandlerLeavesTheRestChecked: a handler that does not prepare is
// named, and the handlers and queries after it are still checked, each
// with its own reason.
func TestABadHandlerLeavesTheRestChecked(t *testing.T) {
	t.Parallel()
	p, err := declarative.New(declarative.Spec{
		Name: "p", Version: 1, Streams: []string{"s-"}, Tables: map[string]string{"t": "CREATE TABLE t (id text PRIMARY KEY)"},
		Handlers: map[string]string{"A": `INSERT INTO t (nope) VALUES (:stream_id)`, "B": `INSERT INTO t (id) VALUES (:stream_id)`, "C": `UPDATE t SET id = :type WHERE gone`},
		Queries:  map[string]declarative.QuerySpec{"q": {SQL: "SELECT id, missing FROM t", PageBy: []string{"id"}}},
	})
	require.NoError(t, err)
	db := testdb.New(t)
	_, err = projections.Check(context.Background(), db.Pool, []projections.Projection{p})
	require.Error(t, err)
	msg := err.Error()
	require.Contains(t, msg, `handler A: ERROR: column "nope" of relation "t" does not exist`)
	require.Contains(t, msg, `handler C: ERROR: column "gone" does not exist`)
	require.Contains(t, msg, `query q: sql: column "missing" does not exist`)
	require.NotContains(t, msg, "aborted")
	require.NotContains(t, msg, "handler B")
}

// TestHandlersWriteTheirOwnSchema: handler statements name their tables
// unqualified, and tables of those names wait in public. Two declarative
// projections, whose batches commit together on either one's connection,
// write only their own tables, before a rebuild and after it, in the new
// generation's.
func TestHandlersWriteTheirOwnSchema(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := testdb.New(t)
	dir := t.TempDir()
	var ps []projections.Projection
	for _, name := range []string{"ledger_a", "ledger_b"} {
		_, err := db.Pool.Exec(ctx, `CREATE TABLE public.`+name+` (stream_id text, revision bigint, amount bigint)`)
		require.NoError(t, err)
		spec := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.WriteFile(spec, []byte(`name: `+name+`
version: 1
streams: [acct-]
tables:
  `+name+`: |
    CREATE TABLE `+name+` (stream_id text, revision bigint, amount bigint NOT NULL, PRIMARY KEY (stream_id, revision))
handlers:
  Deposited: |
    INSERT INTO `+name+` VALUES (:stream_id, :revision, (:data->>'amount')::bigint)
`), 0o600))
		p, err := declarative.Load(spec)
		require.NoError(t, err)
		ps = append(ps, p)
	}
	store, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	defer store.Close()
	d, err := projections.NewDaemon(db.Pool, store, ps, projections.Config{CommitWait: 50 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	defer d.Stop(ctx) //nolint:errcheck

	deposit := func(n int) eventstore.Position {
		res, err := store.Append(ctx, "acct-1", eventstore.Any, storetest.Event("Deposited", fmt.Sprintf(`{"amount":%d}`, n)))
		require.NoError(t, err)
		return res.Position
	}
	check := func(want int64) {
		t.Helper()
		for _, name := range []string{"ledger_a", "ledger_b"} {
			var sum, trapped int64
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT coalesce(sum(amount), 0)::bigint FROM readmodel.`+name).Scan(&sum))
			require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM public.`+name).Scan(&trapped))
			require.Equal(t, want, sum, name)
			require.Zero(t, trapped, name)
		}
	}
	var last eventstore.Position
	for n := 1; n <= 10; n++ {
		last = deposit(n)
	}
	for _, r := range d.Runners() {
		require.NoError(t, r.WaitFor(ctx, last))
	}
	check(55)

	rb, err := d.Runner("ledger_a").Rebuild(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		var gen int
		return db.Pool.QueryRow(ctx, `SELECT generation FROM sightline.generations WHERE projection = 'ledger_a' AND state = 'active'`).Scan(&gen) == nil &&
			gen == rb.Generation
	}, 20*time.Second, 10*time.Millisecond)
	for n := 11; n <= 20; n++ {
		last = deposit(n)
	}
	for _, r := range d.Runners() {
		require.NoError(t, r.WaitFor(ctx, last))
	}
	check(210)
	var old int64 // the replaced generation's table, kept for its grace, got nothing after the take-over
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT sum(amount)::bigint FROM sl_ledger_a_g1.ledger_a`).Scan(&old))
	require.Equal(t, int64(55), old)
	require.NoError(t, d.Stop(ctx))
}
