package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
)

const readToken = "read-token-for-tests"

// TestReadTokenGuardsReadsAndMetrics: with a read token, every read and
// /metrics need it (or the API token); the probes and the document stay
// open; the read token writes nothing.
func TestReadTokenGuardsReadsAndMetrics(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{Token: token, ReadToken: readToken})
	reads := append([]string{"/metrics", "/v1/projections", "/v1/projections/orders", "/v1/projections/orders/queries",
		"/v1/projections/orders/queries/by_id?id=1"}, readEndpoints...)
	for _, path := range reads {
		for _, auth := range []string{"", "Bearer wrong", "Basic " + readToken, readToken} {
			r := get(t, b.url+path, "Authorization", auth)
			require.Equal(t, http.StatusUnauthorized, r.StatusCode, "%s with %q: %s", path, auth, r.body)
			require.Equal(t, `Bearer realm="sightline"`, r.Header.Get("WWW-Authenticate"))
		}
		for _, tok := range []string{readToken, token} {
			r := get(t, b.url+path, "Authorization", "Bearer "+tok)
			require.Equal(t, http.StatusOK, r.StatusCode, "%s: %s", path, r.body)
		}
	}
	for _, path := range []string{"/healthz", "/livez", "/readyz", "/openapi.json"} {
		require.Equal(t, http.StatusOK, get(t, b.url+path).StatusCode, path)
	}
	body := `{"type":"OrderPlaced","data":{"customer_id":"c","items":[],"total":1}}`
	r := do(t, http.MethodPost, b.url+"/v1/streams/order-auth", body, "Authorization", "Bearer "+readToken)
	require.Equal(t, http.StatusUnauthorized, r.StatusCode, "the read token does not write")
	r = get(t, b.url+"/v1/projections/orders/parked", "Authorization", "Bearer "+readToken)
	require.Equal(t, http.StatusUnauthorized, r.StatusCode, "dead letters are admin")

	// The document says which token each route takes.
	var doc struct {
		Paths map[string]map[string]struct {
			Security []map[string][]string `json:"security"`
		} `json:"paths"`
	}
	require.NoError(t, json.Unmarshal([]byte(get(t, b.url+"/openapi.json").body), &doc))
	require.Equal(t, []map[string][]string{{"readToken": {}}, {"token": {}}}, doc.Paths["/v1/projections"]["get"].Security)
	require.Equal(t, []map[string][]string{{"readToken": {}}, {"token": {}}}, doc.Paths["/v1/orders"]["get"].Security)
	require.Equal(t, []map[string][]string{{"token": {}}}, doc.Paths["/v1/projections/{name}/parked"]["get"].Security)
	require.Nil(t, doc.Paths["/healthz"]["get"].Security)
}

// A read token alone would guard the reads and leave the writes open.
func TestReadTokenNeedsAnAPIToken(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	_, err := api.New(api.Config{Pool: db.Pool, ReadToken: readToken, Gatherer: prometheus.NewRegistry()})
	require.ErrorContains(t, err, "a read token without an API token")
}

// One request waiting for a position and then a revision holds one slot.
func TestOneRequestHoldsOneWaitSlot(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{Limits: api.Limits{MaxWaits: 1}})
	done := make(chan response, 1)
	go func() {
		done <- get(t, b.url+"/v1/orders/9?min_revision=0", api.HeaderMinPosition, "3", api.HeaderWaitMs, "10000")
	}()
	time.Sleep(200 * time.Millisecond) // waiting for position 3
	_, err := b.store.Append(ctx, "order-x", eventstore.Any, storetest.Event("OrderPlaced", `{"customer_id":"c","items":[],"total":1}`))
	require.NoError(t, err) // position 3 is not order-9's: the request waits on for its revision
	time.Sleep(200 * time.Millisecond)
	_, err = b.store.Append(ctx, "order-9", eventstore.NoStream, storetest.Event("OrderPlaced", `{"customer_id":"c","items":[],"total":9}`))
	require.NoError(t, err)
	r := <-done
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Contains(t, r.body, `"id":"9"`)
}

// TestWaitsAreCapped: past MaxWaits waiting requests, one more that would
// wait is answered 503 at once with Retry-After; one whose write is
// applied already is answered, and so is the next once a slot frees.
func TestWaitsAreCapped(t *testing.T) {
	t.Parallel()
	_, b := setup(t, api.Config{Limits: api.Limits{MaxWaits: 2}})
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			r := get(t, b.url+"/v1/orders/1", api.HeaderMinPosition, "999999", api.HeaderWaitMs, "1500")
			require.Equal(t, http.StatusServiceUnavailable, r.StatusCode, r.body)
			require.Contains(t, r.body, "has not applied position")
		})
	}
	require.Eventually(t, func() bool {
		r := get(t, b.url+"/metrics")
		return strings.Contains(r.body, "sightline_http_waits 2")
	}, 5*time.Second, 10*time.Millisecond)
	start := time.Now()
	r := get(t, b.url+"/v1/orders/1", api.HeaderMinPosition, "999999", api.HeaderWaitMs, "1500")
	require.Equal(t, http.StatusServiceUnavailable, r.StatusCode, r.body)
	require.Less(t, time.Since(start), time.Second, "refused at once, not after a wait")
	require.Contains(t, r.body, "Too many waits")
	require.Equal(t, "1", r.Header.Get("Retry-After"))
	require.NotEmpty(t, r.Header.Get(api.HeaderPosition))
	r = get(t, b.url+"/v1/orders/1?min_revision=0", api.HeaderMinPosition, "2")
	require.Equal(t, http.StatusOK, r.StatusCode, "applied already: no wait, no slot: %s", r.body)
	wg.Wait()
	require.Contains(t, get(t, b.url+"/metrics").body, "sightline_http_waits_refused_total 1")
	r = get(t, b.url+"/v1/orders/1", api.HeaderMinPosition, "999999", api.HeaderWaitMs, "10")
	require.Contains(t, r.body, "has not applied position", "the slots are free again")
}

// TestServeBoundsSlowClients: a client that never finishes its headers
// is cut off after the read-header timeout.
func TestServeBoundsSlowClients(t *testing.T) {
	t.Parallel()
	db := testdb.New(t)
	srv, err := api.New(api.Config{Addr: "127.0.0.1:0", Pool: db.Pool, Gatherer: prometheus.NewRegistry(),
		Limits: api.Limits{ReadHeaderTimeout: 200 * time.Millisecond}})
	require.NoError(t, err)
	require.NoError(t, srv.Listen())
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		require.NoError(t, <-served)
	})

	conn, err := net.Dial("tcp", srv.Addr())
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")) // and never the blank line
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	start := time.Now()
	_, err = bufio.NewReader(conn).ReadString('\n')
	require.Error(t, err, "the server closed the connection")
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "closed by the server, not by our deadline: %v", err)
	require.Less(t, time.Since(start), 3*time.Second)
}

func TestLimitsAreChecked(t *testing.T) {
	require.ErrorContains(t, api.Limits{WriteTimeout: 10 * time.Second}.Check(0), "must exceed the longest read-your-writes wait and a query's timeout together, 35s")
	require.ErrorContains(t, api.Limits{WriteTimeout: 40 * time.Second}.Check(20*time.Second), "together, 50s")
	require.NoError(t, api.Limits{WriteTimeout: 40 * time.Second}.Check(0))
	require.ErrorContains(t, api.Limits{ReadHeaderTimeout: time.Minute, ReadTimeout: time.Second}.Check(0), "exceeds the read timeout")
	require.ErrorContains(t, api.Limits{MaxWaits: -1}.Check(0), "negative")
	require.NoError(t, api.Limits{}.Check(0))
}

// ailing fails every batch, while ill is set, with an error no event is
// to blame for.
type ailing struct{ ill *atomic.Bool }

func (ailing) Name() string     { return "ailing" }
func (ailing) Version() int     { return 1 }
func (ailing) Tables() []string { return nil }
func (ailing) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"order-"}}
}
func (ailing) Setup(context.Context, pgx.Tx, string) error { return nil }
func (p ailing) Apply(context.Context, *projections.Batch) error {
	if p.ill.Load() {
		return &pgconn.PgError{Code: "40001", Message: "simulated serialization failure"}
	}
	return nil
}

// TestReadinessFollowsTheProjections: /readyz fails while a projection is
// failed, naming it and why, or lags beyond ReadyMaxLag; /livez stays up.
func TestReadinessFollowsTheProjections(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		failAfter, maxLag time.Duration
		want              string
	}{
		"failed":     {failAfter: 200 * time.Millisecond, want: `"projection ailing":"failed: batches failing for`},
		"lags":       {failAfter: time.Hour, maxLag: 300 * time.Millisecond, want: `"projection ailing":"lags `},
		"lag is off": {failAfter: time.Hour},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			db := testdb.New(t)
			store, err := pgstore.New(db.Pool, pgstore.Config{})
			require.NoError(t, err)
			t.Cleanup(store.Close)
			var ill atomic.Bool
			ill.Store(true)
			ps := []projections.Projection{ailing{&ill}}
			d, err := projections.NewDaemon(db.Pool, store, ps, projections.Config{StatusInterval: 20 * time.Millisecond, FailAfter: c.failAfter})
			require.NoError(t, err)
			require.NoError(t, d.Start(ctx))
			t.Cleanup(func() { _ = d.Stop(context.Background()) })
			srv := newServer(t, api.Config{Pool: db.Pool, Store: store, Daemon: d, Gatherer: prometheus.NewRegistry(), ReadyMaxLag: c.maxLag}, ps)
			h := srv.Handler()
			probe := func(path string) (int, string) {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
				return rec.Code, rec.Body.String()
			}
			_, err = store.Append(ctx, "order-1", eventstore.Any, storetest.Event("OrderPlaced", `{}`))
			require.NoError(t, err)
			if c.want == "" {
				time.Sleep(500 * time.Millisecond)
				code, body := probe("/readyz")
				require.Equal(t, http.StatusOK, code, "stalled but not failed, and lag does not count: %s", body)
				return
			}
			require.Eventually(t, func() bool {
				code, body := probe("/readyz")
				return code == http.StatusServiceUnavailable && strings.Contains(body, c.want)
			}, 10*time.Second, 10*time.Millisecond)
			code, _ := probe("/livez")
			require.Equal(t, http.StatusOK, code)
			ill.Store(false)
			require.Eventually(t, func() bool { code, _ := probe("/readyz"); return code == http.StatusOK }, 20*time.Second, 10*time.Millisecond)
		})
	}
}
