package query_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/query"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// setup makes a schema of tables on a fresh database and returns a pool
// whose search path leads to it, as a projection's queries see theirs.
func setup(t *testing.T, ddl string) (context.Context, *pgxpool.Pool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	db := testdb.New(t)
	_, err := db.Pool.Exec(ctx, `CREATE SCHEMA rm; SET search_path = rm; `+ddl)
	require.NoError(t, err)
	cfg := db.Pool.Config()
	cfg.ConnConfig.RuntimeParams["search_path"] = "rm"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return ctx, pool
}

// check compiles and checks q in a transaction it rolls back.
func check(ctx context.Context, t *testing.T, pool *pgxpool.Pool, q query.Query) (*query.Prepared, error) {
	t.Helper()
	c, err := query.Compile("p", q)
	if err != nil {
		return nil, err
	}
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	return c.Check(ctx, tx)
}

func mustCheck(ctx context.Context, t *testing.T, pool *pgxpool.Pool, q query.Query) *query.Prepared {
	t.Helper()
	p, err := check(ctx, t, pool, q)
	require.NoError(t, err)
	return p
}

// run reads one page.
func run(ctx context.Context, t *testing.T, pool *pgxpool.Pool, p *query.Prepared, values url.Values, page query.Page, f query.Format) (*query.Result, error) {
	t.Helper()
	args, err := p.Bind(values)
	require.NoError(t, err)
	b := &pgx.Batch{}
	res := p.Queue(b, args, page, f)
	err = pool.SendBatch(ctx, b).Close()
	return res, err
}

func TestCompileRefusesBadDeclarations(t *testing.T) {
	t.Parallel()
	id := []query.Param{{Name: "id", Type: query.Text, Required: true}}
	for want, q := range map[string]query.Query{
		"query name":                          {Name: "Bad-Name", SQL: "SELECT 1 AS x", One: true},
		"not a declared param":                {Name: "q", SQL: "SELECT :nope AS x", One: true},
		"one SELECT":                          {Name: "q", SQL: "DELETE FROM t", One: true},
		"more than one statement":             {Name: "q", SQL: "SELECT 1 AS x; DROP TABLE t", One: true},
		"positional parameter $1":             {Name: "q", SQL: "SELECT $1 AS x", One: true},
		"declared but neither":                {Name: "q", Params: id, SQL: "SELECT 1 AS x", One: true},
		"route's own":                         {Name: "q", Params: []query.Param{{Name: "limit", Type: query.Integer}}, SQL: "SELECT :limit AS x", One: true},
		`type "float"`:                        {Name: "q", Params: []query.Param{{Name: "n", Type: "float"}}, SQL: "SELECT :n AS x", One: true},
		"default \"soon\"":                    {Name: "q", Params: []query.Param{{Name: "d", Type: query.Date, Default: "soon"}}, SQL: "SELECT :d AS x", One: true},
		"required param has no default":       {Name: "q", Params: []query.Param{{Name: "n", Type: query.Integer, Required: true, Default: "1"}}, SQL: "SELECT :n AS x", One: true},
		"needs a unique ordering":             {Name: "q", SQL: "SELECT 1 AS x"},
		"has no pages":                        {Name: "q", SQL: "SELECT 1 AS x", One: true, PageBy: []string{"x"}},
		"want asc or desc":                    {Name: "q", SQL: "SELECT 1 AS x", PageBy: []string{"x sideways"}},
		"stream: one SQL expression":          {Name: "q", Params: id, SQL: "SELECT :id AS x", One: true, Stream: "'a'; DROP TABLE t"},
		"optional param":                      {Name: "q", Params: []query.Param{{Name: "id", Type: query.Text}}, SQL: "SELECT :id AS x", One: true, Route: "/v1/x/:id"},
		"server's own":                        {Name: "q", Params: id, SQL: "SELECT :id AS x", One: true, Route: "/v1/projections/x/:id"},
		"unterminated string literal":         {Name: "q", SQL: "SELECT 'x AS x", One: true},
		"calls lo_create(), which a declared": {Name: "q", SQL: "SELECT pg_catalog.lo_create (0) AS x", One: true},
		"calls pg_advisory_lock()":            {Name: "q", SQL: `SELECT "pg_advisory_lock"(1) AS x`, One: true},
		"calls set_config()":                  {Name: "q", SQL: `SELECT U&"set_config"('a.b', 'c', false) AS x`, One: true},
		"without Unicode escapes":             {Name: "q", SQL: `SELECT U&"\0073et_config"('a.b', 'c', false) AS x`, One: true},
		"calls query_to_xml()":                {Name: "q", Params: []query.Param{{Name: "q", Type: query.Text}}, SQL: `SELECT query_to_xml(:q, true, false, '') AS x`, One: true},
		"calls nextval()":                     {Name: "q", SQL: "SELECT NEXTVAL('s') AS x", One: true},
		"calls pg_terminate_backend()":        {Name: "q", SQL: "SELECT pg_terminate_backend(pid) AS x FROM pg_stat_activity", One: true},
		"stream: calls set_config()":          {Name: "q", Params: id, SQL: "SELECT :id AS x", One: true, Stream: "set_config('a.b', :id, true)"},
	} {
		_, err := query.Compile("p", q)
		require.ErrorContains(t, err, want, "%+v", q)
	}
}

// TestCheckRefusesWhatIsNotOneRead: writes in every disguise, locks,
// names the tables do not have, and results without names are refused
// with PostgreSQL's reason, and the table is untouched.
func TestCheckRefusesWhatIsNotOneRead(t *testing.T) {
	t.Parallel()
	ctx, pool := setup(t, `CREATE TABLE t (id int PRIMARY KEY, doc json); INSERT INTO t VALUES (1, '{}');
		CREATE SEQUENCE s;
		CREATE FUNCTION bump() RETURNS int LANGUAGE sql AS 'INSERT INTO t VALUES (99, null) RETURNING id';`)
	for want, sql := range map[string]string{
		"data-modifying statement":          "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
		"SELECT FOR UPDATE":                 "SELECT * FROM t FOR UPDATE",
		"SELECT FOR SHARE":                  "SELECT id FROM t FOR SHARE",
		`relation "missing" does not exist`: "SELECT * FROM missing",
		`column "nope" does not exist`:      "SELECT nope FROM t",
		"has no name":                       "SELECT id, 1 FROM t",
		"two result columns are named id":   "SELECT id, id FROM t",
		"42601":                             "SELECT FROM WHERE",
	} {
		_, err := check(ctx, t, pool, query.Query{Name: "q", SQL: sql, One: true})
		require.ErrorContains(t, err, want, sql)
	}
	_, err := check(ctx, t, pool, query.Query{Name: "q", SQL: "SELECT id, doc FROM t", PageBy: []string{"doc"}})
	require.ErrorContains(t, err, "type json")
	_, err = check(ctx, t, pool, query.Query{Name: "q", SQL: "SELECT id FROM t", PageBy: []string{"nope"}})
	require.ErrorContains(t, err, "page_by: nope is not a column of the result (id)")

	// A function with side effects gets past the check, which reads no
	// row, and is refused when it runs: each query runs read-only.
	p := mustCheck(ctx, t, pool, query.Query{Name: "q", SQL: "SELECT bump() AS b", One: true})
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	require.NoError(t, err)
	defer tx.Rollback(ctx) //nolint:errcheck
	args, err := p.Bind(nil)
	require.NoError(t, err)
	b := &pgx.Batch{}
	p.Queue(b, args, query.Page{}, query.JSON)
	require.ErrorContains(t, tx.SendBatch(ctx, b).Close(), "read-only transaction")
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n))
	require.Equal(t, 1, n, "nothing written")
}

func TestBindRefusesBadValues(t *testing.T) {
	t.Parallel()
	params := []query.Param{
		{Name: "i", Type: query.Integer}, {Name: "b", Type: query.Bigint}, {Name: "n", Type: query.Numeric},
		{Name: "f", Type: query.Boolean}, {Name: "d", Type: query.Date}, {Name: "ts", Type: query.Timestamptz},
		{Name: "u", Type: query.UUID}, {Name: "s", Type: query.Text, Enum: []string{"a", "b"}},
		{Name: "r", Type: query.Text, Required: true},
	}
	var cols []string
	for _, p := range params {
		cols = append(cols, fmt.Sprintf(":%s AS %s", p.Name, p.Name))
	}
	c, err := query.Compile("p", query.Query{Name: "q", Params: params, SQL: "SELECT " + strings.Join(cols, ", "), One: true})
	require.NoError(t, err)
	for q, want := range map[string]string{
		"r=x&i=2147483648":               "param i (integer): want a whole number",
		"r=x&b=1.5":                      "param b (bigint)",
		"r=x&n=1e":                       "param n (numeric): want a decimal number",
		"r=x&f=maybe":                    "param f (boolean): want true or false",
		"r=x&d=2026-13-01":               "param d (date)",
		"r=x&ts=yesterday":               "param ts (timestamptz): want an RFC 3339 time",
		"r=x&u=not-a-uuid":               "param u (uuid)",
		"r=x&s=c":                        "param s (text): want one of a, b",
		"i=1":                            "param r (text): required",
		"r=x&r=y":                        "given more than once",
		"r=x&typo=1":                     "param typo: query q has no such param",
		"r=x&i=1%27%3B--":                "param i (integer)",
		"r=" + strings.Repeat("x", 5000): "longer than",
	} {
		v, err := url.ParseQuery(q)
		require.NoError(t, err)
		_, err = c.Bind(v)
		var pe *query.ParamError
		require.ErrorAs(t, err, &pe, q)
		require.ErrorContains(t, err, want, q)
	}
	v, _ := url.ParseQuery("r=x&i=-5&b=9007199254740993&n=12.50&f=true&d=2026-12-06&ts=2026-12-06T19:30:00.5%2B01:00&u=5f0c7d42-9a3e-4c1b-8d2f-3a4b5c6d7e8f&s=b&limit=3")
	_, err = c.Bind(v)
	require.NoError(t, err)
}

// TestValuesGoOutTyped: each SQL type as the JSON and CSV contracts say,
// and a hostile value bound, never spliced.
func TestValuesGoOutTyped(t *testing.T) {
	t.Parallel()
	ctx, pool := setup(t, `CREATE TABLE t (id text PRIMARY KEY)`)
	p := mustCheck(ctx, t, pool, query.Query{Name: "q", Params: []query.Param{{Name: "s", Type: query.Text, Required: true}}, One: true, SQL: `SELECT
		:s AS s, 7::int AS i, 9007199254740993::bigint AS b, 12.50::numeric AS n, 'NaN'::float8 AS f, 1.5::float4 AS r,
		true AS ok, NULL::text AS nothing, '2026-12-06'::date AS d, 'infinity'::date AS forever,
		'2026-12-06 19:30:00.123456+01'::timestamptz AS ts, '2026-12-06 19:30:00'::timestamp AS local,
		'{"a": [1, 2.50]}'::jsonb AS doc, '{"b":1}'::json AS raw, '\x0102'::bytea AS bin,
		'5f0c7d42-9a3e-4c1b-8d2f-3a4b5c6d7e8f'::uuid AS u, ARRAY[1, 2] AS arr, '1 day'::interval AS span,
		E'line\nquote" \u2028' AS tricky`})
	hostile := `x'); DROP TABLE t; --`
	res, err := run(ctx, t, pool, p, url.Values{"s": {hostile}}, query.Page{}, query.JSON)
	require.NoError(t, err)
	require.True(t, res.Found)
	require.JSONEq(t, `{"s":"x'); DROP TABLE t; --","i":7,"b":9007199254740993,"n":"12.50","f":"NaN","r":1.5,"ok":true,
		"nothing":null,"d":"2026-12-06","forever":"infinity","ts":"2026-12-06T18:30:00.123456Z","local":"2026-12-06T19:30:00",
		"doc":{"a":[1,2.50]},"raw":{"b":1},"bin":"AQI=","u":"5f0c7d42-9a3e-4c1b-8d2f-3a4b5c6d7e8f","arr":[1,2],
		"span":"1 day 00:00:00","tricky":"line\nquote\" \u2028"}`, string(res.Body))
	require.Contains(t, string(res.Body), `"b":9007199254740993,`, "bigint as a number, every digit kept")
	require.Contains(t, string(res.Body), `"doc":{"a": [1, 2.50]}`, "jsonb as PostgreSQL wrote it")
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n), "the table is still there")

	list := mustCheck(ctx, t, pool, query.Query{Name: "l", PageBy: []string{"i"}, SQL: `SELECT i, 'a,"b"' AS s, NULL::int AS z, '{"k":1}'::jsonb AS j FROM generate_series(1, 2) i`})
	res, err = run(ctx, t, pool, list, nil, query.Page{Limit: 10}, query.CSV)
	require.NoError(t, err)
	require.Equal(t, "i,s,z,j\n1,\"a,\"\"b\"\"\",,\"{\"\"k\"\": 1}\"\n2,\"a,\"\"b\"\"\",,\"{\"\"k\"\": 1}\"\n", string(res.Body))
}

// TestPagesReadEveryRowOnce pages through rows with NULLs and ties in
// every ordering of two keys, one page size after another: the pages
// together are the rows in the order a plain ORDER BY gives, each once.
func TestPagesReadEveryRowOnce(t *testing.T) {
	t.Parallel()
	ctx, pool := setup(t, `CREATE TABLE t (id int PRIMARY KEY, a int, b text, at timestamptz NOT NULL)`)
	rng := rand.New(rand.NewPCG(1, 2))
	for id := range 60 {
		var a, b any
		if rng.IntN(4) > 0 {
			a = rng.IntN(5)
		}
		if rng.IntN(4) > 0 {
			b = fmt.Sprintf("b%d", rng.IntN(3))
		}
		_, err := pool.Exec(ctx, `INSERT INTO t VALUES ($1, $2, $3, '2026-01-01'::timestamptz + $4 * interval '1 minute')`, id, a, b, rng.IntN(20))
		require.NoError(t, err)
	}
	for _, order := range [][]string{
		{"id"}, {"id desc"}, {"at", "id"}, {"at desc", "id"}, {"a", "id"}, {"a desc", "id"}, {"a", "b desc", "id"},
		{"b desc", "a", "id desc"}, {"at desc", "a", "id"},
	} {
		p := mustCheck(ctx, t, pool, query.Query{Name: "q", PageBy: order, SQL: `SELECT id, a, b, at FROM t WHERE id % 7 <> 3`})
		rows, err := pool.Query(ctx, `SELECT id FROM (SELECT id, a, b, at FROM t WHERE id % 7 <> 3) q ORDER BY `+strings.Join(order, ", "))
		require.NoError(t, err)
		want, err := pgx.CollectRows(rows, pgx.RowTo[int])
		require.NoError(t, err)
		for _, limit := range []int{1, 2, 7, 100} {
			var got []int
			page := query.Page{Limit: limit}
			for pages := 0; ; pages++ {
				require.Less(t, pages, 100)
				res, err := run(ctx, t, pool, p, nil, page, query.JSON)
				require.NoError(t, err, "%v limit %d", order, limit)
				var items []struct{ ID int }
				require.NoError(t, json.Unmarshal(res.Body, &items))
				require.LessOrEqual(t, len(items), limit)
				for _, it := range items {
					got = append(got, it.ID)
				}
				if res.Next == "" {
					break
				}
				page.After, err = p.Cursor(res.Next)
				require.NoError(t, err)
			}
			require.Equal(t, want, got, "%v limit %d", order, limit)
		}
	}
}

func TestCursorOfAnotherQueryIsRefused(t *testing.T) {
	t.Parallel()
	ctx, pool := setup(t, `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 3)`)
	a := mustCheck(ctx, t, pool, query.Query{Name: "a", PageBy: []string{"id"}, SQL: "SELECT id FROM t"})
	b := mustCheck(ctx, t, pool, query.Query{Name: "b", PageBy: []string{"id"}, SQL: "SELECT id FROM t"})
	res, err := run(ctx, t, pool, a, nil, query.Page{Limit: 1}, query.JSON)
	require.NoError(t, err)
	require.NotEmpty(t, res.Next)
	_, err = a.Cursor(res.Next)
	require.NoError(t, err)
	for _, c := range []string{res.Next, "!!", "bm90IGpzb24", ""} {
		_, err = b.Cursor(c)
		require.ErrorIs(t, err, query.ErrBadCursor, c)
	}
}

func TestOneRefusesMoreThanOneRow(t *testing.T) {
	t.Parallel()
	ctx, pool := setup(t, `CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 3)`)
	p := mustCheck(ctx, t, pool, query.Query{Name: "q", One: true, SQL: "SELECT id FROM t"})
	_, err := run(ctx, t, pool, p, nil, query.Page{}, query.JSON)
	require.ErrorIs(t, err, query.ErrNotOne)
	none := mustCheck(ctx, t, pool, query.Query{Name: "q", One: true, SQL: "SELECT id FROM t WHERE id > 5"})
	res, err := run(ctx, t, pool, none, nil, query.Page{}, query.JSON)
	require.NoError(t, err)
	require.False(t, res.Found)
}

// TestCheckRefusesOtherTables: a query reads its own projection's tables;
// one that reaches another schema, in a join, a subquery or a CTE, even
// behind a parameter that the planner could fold away, is refused.
func TestCheckRefusesOtherTables(t *testing.T) {
	t.Parallel()
	ctx, pool := setup(t, `CREATE TABLE t (id int PRIMARY KEY);
		CREATE SCHEMA other; CREATE TABLE other.secrets (id int PRIMARY KEY);`)
	n := []query.Param{{Name: "n", Type: query.Integer}}
	for _, sql := range []string{
		"SELECT id FROM other.secrets",
		"SELECT t.id FROM t JOIN other.secrets s USING (id)",
		"SELECT id FROM t WHERE EXISTS (SELECT 1 FROM other.secrets WHERE :n IS NOT NULL AND false)",
		"WITH s AS (SELECT id FROM other.secrets) SELECT id FROM t WHERE id IN (SELECT id FROM s) OR :n = 1",
		"SELECT id, row(s.*) AS r FROM other.secrets s", // a record column, which no view could hold
	} {
		q := query.Query{Name: "q", SQL: sql, PageBy: []string{"id"}}
		if strings.Contains(sql, ":n") {
			q.Params = n
		}
		_, err := check(ctx, t, pool, q)
		require.ErrorContains(t, err, "reads other.secrets, which is not among the projection's tables", sql)
	}
	_, err := check(ctx, t, pool, query.Query{Name: "q", Params: []query.Param{{Name: "id", Type: query.Integer, Required: true}}, One: true,
		SQL: "SELECT id FROM t WHERE id = :id", Stream: "(SELECT 's-' || id FROM other.secrets WHERE id = :id)"})
	require.ErrorContains(t, err, "stream: reads other.secrets")
	mustCheck(ctx, t, pool, query.Query{Name: "q", Params: n, SQL: "SELECT id FROM t WHERE id > :n OR :n IS NULL", PageBy: []string{"id"}})
}

// TestPagesOfPaddedTextAndOuterJoins: a char(n) key keeps its whole value
// in the cursor, and a NOT NULL column on the outer side of a join is read
// as the NULL it can be there: every row once, in order.
func TestPagesOfPaddedTextAndOuterJoins(t *testing.T) {
	t.Parallel()
	ctx, pool := setup(t, `CREATE TABLE c (code char(3) PRIMARY KEY, name text NOT NULL);
		CREATE TABLE o (id int PRIMARY KEY, code char(3));
		INSERT INTO c SELECT 'k' || lpad(i::text, 2, '0'), 'n' || (i % 3) FROM generate_series(1, 9) i;
		INSERT INTO o SELECT i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'k' || lpad((i % 9 + 1)::text, 2, '0') END FROM generate_series(1, 20) i;`)
	for _, q := range []struct {
		sql   string
		order []string
	}{
		{`SELECT code, name FROM c`, []string{"code"}},
		{`SELECT o.id, c.name FROM o LEFT JOIN c USING (code)`, []string{"name", "id"}},
		{`SELECT o.id, c.name FROM o LEFT JOIN c USING (code)`, []string{"name desc", "id desc"}},
	} {
		p := mustCheck(ctx, t, pool, query.Query{Name: "q", PageBy: q.order, SQL: q.sql})
		rows, err := pool.Query(ctx, `SELECT row_to_json(q)::text FROM (`+q.sql+`) q ORDER BY `+strings.Join(q.order, ", "))
		require.NoError(t, err)
		want, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		var got []string
		page := query.Page{Limit: 2}
		for pages := 0; ; pages++ {
			require.Less(t, pages, 30, q.sql)
			res, err := run(ctx, t, pool, p, nil, page, query.JSON)
			require.NoError(t, err)
			var items []json.RawMessage
			require.NoError(t, json.Unmarshal(res.Body, &items))
			for _, it := range items {
				var v any
				require.NoError(t, json.Unmarshal(it, &v))
				b, _ := json.Marshal(v)
				got = append(got, string(b))
			}
			if res.Next == "" {
				break
			}
			page.After, err = p.Cursor(res.Next)
			require.NoError(t, err)
		}
		for i := range want {
			var v any
			require.NoError(t, json.Unmarshal([]byte(want[i]), &v))
			b, _ := json.Marshal(v)
			want[i] = string(b)
		}
		require.Equal(t, want, got, "%s by %v", q.sql, q.order)
	}
}
