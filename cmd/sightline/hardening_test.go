package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestRunWithoutExamplesCreatesNoExampleTables: run applies what it is
// given, and the examples only with --examples; with nothing to run it
// says how to give it something.
func TestRunWithoutExamplesCreatesNoExampleTables(t *testing.T) {
	t.Parallel()
	ctx, db, _ := newDatabase(t, 2*time.Minute)

	_, errOut, code := runCLI(t, "run", "--http-addr", "127.0.0.1:0", "--database-url", db.URL)
	require.Equal(t, exitUsage, code, errOut)
	require.Contains(t, errOut, "no projections to run")
	require.Contains(t, errOut, "--examples")

	p := start(t, "run", "--http-addr", "127.0.0.1:0", "--database-url", db.URL, "--projections", "../../examples/projections")
	require.Eventually(t, func() bool {
		var status string
		return db.Pool.QueryRow(ctx, `SELECT status FROM readmodel.projection_status WHERE projection = 'order_activity'`).Scan(&status) == nil && status == "live"
	}, time.Minute, 20*time.Millisecond, "%s", p.stderr)
	var names []string
	rows, err := db.Pool.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname LIKE 'sl\_%'
		UNION ALL SELECT 'readmodel.' || relname FROM pg_class WHERE relnamespace = 'readmodel'::regnamespace
		UNION ALL SELECT 'projection ' || name FROM sightline.projections ORDER BY 1`)
	require.NoError(t, err)
	for rows.Next() {
		var n string
		require.NoError(t, rows.Scan(&n))
		names = append(names, n)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []string{"projection order_activity", "readmodel.order_activity", "readmodel.projection_status", "sl_order_activity_g1"}, names,
		"nothing of orders, customer_stats or daily_sales")
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	<-p.done
	require.NoError(t, p.err, p.stderr.String())
}

// TestClashesAreRefusedWithBothSources: a YAML projection may not take an
// example's table or another file's name, and names must be valid; check
// and run name both sources and create nothing.
func TestClashesAreRefusedWithBothSources(t *testing.T) {
	t.Parallel()
	ctx, db, _ := newDatabase(t, 2*time.Minute)
	spec := func(name, table string) string {
		return fmt.Sprintf("name: %s\nversion: 1\nstreams: [order-]\ntables: {%s: 'CREATE TABLE %[2]s (id text PRIMARY KEY)'}\nhandlers: {OrderPlaced: 'INSERT INTO %[2]s VALUES (:stream_id) ON CONFLICT DO NOTHING'}\n", name, table)
	}
	write := func(dir, file, body string) string {
		path := filepath.Join(dir, file)
		require.NoError(t, os.WriteFile(path, []byte(body), 0o600))
		return path
	}
	for name, c := range map[string]struct {
		files    map[string]string
		examples bool
		want     []string
	}{
		"an example's table": {files: map[string]string{"mine.yaml": spec("mine", "orders")}, examples: true,
			want: []string{"mine.yaml: table orders (the view readmodel.orders) is also declared by projection orders (Go, readmodel.Orders)"}},
		"one name in two files": {files: map[string]string{"a.yaml": spec("twin", "twin_a"), "b.yaml": spec("twin", "twin_b")},
			want: []string{"b.yaml: projection name twin is also ", "a.yaml's"}},
		"one table in two files": {files: map[string]string{"a.yaml": spec("first", "shared"), "b.yaml": spec("second", "shared")},
			want: []string{"b.yaml: table shared (the view readmodel.shared) is also declared by ", "a.yaml"}},
		"sightline's own view": {files: map[string]string{"a.yaml": spec("mine", "projection_status")},
			want: []string{`table name "projection_status" is sightline's own view readmodel.projection_status`}},
		"the status stream's name": {files: map[string]string{"a.yaml": spec("events", "event_rows")},
			want: []string{`projection name "events" is reserved: /v1/projections/events is the status stream`}},
		"a bad name": {files: map[string]string{"a.yaml": spec("Bad-Name", "t")},
			want: []string{`projection name "Bad-Name": want lower case letters, digits and _, starting with a letter, at most 40`}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for f, body := range c.files {
				write(dir, f, body)
			}
			args := []string{"--database-url", db.URL, "--projections", dir}
			if c.examples {
				args = append(args, "--examples")
			}
			for _, cmd := range [][]string{{"check"}, {"run", "--http-addr", "127.0.0.1:0"}} {
				out, errOut, code := runCLI(t, append(cmd, args...)...)
				require.NotZero(t, code, "%v: %s%s", cmd, out, errOut)
				for _, w := range c.want {
					require.Contains(t, out+errOut, w, cmd)
				}
			}
		})
	}
	var n int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sl\_%'`).Scan(&n))
	require.Zero(t, n, "nothing was created")
}

// TestSecretsStayOutOfTheLogs runs with passwords in --database-url and
// --source and tokens set, at debug level, through a failing source, a
// status and a usage error, and finds none of them in what was printed.
func TestSecretsStayOutOfTheLogs(t *testing.T) {
	t.Parallel()
	ctx, db, _ := newDatabase(t, 2*time.Minute)
	const dbPassword, esdbPassword, apiToken, readToken = "Db-Pa55word-9f2", "Esdb-Pa55word-7c1", "api-token-4d8e", "read-token-1b3a"
	// Trust authentication ignores the password, so the run connects.
	dbURL := strings.Replace(db.URL, "postgres@", "postgres:"+dbPassword+"@", 1)
	require.NotEqual(t, db.URL, dbURL)
	source := "esdb://admin:" + esdbPassword + "@127.0.0.1:1?tls=false&keepAliveTimeout=1000"
	env := []string{"SIGHTLINE_API_TOKEN=" + apiToken, "SIGHTLINE_READ_TOKEN=" + readToken}

	p := startEnv(t, env, "run", "--http-addr", "127.0.0.1:0", "--database-url", dbURL, "--source", source, "--examples", "--log-level", "debug")
	require.Eventually(t, func() bool {
		var n int
		return db.Pool.QueryRow(ctx, `SELECT count(*) FROM readmodel.projection_status WHERE status = 'degraded' AND reason <> ''`).Scan(&n) == nil && n == 3
	}, time.Minute, 50*time.Millisecond, "degraded, with the reason, while the source is unreachable")
	status, statusErr, code := runCLI(t, "status", "--database-url", dbURL)
	require.Zero(t, code, statusErr)
	require.Contains(t, status, "degraded")
	statusJSON, _, code := runCLI(t, "status", "--json", "--database-url", dbURL)
	require.Zero(t, code)
	addr := regexp.MustCompile(`http=http://(\S+)`).FindStringSubmatch(p.stderr.String())
	require.NotNil(t, addr)
	var served strings.Builder
	for _, path := range []string{"/v1/projections", "/readyz", "/metrics"} {
		req, err := http.NewRequest(http.MethodGet, "http://"+addr[1]+path, nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+readToken)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		served.Write(body)
	}
	require.Contains(t, served.String(), `"status":"degraded"`)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	<-p.done
	_, usage, code := runCLI(t, "run", "--source", "kurrentdb://admin:"+esdbPassword+"@[bad", "--database-url", dbURL)
	require.NotZero(t, code)
	_, unreachable, code := runCLI(t, "migrate", "--database-url", "postgres://postgres:"+dbPassword+"@127.0.0.1:1/x?connect_timeout=2")
	require.Equal(t, 1, code)

	all := p.stderr.String() + status + statusErr + statusJSON + usage + unreachable + served.String()
	require.Contains(t, all, "xxxxx", "masked, not dropped")
	for _, secret := range []string{dbPassword, esdbPassword, apiToken, readToken} {
		require.NotContains(t, all, secret)
	}
}

// TestMigrateDownTo rolls the newest migration back and applies it again.
func TestMigrateDownTo(t *testing.T) {
	t.Parallel()
	ctx, db, _ := newDatabase(t, time.Minute)
	newest := func() int {
		var v int
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT max(version) FROM sightline.schema_migrations`).Scan(&v))
		return v
	}
	top := newest()
	out, errOut, code := runCLI(t, "migrate", "--down-to", fmt.Sprint(top-1), "--database-url", db.URL)
	require.Zero(t, code, errOut)
	require.Contains(t, out, fmt.Sprintf("schema rolled back to migration %d", top-1))
	require.Equal(t, top-1, newest())
	out, errOut, code = runCLI(t, "migrate", "--database-url", db.URL)
	require.Zero(t, code, errOut)
	require.Contains(t, out, "schema is up to date")
	require.Equal(t, top, newest())
}
