package api_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/query"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// probes is a projection of the tests' own, in Go, with queries that
// misbehave when they run: one that sleeps, one that calls a function
// that writes.
type probes struct{}

const typeProbeMade = "ProbeMade"

func (probes) Name() string { return "probes" }
func (probes) Version() int { return 1 }
func (probes) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"probe-"}}
}
func (probes) Tables() []string { return []string{"probes"} }
func (probes) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "probes"}.Sanitize()+` (
		id text PRIMARY KEY, n bigint NOT NULL, amount numeric NOT NULL, doc jsonb, at timestamptz NOT NULL);
		CREATE TABLE IF NOT EXISTS public.probe_writes (n int);
		CREATE OR REPLACE FUNCTION public.probe_write() RETURNS int LANGUAGE sql AS 'INSERT INTO public.probe_writes VALUES (1) RETURNING n'`)
	return err
}
func (probes) Apply(_ context.Context, b *projections.Batch) error {
	for _, e := range b.Events {
		b.Queue(`INSERT INTO `+b.Table("probes")+` AS p (id, n, amount, doc, at)
			VALUES (substr($1, 7), 1, ($2::jsonb->>'amount')::numeric, $2::jsonb, $3)
			ON CONFLICT (id) DO UPDATE SET n = p.n + 1, amount = excluded.amount, doc = excluded.doc, at = excluded.at`,
			e.StreamID, string(e.Data), e.CreatedAt)
	}
	return nil
}

func (probes) Queries() []query.Query {
	id := []query.Param{{Name: "id", Type: query.Text, Required: true}}
	return []query.Query{
		{Name: "by_id", Params: id, One: true, Stream: "'probe-' || :id", SQL: `SELECT id, n, amount, doc, at FROM probes WHERE id = :id`},
		{Name: "all", PageBy: []string{"at desc", "id"}, SQL: `SELECT id, n, amount, doc, at FROM probes`},
		{Name: "slow", Params: []query.Param{{Name: "s", Type: query.Numeric, Default: "0"}}, PageBy: []string{"id"},
			SQL: `SELECT id FROM probes WHERE pg_sleep(:s) IS NOT NULL`},
		{Name: "writes", PageBy: []string{"id"}, SQL: `SELECT id, probe_write() AS w FROM probes`},
	}
}

func withProbes() []projections.Projection { return append(readmodel.All(), probes{}) }

func probe(ctx context.Context, t *testing.T, b *bundle, id, data string) eventstore.AppendResult {
	t.Helper()
	res, err := b.store.Append(ctx, "probe-"+id, eventstore.Any, storetest.Event(typeProbeMade, data))
	require.NoError(t, err)
	return res
}

// problemOf decodes a problem document, checking that it is one.
func problemOf(t *testing.T, r response) (p struct {
	Title, Detail string
	Status        int
}) {
	t.Helper()
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"), r.body)
	require.NoError(t, json.Unmarshal([]byte(r.body), &p))
	require.Equal(t, r.StatusCode, p.Status)
	return p
}

// TestExampleEndpointsAreDeclaredQueries: each example URL answers as the
// general route does, byte for byte, with the staleness headers.
func TestExampleEndpointsAreDeclaredQueries(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	for alias, general := range map[string]string{
		"/v1/orders/1":                      "/v1/projections/orders/queries/by_id?id=1",
		"/v1/orders?status=paid&limit=5":    "/v1/projections/orders/queries/list?status=paid&limit=5",
		"/v1/customers/c1/stats":            "/v1/projections/customer_stats/queries/by_customer?id=c1",
		"/v1/sales/daily?from=2000-01-01":   "/v1/projections/daily_sales/queries/days?from=2000-01-01",
		"/v1/orders/none":                   "/v1/projections/orders/queries/by_id?id=none",
		"/v1/sales/daily?from=2000-02-30":   "/v1/projections/daily_sales/queries/days?from=2000-02-30",
		"/v1/orders?status=lost":            "/v1/projections/orders/queries/list?status=lost",
		"/v1/orders?customer_id=c1&limit=0": "/v1/projections/orders/queries/list?customer_id=c1&limit=0",
	} {
		a, g := get(t, b.url+alias), get(t, b.url+general)
		require.Equal(t, g.StatusCode, a.StatusCode, alias)
		require.Equal(t, g.body, a.body, alias)
		if g.StatusCode == http.StatusBadRequest {
			continue // refused before the projection is asked
		}
		for _, h := range []string{api.HeaderPosition, api.HeaderHead, api.HeaderLagMs, api.HeaderStatus} {
			require.NotEmpty(t, g.Header.Get(h), "%s: %s", general, h)
		}
	}
	r := get(t, b.url+"/v1/projections/orders/queries/by_id?id=1")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	var o order
	require.NoError(t, json.Unmarshal([]byte(r.body), &o))
	require.Equal(t, order{ID: "1", CustomerID: "c1", Status: "paid", Total: 250, Paid: 250, PlacedAt: o.PlacedAt, UpdatedAt: o.UpdatedAt, Revision: 1}, o)
	require.False(t, o.PlacedAt.IsZero())
	r = get(t, b.url+"/v1/sales/daily?from=2000-01-01")
	require.Regexp(t, `^\{"items":\[\{"day":"\d{4}-\d\d-\d\d","orders":1,"revenue":250,"cancelled":0\}\],"next":null\}$`, r.body)
}

// TestQueryListsAndNotFound: a projection lists its queries; an unknown
// query's 404 names those it has; an unknown projection is 404 too.
func TestQueryListsAndNotFound(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	r := get(t, b.url+"/v1/projections/orders/queries")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	var list api.QueryList
	require.NoError(t, json.Unmarshal([]byte(r.body), &list))
	require.Equal(t, "orders", list.Projection)
	require.Len(t, list.Queries, 2)
	byID, all := list.Queries[0], list.Queries[1]
	require.Equal(t, "by_id", byID.Name)
	require.True(t, byID.One)
	require.True(t, byID.Stream)
	require.Equal(t, "/v1/projections/orders/queries/by_id", byID.Path)
	require.Equal(t, "/v1/orders/:id", byID.Route)
	require.Equal(t, []api.ParamInfo{{Name: "id", Type: query.Text, Required: true, Description: byID.Params[0].Description}}, byID.Params)
	require.Equal(t, []string{"id", "customer_id", "status", "total", "paid", "placed_at", "updated_at", "revision"}, byID.Columns)
	require.Equal(t, "list", all.Name)
	require.Equal(t, []string{"id"}, all.PageBy)
	require.Equal(t, []string{"placed", "paid", "shipped", "delivered", "cancelled"}, all.Params[0].Enum)

	r = get(t, b.url+"/v1/projections/orders/queries/by_email?email=x")
	require.Equal(t, http.StatusNotFound, r.StatusCode)
	require.Contains(t, problemOf(t, r).Detail, "projection orders has no query by_email; it has: by_id, list")
	for _, path := range []string{"/v1/projections/nope/queries", "/v1/projections/nope/queries/by_id"} {
		r = get(t, b.url+path)
		require.Equal(t, http.StatusNotFound, r.StatusCode, path)
		require.Contains(t, problemOf(t, r).Detail, "no projection named nope")
	}
}

// TestBadParamsAreNamed: a bad value is a 400 that names the param and
// the type it wants, and nothing runs.
func TestBadParamsAreNamed(t *testing.T) {
	t.Parallel()
	_, b := setupWith(t, api.Config{}, withProbes())
	for path, want := range map[string][]string{
		"/v1/projections/orders/queries/by_id":                   {"id", "required"},
		"/v1/projections/orders/queries/by_id?id=1&id=2":         {"id", "once"},
		"/v1/projections/orders/queries/by_id?id=1&colour=red":   {"colour", "it takes: id"},
		"/v1/projections/orders/queries/list?status=lost":        {"status", "placed, paid, shipped, delivered, cancelled"},
		"/v1/projections/daily_sales/queries/days?from=tomorrow": {"from", "date"},
		"/v1/projections/daily_sales/queries/days?to=2026-13-01": {"to", "date"},
		"/v1/projections/probes/queries/slow?s=ten":              {"s", "numeric"},
		"/v1/projections/orders/queries/list?limit=1001":         {"limit", "1000"},
		"/v1/projections/orders/queries/list?cursor=e30":         {"cursor"},
		"/v1/projections/orders/queries/list?min_revision=1":     {"does not name the stream"},
		"/v1/projections/orders/queries/by_id?id=1&min_revision=-1": {
			api.HeaderMinRevision, "whole number"},
	} {
		r := get(t, b.url+path)
		require.Equal(t, http.StatusBadRequest, r.StatusCode, "%s: %s", path, r.body)
		for _, w := range want {
			require.Contains(t, problemOf(t, r).Detail, w, path)
		}
	}
}

// TestValuesAreNeverSQL: what a request sends is a bound value, whatever
// it holds; the read model is untouched.
func TestValuesAreNeverSQL(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	for _, v := range []string{"1' OR '1'='1", "1; DROP TABLE orders", "1' UNION SELECT id, id, id, 0, 0, now(), now(), 0 FROM orders --", `1"); DELETE FROM orders; --`, ":id", "$1"} {
		r := get(t, b.url+"/v1/projections/orders/queries/by_id?id="+url.QueryEscape(v))
		require.Equal(t, http.StatusNotFound, r.StatusCode, "%q: %s", v, r.body)
		r = get(t, b.url+"/v1/orders?customer_id="+url.QueryEscape(v))
		require.Equal(t, http.StatusOK, r.StatusCode, r.body)
		require.Equal(t, `{"items":[],"next":null}`, r.body, v)
	}
	var n int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM readmodel.orders`).Scan(&n))
	require.Equal(t, 1, n)
}

// TestCSV: a list query answers text/csv when asked, header first, paged
// as JSON is; a query of one row answers 406.
func TestCSV(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	for i := range 3 {
		_, err := b.store.Append(ctx, fmt.Sprintf("order-csv%d", i), eventstore.NoStream,
			storetest.Event(readmodel.TypeOrderPlaced, fmt.Sprintf(`{"customer_id":"csv, \"quoted\"","items":[],"total":%d}`, i)))
		require.NoError(t, err)
	}
	readmodeltest.WaitCaughtUp(t, ctx, b.pool, "orders")
	q := "/v1/orders?customer_id=" + url.QueryEscape(`csv, "quoted"`) + "&limit=2"
	r := get(t, b.url+q, "Accept", "text/csv")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Equal(t, "text/csv; charset=utf-8", r.Header.Get("Content-Type"))
	records, err := csv.NewReader(strings.NewReader(r.body)).ReadAll()
	require.NoError(t, err)
	require.Len(t, records, 3)
	require.Equal(t, []string{"id", "customer_id", "status", "total", "paid", "placed_at", "updated_at", "revision"}, records[0])
	require.Equal(t, []string{"csv0", `csv, "quoted"`, "placed", "0", "0"}, records[1][:5])
	link := r.Header.Get("Link")
	require.Contains(t, link, `rel="next"`)
	next := strings.TrimSuffix(strings.TrimPrefix(strings.Split(link, ";")[0], "<"), ">")
	r = get(t, b.url+next, "Accept", "text/csv")
	records, err = csv.NewReader(strings.NewReader(r.body)).ReadAll()
	require.NoError(t, err)
	require.Len(t, records, 2)
	require.Equal(t, "csv2", records[1][0])
	require.Empty(t, r.Header.Get("Link"))

	require.Equal(t, "application/json", get(t, b.url+q, "Accept", "application/json, text/csv").Header.Get("Content-Type"))
	r = get(t, b.url+"/v1/orders/1", "Accept", "text/csv")
	require.Equal(t, http.StatusNotAcceptable, r.StatusCode)
	problemOf(t, r)
}

// TestQueriesRunReadOnlyAndBounded: a query that runs past the timeout is
// cut off with 504, one that would write is refused, and nothing is
// written; the pool serves on.
func TestQueriesRunReadOnlyAndBounded(t *testing.T) {
	t.Parallel()
	ctx, b := setupWith(t, api.Config{QueryTimeout: 300 * time.Millisecond}, withProbes())
	probe(ctx, t, b, "a", `{"amount":"1.50"}`)
	readmodeltest.WaitCaughtUp(t, ctx, b.pool, "probes")

	start := time.Now()
	r := get(t, b.url+"/v1/projections/probes/queries/slow?s=30")
	require.Equal(t, http.StatusGatewayTimeout, r.StatusCode, r.body)
	require.Less(t, time.Since(start), 10*time.Second, "cut off, not slept")
	require.Contains(t, problemOf(t, r).Detail, "ran longer than 300ms")

	r = get(t, b.url+"/v1/projections/probes/queries/writes")
	require.Equal(t, http.StatusInternalServerError, r.StatusCode, r.body)
	require.Contains(t, problemOf(t, r).Detail, "read-only")
	var writes int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM public.probe_writes`).Scan(&writes))
	require.Zero(t, writes, "nothing written")

	for range 20 { // every connection of the pool is still good
		r = get(t, b.url+"/v1/projections/probes/queries/slow?s=0")
		require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	}
	r = get(t, b.url+"/v1/projections/probes/queries/by_id?id=a")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Regexp(t, `^\{"id":"a","n":1,"amount":"1.50","doc":\{"amount": ?"1.50"\},"at":"[^"]+"\}$`, r.body)
}

// TestMinRevision: a read of one stream waits for the revision asked for,
// answers at once when it is in, and 503 when it does not come in time.
func TestMinRevision(t *testing.T) {
	t.Parallel()
	ctx, b := setupWith(t, api.Config{}, withProbes())
	res := probe(ctx, t, b, "w", `{"amount":1}`)
	r := get(t, b.url+"/v1/projections/probes/queries/by_id?id=w", api.HeaderMinRevision, fmt.Sprint(res.NextRevision-1), api.HeaderWaitMs, "10000")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Contains(t, r.body, `"n":1`)

	// A write that comes while the read waits.
	done := make(chan response, 1)
	go func() {
		done <- get(t, b.url+"/v1/projections/probes/queries/by_id?id=w&min_revision=1", api.HeaderWaitMs, "10000")
	}()
	time.Sleep(100 * time.Millisecond)
	probe(ctx, t, b, "w", `{"amount":2}`)
	r = <-done
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Contains(t, r.body, `"n":2`)

	// Many readers of streams not written yet, each woken by its own.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := get(t, fmt.Sprintf("%s/v1/projections/probes/queries/by_id?id=m%d", b.url, i), api.HeaderMinRevision, "0", api.HeaderWaitMs, "20000")
			require.Equal(t, http.StatusOK, r.StatusCode, r.body)
		}()
	}
	time.Sleep(100 * time.Millisecond)
	for i := range 20 {
		probe(ctx, t, b, fmt.Sprintf("m%d", i), `{"amount":3}`)
	}
	wg.Wait()

	start := time.Now()
	r = get(t, b.url+"/v1/projections/probes/queries/by_id?id=w", api.HeaderMinRevision, "99", api.HeaderWaitMs, "100")
	require.Equal(t, http.StatusServiceUnavailable, r.StatusCode, r.body)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, "1", r.Header.Get("Retry-After"))
	require.Contains(t, problemOf(t, r).Detail, "probe-w has not reached revision 99")
}

// TestRebuildSwapUnderQueryTraffic: readers of every example query, and
// of the one waiting for a revision, keep getting answers while a rebuild
// builds generation 2 beside generation 1 and takes over: not one request
// fails.
func TestRebuildSwapUnderQueryTraffic(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{Token: token})
	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 1500, Customers: 50, Writers: 4, Seed: 3})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.pool, readmodeltest.Names()...)

	paths := []string{"/v1/orders/1", "/v1/orders?limit=20", "/v1/orders?status=paid&limit=5", "/v1/customers/c1/stats",
		"/v1/sales/daily?from=2000-01-01", "/v1/projections/orders/queries/by_id?id=1&min_revision=1", "/v1/projections/orders/queries"}
	stop := make(chan struct{})
	var requests atomic.Int64
	failures := make(chan string, 100)
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				path := paths[i%len(paths)]
				r := get(t, b.url+path)
				requests.Add(1)
				if r.StatusCode != http.StatusOK {
					select {
					case failures <- fmt.Sprintf("%s: %d %s", path, r.StatusCode, r.body):
					default:
					}
				}
			}
		}()
	}
	for _, name := range []string{"orders", "customer_stats", "daily_sales"} {
		r := do(t, http.MethodPost, b.url+"/v1/projections/"+name+"/rebuild", "", "Authorization", "Bearer "+token)
		require.Equal(t, http.StatusAccepted, r.StatusCode, r.body)
	}
	require.Eventually(t, func() bool {
		var swapped int
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM sightline.projections WHERE generation = 2`).Scan(&swapped))
		return swapped == 3
	}, time.Minute, 20*time.Millisecond)
	before := requests.Load()
	require.Eventually(t, func() bool { return requests.Load() > before+200 }, time.Minute, 10*time.Millisecond, "reads after the swap")
	close(stop)
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	t.Logf("%d requests across the rebuilds", requests.Load())
}

// TestCheckRefusesClashingRoutes: two queries may not take one route.
func TestCheckRefusesClashingRoutes(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	_, err := projections.Check(context.Background(), db.Pool, []projections.Projection{readmodel.Orders{}, clashing{}})
	require.ErrorContains(t, err, "projection clashing (Go, api_test.clashing), query list: route /v1/orders is also projection orders (Go, readmodel.Orders), query list's")
}

type clashing struct{ probes }

func (clashing) Name() string { return "clashing" }
func (clashing) Queries() []query.Query {
	return []query.Query{{Name: "list", PageBy: []string{"id"}, Route: "/v1/orders", SQL: `SELECT id FROM probes`}}
}
