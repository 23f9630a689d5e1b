package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/promtest"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// prometheusOwn are the series Prometheus makes itself, not sightline.
var prometheusOwn = map[string]bool{"up": true}

// targetLabels are the labels Prometheus gives every series of a target.
var targetLabels = map[string]bool{"job": true, "instance": true}

// TestMetricsServeTheDashboardAndAlerts runs sightline with the example
// projections, applies orders and a payment that parks, and reads
// /metrics: promtool accepts it, and every metric that the Grafana
// dashboard and the alert rules select is on it, with the labels they
// match on; the dashboard follows its projection variable in every
// selector of a metric that has a projection label.
func TestMetricsServeTheDashboardAndAlerts(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 2*time.Minute)
	order := func(id string) {
		_, err := store.Append(ctx, "order-"+id, eventstore.NoStream,
			storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[{"sku":"A","qty":1,"price":100}],"total":100}`),
			storetest.Event(readmodel.TypeOrderPaid, `{"amount":100}`))
		require.NoError(t, err)
	}
	order("before")
	p := start(t, "run", "--examples", "--database-url", db.URL, "--http-addr", "127.0.0.1:0")
	base := "http://" + addrOf(t, p)
	order("live")
	_, err := store.Append(ctx, "order-poison", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c2","items":[],"total":100}`),
		storetest.Event(readmodel.TypeOrderPaid, `{"amount":{"cents":100}}`)) // parks: an amount is a number
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	get := func(path string) ([]byte, error) {
		resp, err := http.Get(base + path)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %s: %s", path, resp.Status, body)
		}
		return body, err
	}
	_, err = get("/v1/orders/live") // a sample for the HTTP histograms
	require.NoError(t, err)

	// The parked gauge comes with a status tick.
	var page []byte
	var families map[string]*dto.MetricFamily
	metric := func(name, projection string) *dto.Metric {
		for _, m := range families[name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "projection" && l.GetValue() == projection {
					return m
				}
			}
		}
		return nil
	}
	require.Eventually(t, func() bool {
		if page, err = get("/metrics"); err != nil {
			return false
		}
		if families, err = promtest.Families(bytes.NewReader(page)); err != nil {
			return false
		}
		return metric("sightline_parked_events", "orders").GetGauge().GetValue() > 0 &&
			metric("sightline_end_to_end_seconds", "orders").GetHistogram().GetSampleCount() > 0 &&
			len(families["sightline_http_request_duration_seconds"].GetMetric()) > 0
	}, 30*time.Second, 100*time.Millisecond, "parked events and end-to-end samples on /metrics")
	require.NoError(t, err)
	promtest.Run(t, bytes.NewReader(page), "check", "metrics")

	deploy := filepath.Join("..", "..", "deploy")
	var exprs []struct{ where, expr string }
	raw, err := os.ReadFile(filepath.Join(deploy, "grafana", "dashboards", "sightline.json"))
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	require.NoError(t, json.Unmarshal(raw, &dash))
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, struct{ where, expr string }{"dashboard panel " + p.Title, tg.Expr})
		}
	}
	raw, err = os.ReadFile(filepath.Join(deploy, "prometheus", "alerts.yml"))
	require.NoError(t, err)
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	require.NoError(t, yaml.Unmarshal(raw, &rules))
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, struct{ where, expr string }{"alert " + r.Alert, r.Expr})
		}
	}
	require.NotEmpty(t, exprs)

	var used []string
	for _, e := range exprs {
		sels, err := promtest.Selectors(e.expr)
		require.NoError(t, err, e.where)
		for _, s := range sels {
			if prometheusOwn[s.Metric] {
				continue
			}
			f, ok := promtest.Family(families, s.Metric)
			require.True(t, ok, "%s selects %s, which /metrics does not have", e.where, s.Metric)
			labels := promtest.Labels(f)
			for _, m := range s.Matchers {
				require.True(t, labels[m.Label] || targetLabels[m.Label], "%s: %s has no label %s", e.where, s.Metric, m.Label)
			}
			if labels["projection"] && strings.HasPrefix(e.where, "dashboard") {
				require.True(t, s.Has("projection", "=~", "$projection"), "%s: %s follows the projection variable", e.where, s.Metric)
			}
			if !slices.Contains(used, s.Metric) {
				used = append(used, s.Metric)
			}
		}
	}
	slices.Sort(used)
	t.Logf("metrics the dashboard and the alerts use: %v", used)
}
