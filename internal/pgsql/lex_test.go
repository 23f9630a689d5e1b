package pgsql_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/internal/pgsql"
	"github.com/sightlinehq/sightline/internal/testdb"
)

// TestParamsAreFoundOnlyOutsideLiterals: each case's :name parameters, and
// none of the colons inside literals, identifiers, comments and casts.
func TestParamsAreFoundOnlyOutsideLiterals(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		sql  string
		want []string
	}{
		{`SELECT :a, :b_2, :a`, []string{"a", "b_2"}},
		{`SELECT ':a'`, nil},
		{`SELECT 'it''s :a'`, nil},
		{`SELECT E'it\'s :a', :b`, []string{"b"}},
		{`SELECT e'\\', :b`, []string{"b"}}, // the backslash escapes a backslash; the string ends
		{`SELECT 'C:\', :b`, []string{"b"}}, // a standard string: the backslash is a character
		{`SELECT N'x:a', B'01', X'FF', :b`, []string{"b"}},
		{`SELECT U&'d\0061t:a', U&"x:a", :b`, []string{"b"}},
		{`SELECT "col:a" FROM t WHERE x = :b`, []string{"b"}},
		{`SELECT "a""b:c", :d`, []string{"d"}},
		{`SELECT $$ :a ' $$, :b`, []string{"b"}},
		{`SELECT $fn$ :a $$ :c $fn$, :b`, []string{"b"}},
		{`SELECT a$b, :c`, []string{"c"}}, // $ inside an identifier starts no dollar quote
		{`SELECT 1 -- :a`, nil},
		{"SELECT 1 -- :a\n, :b", []string{"b"}},
		{`SELECT /* :a /* nested :b */ still :c */ :d`, []string{"d"}},
		{`SELECT :a::text, x::int, :b::date`, []string{"a", "b"}},
		{`SELECT arr[1:2], arr[1 : n], f(x := 1)`, nil},
		{`SELECT arr[1:n]`, []string{"n"}}, // as in psql: write arr[1 : n] for a column
		{`SELECT 1.5e-3, .5, :x`, []string{"x"}},
		{`SELECT x FROM t WHERE name = 'é:a' AND :é`, []string{"é"}},
	} {
		toks, err := pgsql.Scan(c.sql)
		require.NoError(t, err, c.sql)
		require.Equal(t, c.sql, pgsql.Text(toks), "tokens give the input back")
		require.Equal(t, c.want, pgsql.Params(toks), c.sql)
	}
}

func TestUnterminatedInputIsAnError(t *testing.T) {
	t.Parallel()
	for _, sql := range []string{`SELECT 'x`, `SELECT E'x\'`, `SELECT "x`, `SELECT $$ x`, `SELECT $a$ x $b$`, `SELECT /* x`, `SELECT /* /* x */`} {
		_, err := pgsql.Scan(sql)
		var se *pgsql.SyntaxError
		require.ErrorAs(t, err, &se, sql)
	}
}

func TestStatement(t *testing.T) {
	t.Parallel()
	for sql, want := range map[string]string{
		"SELECT 1":                      "SELECT 1",
		"  SELECT 1 ;  ":                "SELECT 1",
		"-- why\nSELECT 1; -- done\n":   "SELECT 1",
		"SELECT ';' AS x;;":             "SELECT ';' AS x",
		"SELECT 1 /* ; */ + 2":          "SELECT 1 /* ; */ + 2",
		"SELECT $$;$$":                  "SELECT $$;$$",
		"WITH a AS (SELECT 1) SELECT 2": "WITH a AS (SELECT 1) SELECT 2",
	} {
		toks, err := pgsql.Statement(sql)
		require.NoError(t, err, sql)
		require.Equal(t, want, pgsql.Text(toks), sql)
	}
	for _, sql := range []string{"", " -- nothing\n", ";", "SELECT 1; DROP TABLE t", "SELECT 1; SELECT 2;"} {
		_, err := pgsql.Statement(sql)
		require.Error(t, err, "%q", sql)
	}
}

func TestBind(t *testing.T) {
	t.Parallel()
	toks, err := pgsql.Scan(`SELECT :b, ':a', :a, :b`)
	require.NoError(t, err)
	n, err := pgsql.Bind(toks, func(name string) (string, error) { return "text", nil })
	require.NoError(t, err)
	require.Equal(t, `SELECT $1::text, ':a', $2::text, $1::text`, n.SQL)
	require.Equal(t, []string{"b", "a"}, n.Params)

	_, err = pgsql.Bind(toks, func(name string) (string, error) { return "", fmt.Errorf("unknown :%s", name) })
	require.ErrorContains(t, err, "unknown :b")
	toks, err = pgsql.Scan(`SELECT $1`)
	require.NoError(t, err)
	_, err = pgsql.Bind(toks, func(string) (string, error) { return "text", nil })
	require.ErrorContains(t, err, "positional parameter $1")
}

// TestPostgreSQLAgrees runs each rewritten statement on PostgreSQL: the
// server reads every literal, identifier and comment where the lexer
// found it, and the parameters the lexer found are the ones it binds.
func TestPostgreSQLAgrees(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db := testdb.New(t)
	for _, c := range []struct {
		sql  string
		want string // the row as text
	}{
		{`SELECT ':a' || :a`, ":aA"},
		{`SELECT E'it\'s :a' || :a`, "it's :aA"},
		{`SELECT 'C:\' || :a`, `C:\A`},
		{`SELECT $q$ :a $$ $q$ || :a`, " :a $$ A"},
		{"SELECT :a -- || :b\n || 'x'", "Ax"},
		{`SELECT /* :b /* :b */ */ :a`, "A"},
		{`SELECT :a::text || 1::text`, "A1"},
		{`SELECT U&'\0041:a' || :a`, "A:aA"},
		{`SELECT (ARRAY['p','q','r'])[2:3]::text || :a`, "{q,r}A"},
	} {
		toks, err := pgsql.Statement(c.sql)
		require.NoError(t, err, c.sql)
		n, err := pgsql.Bind(toks, func(string) (string, error) { return "text", nil })
		require.NoError(t, err, c.sql)
		args := make([]any, len(n.Params))
		for i, p := range n.Params {
			args[i] = strings.ToUpper(p)
		}
		var got string
		require.NoError(t, db.Pool.QueryRow(ctx, n.SQL, args...).Scan(&got), "%s\nas %s", c.sql, n.SQL)
		require.Equal(t, c.want, got, c.sql)
	}
}

// FuzzScan: whatever the input, the lexer ends, its tokens give the input
// back, and binding every parameter changes nothing but the parameters.
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		`SELECT :a, ':b', E'\'', "c:d", $$:e$$, $t$ :f $t$ -- :g`, "/* /* */ :h */", `U&'x' u&"y" :i::int`,
		`a$b$ :j $1 1.5e+3 .5 1..2 ; ;`, `x[1:2]`, "'", `E'\`, `$a$`, `/*`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		toks, err := pgsql.Scan(sql)
		if err != nil {
			return
		}
		if got := pgsql.Text(toks); got != sql {
			t.Fatalf("tokens give %q back, not %q", got, sql)
		}
		pos := 0
		for _, tok := range toks {
			if tok.Pos != pos || tok.Text == "" {
				t.Fatalf("token %+v at %d", tok, pos)
			}
			pos += len(tok.Text)
			if tok.Kind == pgsql.Param && (len(tok.Text) < 2 || tok.Text[0] != ':') {
				t.Fatalf("parameter token %q", tok.Text)
			}
		}
		n, err := pgsql.Bind(toks, func(name string) (string, error) { return "t", nil })
		if err != nil {
			return // a positional parameter
		}
		// Lexed again, the bound statement has the same tokens, but for
		// each parameter made $n::t (and the spaces that keep it apart).
		again, err := pgsql.Scan(n.SQL)
		if err != nil {
			t.Fatalf("bound %q from %q does not lex: %v", n.SQL, sql, err)
		}
		var want, got []string
		for _, tok := range toks {
			if tok.Kind == pgsql.Param {
				want = append(want, "$", "::", "t")
			} else if tok.Kind != pgsql.Space {
				want = append(want, tok.Text)
			}
		}
		for _, tok := range again {
			switch tok.Kind {
			case pgsql.Positional:
				got = append(got, "$")
			case pgsql.Space:
			default:
				got = append(got, tok.Text)
			}
		}
		if strings.Join(want, "\x00") != strings.Join(got, "\x00") {
			t.Fatalf("binding %q changed its lexing: %q gives %q, want %q", sql, n.SQL, got, want)
		}
		_, _ = pgsql.Statement(sql)
	})
}
