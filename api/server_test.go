package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "s3cret-token"

type bundle struct {
	url         string
	srv         *api.Server
	pool        *pgxpool.Pool
	store       *pgstore.Store
	daemon      *projections.Daemon
	sourceReady atomic.Bool
}

// setup starts the example projections and the API over real HTTP, with
// one order already projected.
func setup(t *testing.T, cfg api.Config) (context.Context, *bundle) {
	t.Helper()
	return setupWith(t, cfg, readmodel.All())
}

// setupWith is setup with projections ps, which include the examples.
func setupWith(t *testing.T, cfg api.Config, ps []projections.Projection) (context.Context, *bundle) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	db := testdb.New(t)
	store, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	reg := prometheus.NewRegistry()
	d, err := projections.NewDaemon(db.Pool, store, ps, projections.Config{Metrics: projections.NewMetrics(reg), StatusInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { _ = d.Stop(context.Background()) })
	b := &bundle{pool: db.Pool, store: store, daemon: d}
	b.sourceReady.Store(true)
	cfg.Pool, cfg.Store, cfg.Daemon, cfg.SourceReady, cfg.Gatherer, cfg.Registerer = db.Pool, store, d, b.sourceReady.Load, reg, reg
	b.srv = newServer(t, cfg, ps)
	hs := httptest.NewServer(b.srv.Handler())
	t.Cleanup(hs.Close)
	b.url = hs.URL
	_, err = store.Append(ctx, "order-1", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[{"sku":"A","qty":1,"price":250}],"total":250}`),
		storetest.Event(readmodel.TypeOrderPaid, `{"amount":250}`))
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, "orders", "customer_stats", "daily_sales")
	return ctx, b
}

// newServer builds the API over projections ps, serving their declared
// queries as the run command does: checked by projections.Check first. It
// is closed when the test ends.
func newServer(t *testing.T, cfg api.Config, ps []projections.Projection) *api.Server {
	t.Helper()
	queries, err := projections.Check(context.Background(), cfg.Pool, ps)
	require.NoError(t, err)
	cfg.Queries = queries
	srv, err := api.New(cfg)
	require.NoError(t, err)
	t.Cleanup(srv.Close)
	return srv
}

// order is a row of the orders read model, as its queries answer it.
type order struct {
	ID         string    `json:"id"`
	CustomerID string    `json:"customer_id"`
	Status     string    `json:"status"`
	Total      int64     `json:"total"`
	Paid       int64     `json:"paid"`
	PlacedAt   time.Time `json:"placed_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	Revision   int64     `json:"revision"`
}

// orderPage is a page of the orders list.
type orderPage struct {
	Items []order `json:"items"`
	Next  *string `json:"next"`
}

type response struct {
	*http.Response
	body string
}

func do(t *testing.T, method, url string, body string, headers ...string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return response{resp, string(raw)}
}

func get(t *testing.T, url string, headers ...string) response {
	return do(t, http.MethodGet, url, "", headers...)
}

var readEndpoints = []string{"/v1/orders/1", "/v1/orders", "/v1/orders?status=paid&customer_id=c1&limit=10", "/v1/customers/c1/stats", "/v1/sales/daily"}

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	require.Equal(t, http.StatusOK, get(t, b.url+"/healthz").StatusCode)
	r := get(t, b.url+"/readyz")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	b.sourceReady.Store(false)
	r = get(t, b.url+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, r.StatusCode)
	require.Contains(t, r.body, `"source":"not connected"`)
}

func TestReadEndpointsSayHowFreshTheyAre(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	for _, path := range readEndpoints {
		require.Eventually(t, func() bool {
			r := get(t, b.url+path)
			require.Equal(t, http.StatusOK, r.StatusCode, "%s: %s", path, r.body)
			h := r.Header
			return h.Get(api.HeaderPosition) == "2" && h.Get(api.HeaderHead) == "2" &&
				h.Get(api.HeaderLagMs) == "0" && h.Get(api.HeaderStatus) == projections.StatusLive
		}, 10*time.Second, 10*time.Millisecond, path)
	}
	var o order
	require.NoError(t, json.Unmarshal([]byte(get(t, b.url+"/v1/orders/1").body), &o))
	require.Equal(t, "paid", o.Status)
	require.Equal(t, int64(250), o.Paid)
	require.Equal(t, int64(1), o.Revision)
}

// TestLagWhileBehindThenZero: with the projector stopped, a new event makes
// every read model answer with lag above zero and its true status; a new
// projector catches up and the lag is exactly 0.
func TestLagWhileBehindThenZero(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	require.NoError(t, b.daemon.Stop(ctx))
	_, err := b.store.Append(ctx, "order-2", eventstore.NoStream, storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c2","items":[],"total":5}`))
	require.NoError(t, err)
	time.Sleep(30 * time.Millisecond) // so the unapplied event is measurably old
	for _, path := range readEndpoints {
		r := get(t, b.url+path)
		require.Equal(t, "3", r.Header.Get(api.HeaderHead), path)
		require.Equal(t, "2", r.Header.Get(api.HeaderPosition), path)
		require.NotEqual(t, "0", r.Header.Get(api.HeaderLagMs), path)
		require.Equal(t, projections.StatusStopped, r.Header.Get(api.HeaderStatus), path)
	}

	d2, err := projections.NewDaemon(b.pool, b.store, readmodel.All(), projections.Config{StatusInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d2.Start(ctx))
	defer d2.Stop(context.Background()) //nolint:errcheck
	hs := httptest.NewServer(newServer(t, api.Config{Pool: b.pool, Store: b.store, Daemon: d2}, readmodel.All()).Handler())
	defer hs.Close()
	for _, path := range readEndpoints {
		require.Eventually(t, func() bool {
			r := get(t, hs.URL+path)
			return r.Header.Get(api.HeaderLagMs) == "0" && r.Header.Get(api.HeaderPosition) == "3" && r.Header.Get(api.HeaderStatus) == projections.StatusLive
		}, 10*time.Second, 10*time.Millisecond, path)
	}
}

// TestAppendThenReadYourWrites appends through the API and reads back with
// the returned position, many times from concurrent clients: the read
// always sees the write.
func TestAppendThenReadYourWrites(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{Token: token})
	const clients, each = 8, 25
	var wg sync.WaitGroup
	failures := make(chan string, clients*each)
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				id := fmt.Sprintf("ryw-%d-%d", w, i)
				body := fmt.Sprintf(`{"type":"OrderPlaced","data":{"customer_id":"c-%d","items":[],"total":%d}}`, w, i)
				r := do(t, http.MethodPost, b.url+"/v1/streams/order-"+id, body, "Authorization", "Bearer "+token, api.HeaderExpectedRevision, "no-stream")
				if r.StatusCode != http.StatusCreated {
					failures <- fmt.Sprintf("append %s: %d %s", id, r.StatusCode, r.body)
					continue
				}
				var res api.AppendResponse
				if err := json.Unmarshal([]byte(r.body), &res); err != nil || res.NextRevision != 1 {
					failures <- fmt.Sprintf("append %s: %s", id, r.body)
					continue
				}
				read := get(t, b.url+"/v1/orders/"+id, api.HeaderMinPosition, res.Position, api.HeaderWaitMs, "10000")
				if read.StatusCode != http.StatusOK || !strings.Contains(read.body, `"customer_id":"c-`) {
					failures <- fmt.Sprintf("read %s at %s: %d %s", id, res.Position, read.StatusCode, read.body)
				}
				if pos := read.Header.Get(api.HeaderPosition); pos == "" {
					failures <- "no position header"
				}
			}
		}()
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
}

func TestReadYourWritesTimesOutWith503(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	start := time.Now()
	r := get(t, b.url+"/v1/orders/1?min_position=999999", api.HeaderWaitMs, "50")
	require.Equal(t, http.StatusServiceUnavailable, r.StatusCode, r.body)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Equal(t, "1", r.Header.Get("Retry-After"))
	require.Equal(t, "2", r.Header.Get(api.HeaderPosition))
	require.NotEmpty(t, r.Header.Get(api.HeaderStatus))
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
	require.Contains(t, r.body, "999999")
	// A position already applied answers at once.
	require.Equal(t, http.StatusOK, get(t, b.url+"/v1/orders/1", api.HeaderMinPosition, "2").StatusCode)
}

func TestShutdownReleasesWaitsWith503(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	done := make(chan response, 1)
	go func() {
		done <- get(t, b.url+"/v1/orders/1", api.HeaderMinPosition, "999999", api.HeaderWaitMs, "30000")
	}()
	time.Sleep(100 * time.Millisecond) // let it start waiting
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, b.srv.Shutdown(ctx))
	select {
	case r := <-done:
		require.Equal(t, http.StatusServiceUnavailable, r.StatusCode)
	case <-time.After(5 * time.Second):
		t.Fatal("the wait was not released")
	}
}

func TestBadInputGets4xxAndWritesNothing(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{MaxBody: 1024})
	count := func() (n int) {
		require.NoError(t, b.pool.QueryRow(ctx, `SELECT count(*) FROM sightline.event_log`).Scan(&n))
		return n
	}
	before := count()
	post := func(path, body string, headers ...string) response {
		return do(t, http.MethodPost, b.url+path, body, headers...)
	}
	for name, r := range map[string]response{
		"malformed JSON":      post("/v1/streams/order-x", `{"type":"A","data":`),
		"not an object":       post("/v1/streams/order-x", `[1,2]`),
		"empty body":          post("/v1/streams/order-x", ``),
		"no type":             post("/v1/streams/order-x", `{"data":{}}`),
		"no data":             post("/v1/streams/order-x", `{"type":"A"}`),
		"unknown field":       post("/v1/streams/order-x", `{"type":"A","data":{},"colour":"red"}`),
		"empty events":        post("/v1/streams/order-x", `{"events":[]}`),
		"one bad of two":      post("/v1/streams/order-x", `{"events":[{"type":"A","data":{}},{"data":{}}]}`),
		"bad event id":        post("/v1/streams/order-x", `{"event_id":"nope","type":"A","data":{}}`),
		"bad revision header": post("/v1/streams/order-x", `{"type":"A","data":{}}`, api.HeaderExpectedRevision, "-3"),
		"oversize body":       post("/v1/streams/order-x", `{"type":"A","data":{"pad":"`+strings.Repeat("x", 2048)+`"}}`),
		"space in stream":     post("/v1/streams/order%20x", `{"type":"A","data":{}}`),
		"system stream":       post("/v1/streams/$all", `{"type":"A","data":{}}`),
		"bad cursor":          get(t, b.url+"/v1/orders?cursor=!!!"),
		"bad status filter":   get(t, b.url+"/v1/orders?status=lost"),
		"bad limit":           get(t, b.url+"/v1/orders?limit=0"),
		"huge limit":          get(t, b.url+"/v1/orders?limit=100000"),
		"bad date":            get(t, b.url+"/v1/sales/daily?from=yesterday"),
		"bad min position":    get(t, b.url+"/v1/orders/1", api.HeaderMinPosition, "abc"),
		"bad wait":            get(t, b.url+"/v1/orders/1", api.HeaderMinPosition, "1", api.HeaderWaitMs, "soon"),
	} {
		require.True(t, r.StatusCode >= 400 && r.StatusCode < 500, "%s: %d %s", name, r.StatusCode, r.body)
		require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"), name)
		var p map[string]any
		require.NoError(t, json.Unmarshal([]byte(r.body), &p), name)
		require.NotEmpty(t, p["detail"], name)
	}
	require.Equal(t, before, count(), "bad input wrote nothing")
	require.Equal(t, http.StatusRequestEntityTooLarge, post("/v1/streams/order-x", `{"type":"A","data":{"pad":"`+strings.Repeat("x", 2048)+`"}}`).StatusCode)
	require.Equal(t, http.StatusNotFound, get(t, b.url+"/v1/orders/none").StatusCode)
}

func TestWritingRoutesNeedTheToken(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{Token: token})
	body := `{"type":"OrderPlaced","data":{"customer_id":"c","items":[],"total":1}}`
	for _, auth := range []string{"", "Bearer wrong", "Basic " + token, token} {
		r := do(t, http.MethodPost, b.url+"/v1/streams/order-auth", body, "Authorization", auth)
		require.Equal(t, http.StatusUnauthorized, r.StatusCode, "%q: %s", auth, r.body)
		require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
	}
	r := do(t, http.MethodPost, b.url+"/v1/streams/order-auth", body, "Authorization", "Bearer "+token)
	require.Equal(t, http.StatusCreated, r.StatusCode, r.body)
	require.Equal(t, http.StatusOK, get(t, b.url+"/v1/orders").StatusCode, "reads stay open")
	require.Equal(t, http.StatusNotFound, do(t, http.MethodPost, b.url+"/v1/nothing-here", body).StatusCode, "unknown paths are 404, not 401")
}

func TestAppendConflictsAndIdempotentRetries(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	body := `{"event_id":"5f0c7d42-9a3e-4c1b-8d2f-3a4b5c6d7e8f","type":"OrderPaid","data":{"amount":5}}`
	r := do(t, http.MethodPost, b.url+"/v1/streams/order-1", body, api.HeaderExpectedRevision, "0")
	require.Equal(t, http.StatusConflict, r.StatusCode, r.body)
	require.Contains(t, r.body, "stream is at 1")
	first := do(t, http.MethodPost, b.url+"/v1/streams/order-1", body, api.HeaderExpectedRevision, "1")
	require.Equal(t, http.StatusCreated, first.StatusCode, first.body)
	again := do(t, http.MethodPost, b.url+"/v1/streams/order-1", body, api.HeaderExpectedRevision, "1")
	require.Equal(t, http.StatusCreated, again.StatusCode, "a retry with the same event ID returns the first result")
	require.JSONEq(t, first.body, again.body)
}

func TestOrdersPagination(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	for i := range 7 {
		_, err := b.store.Append(ctx, fmt.Sprintf("order-p%d", i), eventstore.NoStream,
			storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"pager","items":[],"total":1}`))
		require.NoError(t, err)
	}
	readmodeltest.WaitCaughtUp(t, ctx, b.pool, "orders")
	var ids []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10)
		r := get(t, b.url+"/v1/orders?customer_id=pager&limit=3&cursor="+cursor)
		require.Equal(t, http.StatusOK, r.StatusCode, r.body)
		var page orderPage
		require.NoError(t, json.NewDecoder(bytes.NewReader([]byte(r.body))).Decode(&page))
		for _, o := range page.Items {
			ids = append(ids, o.ID)
		}
		if page.Next == nil {
			require.Empty(t, r.Header.Get("Link"), "the last page links to none")
			break
		}
		require.Contains(t, r.Header.Get("Link"), "cursor="+*page.Next)
		cursor = *page.Next
	}
	require.Equal(t, []string{"p0", "p1", "p2", "p3", "p4", "p5", "p6"}, ids)
}

// TestOrdersFilters: each filter alone, both, and none choose exactly the
// orders they name.
func TestOrdersFilters(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	for i, o := range []struct{ customer, status string }{
		{"fa", "placed"}, {"fa", "paid"}, {"fb", "paid"}, {"fb", "placed"}, {"fb", "paid"},
	} {
		events := []eventstore.EventData{storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"`+o.customer+`","items":[],"total":5}`)}
		if o.status == "paid" {
			events = append(events, storetest.Event(readmodel.TypeOrderPaid, `{"amount":5}`))
		}
		_, err := b.store.Append(ctx, fmt.Sprintf("order-f%d", i), eventstore.NoStream, events...)
		require.NoError(t, err)
	}
	readmodeltest.WaitCaughtUp(t, ctx, b.pool, "orders")
	page := func(query string) orderPage {
		r := get(t, b.url+"/v1/orders?"+query)
		require.Equal(t, http.StatusOK, r.StatusCode, r.body)
		var page orderPage
		require.NoError(t, json.Unmarshal([]byte(r.body), &page))
		return page
	}
	list := func(query string) []string {
		var ids []string
		for _, o := range page(query).Items {
			if strings.HasPrefix(o.ID, "f") {
				ids = append(ids, o.ID)
			}
		}
		return ids
	}
	require.Equal(t, []string{"f0", "f1", "f2", "f3", "f4"}, list(""))
	require.Equal(t, []string{"f1", "f2", "f4"}, list("status=paid"))
	require.Equal(t, []string{"f2", "f3", "f4"}, list("customer_id=fb"))
	require.Equal(t, []string{"f2", "f4"}, list("status=paid&customer_id=fb"))
	first := page("status=paid&customer_id=fb&limit=1")
	require.Equal(t, "f2", first.Items[0].ID)
	require.NotNil(t, first.Next)
	require.Equal(t, []string{"f4"}, list("status=paid&customer_id=fb&cursor="+*first.Next))
	require.Empty(t, list("status=shipped&customer_id=fa"))
}

func TestProjectionStatus(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	r := get(t, b.url+"/v1/projections")
	require.Equal(t, http.StatusOK, r.StatusCode)
	for _, name := range []string{"orders", "customer_stats", "daily_sales"} {
		require.Contains(t, r.body, `"name":"`+name+`"`)
	}
	r = get(t, b.url+"/v1/projections/nope")
	require.Equal(t, http.StatusNotFound, r.StatusCode)
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
}

func TestMetricsAfterTraffic(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{})
	get(t, b.url+"/v1/orders/1")
	wants := []string{
		`sightline_events_applied_total{projection="orders"} 2`,
		`sightline_events_applied_total{projection="customer_stats"} 2`,
		`sightline_events_skipped_total{projection="orders",reason="duplicate"} 0`,
		`sightline_events_skipped_total{projection="orders",reason="gap_unfilled"} 0`,
		`sightline_events_skipped_total{projection="orders",reason="deleted_link"} 0`,
		`sightline_gaps_repaired_total{projection="orders"} 0`,
		`sightline_batch_duration_seconds_count{projection="orders"}`,
		`sightline_batch_events_count{projection="orders"}`,
		`sightline_end_to_end_seconds_count{projection="orders"} 2`,
		`sightline_projection_lag_seconds{projection="orders"} 0`,
		`sightline_projection_caught_up{projection="orders"} 1`,
		`sightline_parked_events{projection="orders"} 0`,
		`sightline_rebuild_progress_ratio{projection="orders"} 1`, // no rebuild running
		`sightline_source_reconnects_total{source="postgres"} 0`,
		`sightline_http_requests_total{code="200",host=`,
		`sightline_http_request_duration_seconds_bucket{`,
	}
	// Lag, caught-up and parked gauges follow the status tick, not the commit.
	var r response
	assert.Eventually(t, func() bool {
		r = get(t, b.url+"/metrics")
		for _, want := range wants {
			if !strings.Contains(r.body, want) {
				return false
			}
		}
		return true
	}, 5*time.Second, 20*time.Millisecond)
	require.Equal(t, http.StatusOK, r.StatusCode)
	for _, want := range wants {
		require.True(t, strings.Contains(r.body, want), "missing %q in\n%s", want, r.body)
	}
	// The request durations resolve the queries' 5 ms target, below the
	// default buckets' first bound.
	for _, le := range []string{"0.00025", "0.004", "8.192"} {
		require.Regexp(t, `sightline_http_request_duration_seconds_bucket\{[^}]*url="/v1/orders/:id",le="`+regexp.QuoteMeta(le)+`"\} [01]\n`, r.body)
	}
}

func TestRebuildRoute(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{Token: token})
	auth := []string{"Authorization", "Bearer " + token}
	require.Equal(t, http.StatusUnauthorized, do(t, http.MethodPost, b.url+"/v1/projections/orders/rebuild", "").StatusCode)
	require.Equal(t, http.StatusNotFound, do(t, http.MethodPost, b.url+"/v1/projections/nope/rebuild", "", auth...).StatusCode)

	// Another process builds orders, and gets nowhere.
	elsewhere, stopElsewhere := context.WithCancel(ctx)
	built := make(chan error, 1)
	go func() {
		built <- projections.RunRebuild(elsewhere, b.pool, storetest.Silent{Store: b.store}, readmodel.Orders{}, projections.Config{}, nil)
	}()
	require.Eventually(t, func() bool {
		st := b.daemon.Runner("orders").Status().Rebuild
		return st != nil && st.Building && !st.Here
	}, 10*time.Second, 5*time.Millisecond)
	r := do(t, http.MethodPost, b.url+"/v1/projections/orders/rebuild", "", auth...)
	require.Equal(t, http.StatusConflict, r.StatusCode, r.body)
	require.Contains(t, r.body, "generation 2 (version 1) of orders is being built")
	var st api.ProjectionStatus
	require.NoError(t, json.Unmarshal([]byte(get(t, b.url+"/v1/projections/orders").body), &st))
	require.NotNil(t, st.Rebuild)
	require.Equal(t, 2, st.Rebuild.Generation)
	require.Equal(t, projections.StatusLive, st.Status, "the active generation serves and projects meanwhile")
	require.Equal(t, projections.StatusLive, get(t, b.url+"/v1/orders/1").Header.Get(api.HeaderStatus))

	// That process stops; this one's projector takes the build up by itself
	// within a status tick, and swaps it in.
	stopElsewhere()
	require.ErrorIs(t, <-built, context.Canceled)
	require.Eventually(t, func() bool {
		var st api.ProjectionStatus
		return json.Unmarshal([]byte(get(t, b.url+"/v1/projections/orders").body), &st) == nil && st.Rebuild == nil && st.Status == projections.StatusLive
	}, 20*time.Second, 10*time.Millisecond)
	var gen int
	require.NoError(t, b.pool.QueryRow(ctx, `SELECT generation FROM sightline.projections WHERE name = 'orders'`).Scan(&gen))
	require.Equal(t, 2, gen)
	r = get(t, b.url+"/v1/orders/1")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Contains(t, r.body, `"paid":250`)

	// A new request builds generation 3.
	r = do(t, http.MethodPost, b.url+"/v1/projections/orders/rebuild", "", auth...)
	require.Equal(t, http.StatusAccepted, r.StatusCode, r.body)
	require.Equal(t, "/v1/projections/orders", r.Header.Get("Location"))
	var rb api.Rebuild
	require.NoError(t, json.Unmarshal([]byte(r.body), &rb))
	require.Equal(t, api.Rebuild{Projection: "orders", Generation: 3, Version: 1, Reason: projections.ReasonRequested, Created: true, Status: "/v1/projections/orders"}, rb)
}

type ordersV2 struct{ readmodel.Orders }

func (ordersV2) Version() int { return 2 }

// TestStatusHeaderDuringRebuilds: while a requested rebuild is built beside
// a projection that keeps projecting, its reads say live; while a newer
// version is built and the old tables serve unprojected, they say
// rebuilding; other projections are unaffected.
func TestStatusHeaderDuringRebuilds(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{})
	require.NoError(t, b.daemon.Stop(ctx))

	// Code with orders at version 2, on a store whose replays never end.
	reg := prometheus.NewRegistry()
	d, err := projections.NewDaemon(b.pool, storetest.Silent{Store: b.store}, []projections.Projection{ordersV2{}, readmodel.CustomerStats{}},
		projections.Config{Metrics: projections.NewMetrics(reg), StatusInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { _ = d.Stop(context.Background()) })
	hs := httptest.NewServer(newServer(t, api.Config{Pool: b.pool, Store: b.store, Daemon: d, Gatherer: reg}, []projections.Projection{ordersV2{}, readmodel.CustomerStats{}}).Handler())
	t.Cleanup(hs.Close)

	r := get(t, hs.URL+"/v1/orders/1")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Equal(t, projections.StatusRebuilding, r.Header.Get(api.HeaderStatus))
	require.Contains(t, r.body, `"paid":250`, "version 1's tables serve")
	require.NotEqual(t, projections.StatusRebuilding, get(t, hs.URL+"/v1/customers/c1/stats").Header.Get(api.HeaderStatus))
	var st api.ProjectionStatus
	require.Eventually(t, func() bool { // the rebuild shows from the first status tick
		st = api.ProjectionStatus{}
		return json.Unmarshal([]byte(get(t, hs.URL+"/v1/projections/orders").body), &st) == nil && st.Rebuild != nil
	}, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, 1, st.Version, "the version served")
	require.Equal(t, 2, st.Rebuild.Version)
	require.Equal(t, projections.ReasonVersion, st.Rebuild.Reason)
}
