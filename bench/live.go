package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/projections/declarative"
	"github.com/sightlinehq/sightline/readmodel"
)

// liveRate is the steady append rate of SPEC §7's live target, from
// liveWriters concurrent writers of single events (each append waits for
// its position, a few milliseconds, so 8 writers fall short of the rate).
const (
	liveRate    = 2000
	liveWriters = 16
)

// benchLive runs the example projections, order_activity and the API in this process on a
// fresh database, appends order traffic at a steady 2 000 events/s from 16
// writers, and measures event written → visible, from the end-to-end
// histogram and from a probe that appends an order and reads it back with
// Projection-Min-Position; then, with the traffic going on, the example
// endpoints' latency under 1 000 requests/s, as vegeta and as the API's
// own histogram time it, and the same rate of bare reads by primary key
// (readOrders), the API idle. Before the traffic, it measures the same
// query load and the queries' floor (measureFloor), as references.
func benchLive(ctx context.Context, cfg config, rep *report) error {
	db, err := openDatabase(ctx, cfg, "sightline_bench_live", true)
	if err != nil {
		return err
	}
	defer db.Close()
	pool, store := db.pool, db.store
	d, ps, reg, err := startLive(ctx, cfg, pool, store)
	if err != nil {
		return err
	}
	defer d.Stop(context.WithoutCancel(ctx)) //nolint:errcheck // the bench is over
	queries, err := projections.Check(ctx, pool, ps)
	if err != nil {
		return err
	}
	srv, err := api.New(api.Config{Addr: "127.0.0.1:0", Pool: pool, Store: store, Daemon: d, Queries: queries, Registerer: reg, Gatherer: reg, Logger: cfg.logger})
	if err != nil {
		return err
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	go srv.Serve()                                 //nolint:errcheck // ends with Shutdown
	defer srv.Shutdown(context.WithoutCancel(ctx)) //nolint:errcheck // the bench is over
	base := "http://" + srv.Addr()
	if err := waitCaughtUp(ctx, d, store); err != nil {
		return err
	}
	// The reference for the queries: the same load before the traffic, on
	// a store vacuumed and analyzed so that autovacuum has nothing to do.
	if _, err := pool.Exec(ctx, `VACUUM (ANALYZE)`); err != nil {
		return err
	}
	orders, customers, err := readModelIDs(ctx, pool)
	if err != nil {
		return err
	}
	targets := queryTargets(base, orders, customers)
	var idle queryLoad
	var attackErr error
	idleCPU, err := measureCPU(func() { idle, attackErr = attack(reg, targets, cfg.phase) })
	if err = cmp.Or(attackErr, err); err != nil {
		return err
	}

	// One order by id, three ways, and PostgreSQL's bare read, nothing
	// else going on: the comparison with the least noise.
	idleByID, err := compareByID(ctx, pool, store, d.Runner("orders"), base, cfg.phase)
	if err != nil {
		return fmt.Errorf("by id: %w", err)
	}
	idleBare, err := readOrders(ctx, pool, orders, cfg.phase)
	if err != nil {
		return fmt.Errorf("bare reads: %w", err)
	}

	// The floor: PostgreSQL alone at the traffic's write rate.
	pgAlone, err := measureFloor(ctx, pool, orders, cfg.phase)
	if err != nil {
		return fmt.Errorf("floor: %w", err)
	}

	traffic, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	var appended atomic.Int64
	trafficDone := make(chan error, 1)
	go func() {
		_, err := simulate.Run(traffic, store, simulate.Config{Orders: 200_000, Customers: 10_000, Writers: liveWriters, Rate: liveRate, Seed: 2,
			Progress: func(n int64) { appended.Store(n) }})
		trafficDone <- err
	}()
	time.Sleep(warmUp) // the traffic settles

	// Phase 1: latency of the live projections.
	before, err := endToEnd(reg, "orders")
	if err != nil {
		return err
	}
	activityBefore, err := endToEnd(reg, activityName)
	if err != nil {
		return err
	}
	startCount, start := appended.Load(), time.Now()
	var probes []time.Duration
	var probeErr error
	liveCPU, err := measureCPU(func() { probes, probeErr = probe(ctx, store, base, cfg.phase) })
	if err = cmp.Or(probeErr, err); err != nil {
		return err
	}
	if len(probes) == 0 {
		return errors.New("no probe answered")
	}
	rate := float64(appended.Load()-startCount) / time.Since(start).Seconds()
	after, err := endToEnd(reg, "orders")
	if err != nil {
		return err
	}
	activityAfter, err := endToEnd(reg, activityName)
	if err != nil {
		return err
	}
	// The histogram has a bound at 50 ms: the share of events visible
	// within it is counted, and says whether the p99 is under it, where
	// the interpolated p99 is only an estimate inside its bucket.
	visible := func(h histogram) (string, bool) {
		p50, p99, maxBound := h.quantile(0.50), h.quantile(0.99), h.maxBound()
		within, ok := h.within(50 * time.Millisecond)
		return fmt.Sprintf("%s / %s / ≤ %s; %.2f%% within 50 ms", ms(p50), ms(p99), ms(maxBound), 100*within), ok && within >= 0.99 && rate >= 0.95*liveRate
	}
	got, met := visible(after.minus(before))
	rep.add(fmt.Sprintf("live, orders: event written → visible, end-to-end histogram (p50 and p99 interpolated in its buckets, the share within 50 ms counted at its bound), %.0f events/s appended for %s (p50 / p99 / max bucket; %s)", rate, cfg.phase, liveCPU),
		got, "", "", "p99 < 50 ms at 2 000 events/s", met)
	got, met = visible(activityAfter.minus(activityBefore))
	rep.add(fmt.Sprintf("live, %s (YAML): event written → visible, the same histogram over the same phase", activityName),
		got, "", "", "p99 < 50 ms at 2 000 events/s", met)
	rep.add(fmt.Sprintf("live, orders: append sent → read back with Projection-Min-Position, %d probes (p50 / p99 / max)", len(probes)),
		fmt.Sprintf("%s / %s / %s", ms(pct(probes, 0.50)), ms(pct(probes, 0.99)), ms(probes[len(probes)-1])), "", "", "p99 < 50 ms", pct(probes, 0.99) < 50*time.Millisecond)

	// Phase 2: queries under load, with the traffic still going.
	var busy queryLoad
	busyCPU, err := measureCPU(func() { busy, attackErr = attack(reg, targets, cfg.phase) })
	if err = cmp.Or(attackErr, err); err != nil {
		return err
	}

	// Phase 2b: one order by id, declared, hand-written, and waiting for a
	// revision already applied, interleaved in one load, the traffic going.
	byID, err := compareByID(ctx, pool, store, d.Runner("orders"), base, cfg.phase)
	if err != nil {
		return fmt.Errorf("by id: %w", err)
	}

	// Phase 3: the same rate of bare reads, the API idle, with the traffic
	// still going.
	pgBusy, err := readOrders(ctx, pool, orders, cfg.phase)
	if err != nil {
		return fmt.Errorf("reads under the traffic: %w", err)
	}
	stopTraffic()
	if err := <-trafficDone; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	rep.add(fmt.Sprintf("queries: GET orders, order lists, customer stats, daily sales at %.0f requests/s for %s while projecting the traffic above, timed by the load generator in the bench's process (p50 / p99 / max; %.1f%%, reference %.1f%% succeeded; %s); reference: the same before the traffic (%s)", busy.client.Rate, cfg.phase, 100*busy.client.Success, 100*idle.client.Success, busyCPU, idleCPU),
		fmt.Sprintf("%s / %s / %s", ms(busy.client.Latencies.P50), ms(busy.client.Latencies.P99), ms(busy.client.Latencies.Max)),
		fmt.Sprintf("%s / %s / %s", ms(idle.client.Latencies.P50), ms(idle.client.Latencies.P99), ms(idle.client.Latencies.Max)),
		fmt.Sprintf("p99 %.1f×", float64(busy.client.Latencies.P99)/float64(idle.client.Latencies.P99)),
		"p99 < 5 ms at 1 000 requests/s where PostgreSQL has cores of its own (on a shared machine, the next row's ratio)", busy.client.Latencies.P99 < 5*time.Millisecond && busy.client.Success == 1)
	floorP99 := pct(pgBusy.reads, 0.99)
	rep.add("queries against their floor in the same run: the queries above (p50 / p99) and PostgreSQL's bare primary-key reads under the same traffic (the floor's row below)",
		fmt.Sprintf("%s / %s", ms(busy.client.Latencies.P50), ms(busy.client.Latencies.P99)),
		fmt.Sprintf("floor %s / %s", ms(pct(pgBusy.reads, 0.50)), ms(floorP99)),
		fmt.Sprintf("p99 %.2f× the floor", float64(busy.client.Latencies.P99)/float64(floorP99)),
		"p99 ≤ 1.2× the floor and p50 < 1 ms", busy.client.Success == 1 && float64(busy.client.Latencies.P99) <= 1.2*float64(floorP99) && busy.client.Latencies.P50 < time.Millisecond)
	busyServer, idleServer := busy.server.quantile(0.99), idle.server.quantile(0.99)
	rep.add("queries, the same requests timed by the API itself, from handing the request to its handlers to their answer (sightline_http_request_duration_seconds, interpolated in power-of-two buckets; p50 / p99); reference: before the traffic",
		fmt.Sprintf("%s / %s", ms(busy.server.quantile(0.50)), ms(busyServer)),
		fmt.Sprintf("%s / %s", ms(idle.server.quantile(0.50)), ms(idleServer)),
		fmt.Sprintf("p99 %.1f×", float64(busyServer)/float64(idleServer)),
		"p99 < 5 ms", busyServer < 5*time.Millisecond)
	addByID(rep, idleByID, idleBare, "before the traffic, nothing else running")
	addByID(rep, byID, pgBusy, "while projecting the traffic")
	addFloor(rep, fmt.Sprintf("queries' floor under the traffic: PostgreSQL alone, an order's row read by primary key at %.0f/s from the bench's pool right after the queries, the traffic above still appended and projected, the API idle (p50 / p99 / max; %s)", pgBusy.readRate, pgBusy.cpu),
		pgBusy, busy.client.Latencies.P99)
	addFloor(rep, fmt.Sprintf("queries' floor before the traffic: PostgreSQL alone, an order's row read by primary key at %.0f/s while %d writers insert single events into a plain table at %.0f/s, the projector and the API idle (p50 / p99 / max; %s)", pgAlone.readRate, liveWriters, pgAlone.inserted, pgAlone.cpu),
		pgAlone, busy.client.Latencies.P99)
	return nil
}

// warmUp is how long a load runs before it is measured: long enough for
// the load generator's connections, the API's and the pool's new ones, and
// their backends' first statements, which take up to a tenth of a second
// each while the traffic goes on, to be behind it.
const warmUp = 2 * time.Second

// queryLoad is one query load's latencies: as the load generator saw them,
// and as the API's request-duration histogram has them.
type queryLoad struct {
	client *vegeta.Metrics
	server histogram
}

// attack sends the targets round robin at 1 000 requests/s for warmUp, then
// measures them for d: vegeta's results, and what the API's histogram in g
// gained meanwhile.
func attack(g prometheus.Gatherer, targets []vegeta.Target, d time.Duration) (queryLoad, error) {
	attacker := vegeta.NewAttacker(vegeta.Timeout(5*time.Second), vegeta.KeepAlive(true), vegeta.Workers(32))
	m := &vegeta.Metrics{}
	began := time.Now()
	var before histogram
	var beforeErr error
	measuring := make(chan struct{})
	go func() {
		defer close(measuring)
		time.Sleep(warmUp)
		before, beforeErr = requestDurations(g)
	}()
	for res := range attacker.Attack(vegeta.NewStaticTargeter(targets...), vegeta.Rate{Freq: 1000, Per: time.Second}, warmUp+d, "queries") {
		if res.Timestamp.Sub(began) >= warmUp {
			m.Add(res)
		}
	}
	m.Close()
	<-measuring
	after, err := requestDurations(g)
	if err = cmp.Or(beforeErr, err); err != nil {
		return queryLoad{}, err
	}
	server := after.minus(before)
	if seen := server.counts[len(server.counts)-1]; seen < m.Requests/2 {
		return queryLoad{}, fmt.Errorf("the API's histogram has %d of the %d requests sent", seen, m.Requests)
	}
	return queryLoad{client: m, server: server}, nil
}

// startLive seeds the live parts' store with 20 000 events and starts the
// live projections on it, their metrics in a registry of their own.
func startLive(ctx context.Context, cfg config, pool *pgxpool.Pool, store *pgstore.Store) (*projections.Daemon, []projections.Projection, *prometheus.Registry, error) {
	if _, err := seed(ctx, pool, store, 20_000); err != nil {
		return nil, nil, nil, err
	}
	ps, err := liveProjections(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	reg := prometheus.NewRegistry()
	d, err := projections.NewDaemon(pool, store, ps, projections.Config{Metrics: projections.NewMetrics(reg), Logger: cfg.logger})
	if err != nil {
		return nil, nil, nil, err
	}
	if err := d.Start(ctx); err != nil {
		return nil, nil, nil, err
	}
	return d, ps, reg, nil
}

// waitCaughtUp waits until every runner has applied the store's head.
func waitCaughtUp(ctx context.Context, d *projections.Daemon, store eventstore.Store) error {
	head, err := store.Head(ctx)
	if err != nil {
		return err
	}
	for _, r := range d.Runners() {
		if err := r.WaitFor(ctx, head.Position); err != nil {
			return err
		}
	}
	return nil
}

// probe appends an order every 20 ms for d and reads it back through the
// API, waiting for its position; it returns the latencies from the append's
// start to the answer, sorted.
func probe(ctx context.Context, store eventstore.Store, base string, d time.Duration) ([]time.Duration, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	var out []time.Duration
	deadline := time.Now().Add(d)
	for i := 0; time.Now().Before(deadline); i++ {
		took, err := readYourWrite(ctx, client, store, base+"/v1/orders/", fmt.Sprintf("probe-%d", i))
		if err != nil {
			return nil, err
		}
		out = append(out, took)
		time.Sleep(20 * time.Millisecond)
	}
	slices.Sort(out)
	return out, nil
}

// readYourWrite appends order id, then reads it at url+id waiting for its
// position, and returns the time from the append's start to the answer.
func readYourWrite(ctx context.Context, client *http.Client, store eventstore.Store, url, id string) (time.Duration, error) {
	written := time.Now()
	res, err := store.Append(ctx, readmodel.OrderStreamPrefix+id, eventstore.NoStream, eventstore.EventData{EventID: uuid.NewString(),
		Type: readmodel.TypeOrderPlaced, Data: []byte(`{"customer_id":"c-probe","items":[{"sku":"P","qty":1,"price":100}],"total":100}`)})
	if err != nil {
		return 0, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+id, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set(api.HeaderMinPosition, res.Position.String())
	req.Header.Set(api.HeaderWaitMs, "5000")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), id) {
		return 0, fmt.Errorf("probe %s at %s: %s %s", id, url, resp.Status, body)
	}
	return time.Since(written), nil
}

// addFloor adds a floor's row: its p50 / p99 / max as the reference, the
// queries' p99 against its own, and whether PostgreSQL alone met the
// queries' target.
func addFloor(rep *report, measure string, f floor, queriesP99 time.Duration) {
	p99 := pct(f.reads, 0.99)
	rep.add(measure, "", fmt.Sprintf("%s / %s / %s", ms(pct(f.reads, 0.50)), ms(p99), ms(f.reads[len(f.reads)-1])),
		fmt.Sprintf("queries' p99 %.1f× this", float64(queriesP99)/float64(p99)),
		"the queries' p99 < 5 ms, for PostgreSQL alone", p99 < 5*time.Millisecond)
}

func pct(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(math.Ceil(q*float64(len(sorted))))-1)]
}

// readModelIDs returns up to 200 orders and 200 customers that the read
// models hold.
func readModelIDs(ctx context.Context, db interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) (orders, customers []string, err error) {
	rows, err := db.Query(ctx, `(SELECT 'o', id FROM readmodel.orders LIMIT 200) UNION ALL (SELECT 'c', customer_id FROM readmodel.customer_stats LIMIT 200)`)
	if err != nil {
		return nil, nil, err
	}
	var kind, id string
	_, err = pgx.ForEachRow(rows, []any{&kind, &id}, func() error {
		if kind == "o" {
			orders = append(orders, id)
		} else {
			customers = append(customers, id)
		}
		return nil
	})
	return orders, customers, err
}

// queryTargets are the example endpoints, over the orders and customers
// given.
func queryTargets(base string, orders, customers []string) []vegeta.Target {
	var targets []vegeta.Target
	for _, id := range orders {
		targets = append(targets, vegeta.Target{Method: http.MethodGet, URL: base + "/v1/orders/" + id})
	}
	for _, id := range customers {
		targets = append(targets, vegeta.Target{Method: http.MethodGet, URL: base + "/v1/customers/" + id + "/stats"})
	}
	for _, status := range []string{"placed", "paid", "shipped", "delivered", "cancelled"} {
		targets = append(targets, vegeta.Target{Method: http.MethodGet, URL: base + "/v1/orders?status=" + status + "&limit=50"})
	}
	targets = append(targets, vegeta.Target{Method: http.MethodGet, URL: base + "/v1/sales/daily"})
	return targets
}

// histogram is a snapshot of a Prometheus histogram, or of the sum of
// several with the same buckets.
type histogram struct {
	bounds []float64 // upper bounds, seconds
	counts []uint64  // cumulative
}

// endToEnd is sightline_end_to_end_seconds for the projection.
func endToEnd(g prometheus.Gatherer, projection string) (histogram, error) {
	return gatherHistogram(g, "sightline_end_to_end_seconds", func(m *dto.Metric) bool { return label(m, "projection") == projection })
}

// liveProjections are the example projections and the YAML example,
// order_activity.
func liveProjections(ctx context.Context) ([]projections.Projection, error) {
	path, err := activityYAML(ctx)
	if err != nil {
		return nil, err
	}
	p, err := declarative.Load(path)
	if err != nil {
		return nil, err
	}
	return append(readmodel.All(), p), nil
}

// readModelRoutes are the routes queryTargets sends requests to.
var readModelRoutes = map[string]bool{"/v1/orders/:id": true, "/v1/orders": true, "/v1/customers/:id/stats": true, "/v1/sales/daily": true}

// requestDurations is sightline_http_request_duration_seconds over the read
// models' routes, whatever the answer.
func requestDurations(g prometheus.Gatherer) (histogram, error) {
	return gatherHistogram(g, "sightline_http_request_duration_seconds", func(m *dto.Metric) bool { return readModelRoutes[label(m, "url")] })
}

// gatherHistogram sums the histograms of the family name that match; it
// fails when none does, rather than report a latency of nothing.
func gatherHistogram(g prometheus.Gatherer, name string, match func(*dto.Metric) bool) (histogram, error) {
	families, err := g.Gather()
	if err != nil {
		return histogram{}, err
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		var h histogram
		for _, m := range f.GetMetric() {
			if !match(m) {
				continue
			}
			buckets := m.GetHistogram().GetBucket()
			if h.bounds == nil {
				for _, b := range buckets {
					h.bounds = append(h.bounds, b.GetUpperBound())
				}
				h.bounds = append(h.bounds, math.Inf(1))
				h.counts = make([]uint64, len(h.bounds))
			}
			if len(buckets)+1 != len(h.bounds) {
				return histogram{}, fmt.Errorf("%s: histograms with different buckets", name)
			}
			for i, b := range buckets {
				h.counts[i] += b.GetCumulativeCount()
			}
			h.counts[len(buckets)] += m.GetHistogram().GetSampleCount()
		}
		if h.bounds == nil {
			break
		}
		return h, nil
	}
	return histogram{}, fmt.Errorf("no %s that the bench reads", name)
}

// gatherCounter sums the counters of the family name that match; a family
// with none yet is 0.
func gatherCounter(g prometheus.Gatherer, name string, match func(*dto.Metric) bool) (float64, error) {
	families, err := g.Gather()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if match(m) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// minus is what h gained since o, an earlier snapshot of the same
// histograms.
func (h histogram) minus(o histogram) histogram {
	out := histogram{bounds: h.bounds, counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		out.counts[i] = h.counts[i] - o.counts[i]
	}
	return out
}

// quantile interpolates linearly inside the bucket that holds q, as
// PromQL's histogram_quantile does.
func (h histogram) quantile(q float64) time.Duration {
	total := h.counts[len(h.counts)-1]
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	lower, below := 0.0, uint64(0)
	for i, c := range h.counts {
		if float64(c) >= rank {
			upper := h.bounds[i]
			if math.IsInf(upper, 1) {
				return secs(lower)
			}
			inBucket := float64(c - below)
			return secs(lower + (upper-lower)*(rank-float64(below))/inBucket)
		}
		lower, below = h.bounds[i], c
	}
	return secs(lower)
}

// within is the share of the samples at most d, when d is one of the
// histogram's bounds (ok); otherwise it cannot be counted.
func (h histogram) within(d time.Duration) (share float64, ok bool) {
	total := h.counts[len(h.counts)-1]
	for i, b := range h.bounds {
		if math.Abs(b-d.Seconds()) < 1e-9 {
			if total == 0 {
				return 1, true
			}
			return float64(h.counts[i]) / float64(total), true
		}
	}
	return 0, false
}

// maxBound is the upper bound of the highest bucket with a sample; for the
// last, unbounded bucket, the highest finite bound.
func (h histogram) maxBound() time.Duration {
	for i := range h.counts {
		if h.counts[i] == h.counts[len(h.counts)-1] {
			if math.IsInf(h.bounds[i], 1) && i > 0 {
				return secs(h.bounds[i-1])
			}
			return secs(h.bounds[i])
		}
	}
	return 0
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
