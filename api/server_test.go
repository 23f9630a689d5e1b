package api_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/testdb"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

type bundle struct {
	url         string
	sourceReady atomic.Bool
	store       *pgstore.Store
	daemon      *projections.Daemon
}

func setup(t *testing.T) (context.Context, *bundle) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	db := testdb.New(t)
	store, err := pgstore.New(db.Pool, pgstore.Config{})
	require.NoError(t, err)
	t.Cleanup(store.Close)
	reg := prometheus.NewRegistry()
	d, err := projections.NewDaemon(db.Pool, store, readmodel.All(), projections.Config{Metrics: projections.NewMetrics(reg), StatusInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, d.Start(ctx))
	t.Cleanup(func() { require.NoError(t, d.Stop(context.Background())) })
	b := &bundle{store: store, daemon: d}
	b.sourceReady.Store(true)
	srv := api.New(api.Config{Pool: db.Pool, Daemon: d, SourceReady: b.sourceReady.Load, Gatherer: reg})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	b.url = hs.URL
	_, err = store.Append(ctx, "order-1", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[{"sku":"A","qty":1,"price":250}],"total":250}`),
		storetest.Event(readmodel.TypeOrderPaid, `{"amount":250}`))
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, "orders", "customer_stats", "daily_sales")
	return ctx, b
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	resp, _ := get(t, b.url+"/healthz")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	resp, body := get(t, b.url+"/readyz")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)

	b.sourceReady.Store(false)
	resp, body = get(t, b.url+"/readyz")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Contains(t, body, `"source":"not connected"`)
}

func TestProjectionStatus(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	require.Eventually(t, func() bool {
		resp, body := get(t, b.url+"/v1/projections/orders")
		if resp.StatusCode != http.StatusOK {
			return false
		}
		var st api.ProjectionStatus
		require.NoError(t, json.Unmarshal([]byte(body), &st))
		return st.Status == projections.StatusLive && st.LagMs == 0 && st.Position == st.Head && st.Position == "2"
	}, 10*time.Second, 20*time.Millisecond)

	resp, body := get(t, b.url+"/v1/projections")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for _, name := range []string{"orders", "customer_stats", "daily_sales"} {
		require.Contains(t, body, `"name":"`+name+`"`)
	}

	resp, body = get(t, b.url+"/v1/projections/nope")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, "application/problem+json", resp.Header.Get("Content-Type"))
	var problem map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &problem))
	require.Equal(t, float64(404), problem["status"])
	require.Contains(t, problem["detail"], "nope")
}

func TestMetricsAfterTraffic(t *testing.T) {
	t.Parallel()
	_, b := setup(t)
	resp, body := get(t, b.url+"/metrics")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for _, want := range []string{
		`sightline_events_applied_total{projection="orders"} 2`,
		`sightline_events_applied_total{projection="customer_stats"} 2`,
		`sightline_events_skipped_total{projection="orders",reason="duplicate"} 0`,
		`sightline_gaps_repaired_total{projection="orders"} 0`,
		`sightline_batch_duration_seconds_count{projection="orders"}`,
		`sightline_end_to_end_seconds_count{projection="orders"} 2`,
		`sightline_projection_lag_seconds{projection="orders"}`,
		`sightline_projection_caught_up{projection="orders"}`,
		`sightline_parked_events{projection="orders"} 0`,
		`sightline_rebuild_progress_ratio{projection="orders"} 0`,
		`sightline_source_reconnects_total{source="postgres"} 0`,
	} {
		require.True(t, strings.Contains(body, want), "missing %q in\n%s", want, body)
	}
}
