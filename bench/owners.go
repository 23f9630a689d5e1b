package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/readmodel"
)

// ownersRate is the steady append rate under which the owners part kills
// processes and loads them with queries: half the live part's, since three
// sightline processes share the two cores with PostgreSQL and the bench.
const (
	ownersRate    = 1000
	ownersWriters = 8
	// ownersPoll is how often the part reads who holds what.
	ownersPoll = 5 * time.Millisecond
)

// benchOwners runs several 'sightline run' processes on one fresh database
// under steady order traffic: kills (kill -9) and stops (SIGTERM) the one
// holding a projection and times until every projection is held again
// (failover); then loads a serve-only node and the owner with the same
// queries (serveVsOwner). Segments are measured on databases of their own
// (benchSegments), without the traffic.
func benchOwners(ctx context.Context, cfg config, rep *report) error {
	if err := ownersTraffic(ctx, cfg, rep); err != nil {
		return err
	}
	if err := settle(ctx, cfg); err != nil {
		return err
	}
	return benchSegments(ctx, cfg, rep)
}

func ownersTraffic(ctx context.Context, cfg config, rep *report) error {
	db, err := openDatabase(ctx, cfg, "sightline_bench_owners", true)
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := seed(ctx, db.pool, db.store, 20_000); err != nil {
		return err
	}
	traffic, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	trafficDone := make(chan error, 1)
	var appended atomic.Int64
	go func() {
		_, err := simulate.Run(traffic, db.store, simulate.Config{Orders: 1_000_000, Customers: 10_000, Writers: ownersWriters, Rate: ownersRate, Seed: 3,
			Progress: func(n int64) { appended.Store(n) }})
		trafficDone <- err
	}()
	for _, lease := range cfg.leases {
		if cfg.kills+cfg.handovers == 0 {
			break
		}
		if err := failover(ctx, cfg, db, lease, &appended, rep); err != nil {
			return fmt.Errorf("failover, lease %s: %w", lease, err)
		}
	}
	if err := serveVsOwner(ctx, cfg, db, &appended, rep); err != nil {
		return fmt.Errorf("serve-only node: %w", err)
	}
	stopTraffic()
	if err := <-trafficDone; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("traffic: %w", err)
	}
	return exactAfter(ctx, cfg, db, rep)
}

// exactAfter runs one process until the example projections have applied
// every event, then checks their read models against a fold of the events
// (the rebuild part's ceiling): the kills above wrote nothing twice and
// lost nothing.
func exactAfter(ctx context.Context, cfg config, db *benchDB, rep *report) (err error) {
	ps, err := newProcs(cfg.binary)
	if err != nil {
		return err
	}
	defer func() { ps.finish(err) }()
	p, err := ps.start(ctx, "--examples", "--database-url", db.url)
	if err != nil {
		return err
	}
	head, err := sequenced(ctx, db.pool)
	if err != nil {
		return err
	}
	for _, s := range exampleSegs() {
		if err := waitCheckpoints(ctx, db, s.projection, 1, head, []*sightlineProc{p}); err != nil {
			return err
		}
	}
	for _, pr := range readmodel.All() {
		if _, err := ceiling(ctx, db.pool, pr); err != nil {
			return fmt.Errorf("after the rounds, %s: %w", pr.Name(), err)
		}
	}
	rep.add(fmt.Sprintf("the example read models after every round above, caught up (%d events): equal to a fold of the events, as the rebuild part's ceiling checks them", head), "exact", "", "", "", true)
	return p.stop()
}

// exampleSegs are the example projections, each one segment.
func exampleSegs() []seg {
	var out []seg
	for _, p := range readmodel.All() {
		out = append(out, seg{projection: p.Name()})
	}
	return out
}

// steady is what waitSteady saw: how long until the shares settled, and
// the longest stretch meanwhile during which some segment was held by
// none of the live processes.
type steady struct {
	took, gap time.Duration
}

// waitSteady waits until every segment of want is held by one of live, by
// min(holders, len(want)) distinct processes in all (each of them its
// share). holders is how many of live apply projections.
func waitSteady(ctx context.Context, db *benchDB, want []seg, live []*sightlineProc, nHolders int, within time.Duration) (steady, error) {
	start := time.Now()
	pids := alive(live)
	var gap time.Duration
	var unheldSince time.Time
	var h map[seg]int
	var err error
	for {
		if h, err = holders(ctx, db.pool); err != nil {
			return steady{}, err
		}
		now := time.Now()
		ok, by := heldBy(h, want, pids)
		switch {
		case !ok && unheldSince.IsZero():
			unheldSince = now
		case ok && !unheldSince.IsZero():
			gap, unheldSince = max(gap, now.Sub(unheldSince)), time.Time{}
		}
		if ok && by == min(nHolders, len(want)) {
			return steady{took: now.Sub(start), gap: gap}, nil
		}
		if now.Sub(start) > within {
			return steady{}, fmt.Errorf("the shares did not settle within %s: holders %v, live %v", within, h, pids)
		}
		for _, p := range live {
			if !p.running() {
				return steady{}, fmt.Errorf("sightline (pid %d) exited: %v\n%s", p.pid, p.err, p.logTail())
			}
		}
		time.Sleep(ownersPoll)
	}
}

// handover is one round of failover: from the signal until every
// projection was held again by a live process, and until the projection
// the victim held had applied every event appended until then (the
// backlog of the outage).
type handover struct {
	held, applied time.Duration
}

// failover starts three 'sightline run --examples' processes with lease,
// then cfg.kills times kills (kill -9) the holder of a projection picked at
// random, at a random moment, times the takeover, and starts a
// replacement; then cfg.handovers times the same with SIGTERM.
func failover(ctx context.Context, cfg config, db *benchDB, lease time.Duration, appended *atomic.Int64, rep *report) (err error) {
	ps, err := newProcs(cfg.binary)
	if err != nil {
		return err
	}
	defer func() { ps.finish(err) }()
	args := []string{"--examples", "--database-url", db.url, "--lease", lease.String()}
	var live []*sightlineProc
	for range 3 {
		p, err := ps.start(ctx, args...)
		if err != nil {
			return err
		}
		live = append(live, p)
	}
	want := exampleSegs()
	if _, err := waitSteady(ctx, db, want, live, 3, time.Minute); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	var kills, terms []handover
	var joins []steady
	begin, from := time.Now(), appended.Load()
	for round := range cfg.kills + cfg.handovers {
		if err := ctx.Err(); err != nil {
			return err
		}
		term := round >= cfg.kills
		// A random moment: anywhere in the heartbeat's and the rounds' ticks.
		time.Sleep(time.Duration(rng.Int64N(int64(time.Second))))
		h, err := holders(ctx, db.pool)
		if err != nil {
			return err
		}
		target := want[rng.IntN(len(want))]
		var victim *sightlineProc
		for _, p := range live {
			if p.pid == h[target] {
				victim = p
			}
		}
		if victim == nil {
			return fmt.Errorf("%s is held by pid %d, not a live process of the bench's (holders %v)", target, h[target], h)
		}
		signal := syscall.SIGKILL
		if term {
			signal = syscall.SIGTERM
		}
		start := time.Now()
		if err := victim.cmd.Process.Signal(signal); err != nil {
			return err
		}
		live = without(live, victim)
		r, err := waitTakeover(ctx, db, want, live, target.projection, start)
		if err != nil {
			return fmt.Errorf("round %d (%s of pid %d holding %s): %w\n%s", round, signal, victim.pid, target, err, victim.logTail())
		}
		if term {
			if err := victim.wait(); err != nil {
				return err
			}
			terms = append(terms, r)
		} else {
			<-victim.done
			kills = append(kills, r)
		}
		p, err := ps.start(ctx, args...)
		if err != nil {
			return err
		}
		live = append(live, p)
		j, err := waitSteady(ctx, db, want, live, 3, 30*time.Second)
		if err != nil {
			return fmt.Errorf("round %d, the replacement joining: %w", round, err)
		}
		joins = append(joins, j)
		fmt.Fprintf(os.Stderr, "bench: owners, lease %s, round %d: %s of pid %d holding %s: held again in %s, applying in %s; the replacement settled in %s (gap %s)\n",
			lease, round, signal, victim.pid, target, r.held.Round(time.Millisecond), r.applied.Round(time.Millisecond), j.took.Round(time.Millisecond), j.gap.Round(time.Millisecond))
	}
	took := time.Since(begin)
	rate := float64(appended.Load()-from) / took.Seconds()
	for _, p := range live {
		if !p.running() {
			return fmt.Errorf("sightline (pid %d) exited: %v\n%s", p.pid, p.err, p.logTail())
		}
	}
	tick := min(max(lease/6, 20*time.Millisecond), time.Second).Round(time.Millisecond) // as projections.newOwners sets it, to the ms
	under := fmt.Sprintf("3 'sightline run --examples' processes (3 projections, one each), --lease %s (tick %s), %.0f events/s appended (paced at %d)", lease, tick, rate, ownersRate)
	held := func(hs []handover) []time.Duration {
		return sortedOf(hs, func(h handover) time.Duration { return h.held })
	}
	applied := func(hs []handover) []time.Duration {
		return sortedOf(hs, func(h handover) time.Duration { return h.applied })
	}
	if len(kills) > 0 {
		rep.add(fmt.Sprintf("failover, kill -9 of the holder of a projection picked at random, at a random moment, %s: kill → every projection held again by a live process (rows of sightline.owners read every %s; %d kills; p50 / p99 / max)", under, ownersPoll, len(kills)),
			dist(held(kills)), "lease "+lease.String(), fmt.Sprintf("p99 %.2f× the lease", float64(pct(held(kills), 0.99))/float64(lease)), "", true)
		rep.add("failover, kill -9, the same rounds: kill → the projection taken over has applied every event appended until it was held again (its checkpoint past the head of that moment: the outage's backlog applied; p50 / p99 / max)",
			dist(applied(kills)), "", "", "", true)
	}
	if len(terms) > 0 {
		rep.add(fmt.Sprintf("handover, SIGTERM of the holder of a projection, %s: signal → every projection held again by another process (%d rounds; p50 / p99 / max)", under, len(terms)),
			dist(held(terms)), "tick "+tick.String(), "", "", true)
		rep.add("handover, SIGTERM, the same rounds: signal → the projection handed over has applied every event appended until it was held again (p50 / p99 / max)",
			dist(applied(terms)), "", "", "", true)
	}
	var gaps, settled []time.Duration
	for _, j := range joins {
		gaps, settled = append(gaps, j.gap), append(settled, j.took)
	}
	slices.Sort(gaps)
	slices.Sort(settled)
	rep.add(fmt.Sprintf("rebalance, a replacement joining after each round, %s: its API up → one projection each again (p50 / p99 / max), and the longest stretch meanwhile with a projection held by nobody (p50 / p99 / max; %d joins; the rounds took %s in all)", under, len(joins), took.Round(time.Second)),
		dist(settled)+"; gap "+dist(gaps), "", "", "", true)
	return nil
}

// waitTakeover waits until every segment of want is held by one of live,
// then until the projection's checkpoint reaches the head of that moment;
// both timed from start.
func waitTakeover(ctx context.Context, db *benchDB, want []seg, live []*sightlineProc, projection string, start time.Time) (handover, error) {
	pids := alive(live)
	var r handover
	var pos int64
	for {
		elapsed := time.Since(start)
		if elapsed > 30*time.Second {
			h, _ := holders(ctx, db.pool)
			return r, fmt.Errorf("not taken over within 30 s (held after %s; holders %v, live %v)", r.held, h, pids)
		}
		if r.held == 0 {
			h, err := holders(ctx, db.pool)
			if err != nil {
				return r, err
			}
			if ok, _ := heldBy(h, want, pids); ok {
				r.held = time.Since(start)
				if pos, err = sequenced(ctx, db.pool); err != nil {
					return r, err
				}
			}
		}
		if r.held > 0 {
			at, _, err := checkpoint(ctx, db.pool, projection)
			if err != nil {
				return r, err
			}
			if at >= pos {
				r.applied = time.Since(start)
				return r, nil
			}
		}
		time.Sleep(ownersPoll)
	}
}

// sortedOf is f of each of xs, sorted.
func sortedOf[T any](xs []T, f func(T) time.Duration) []time.Duration {
	out := make([]time.Duration, 0, len(xs))
	for _, x := range xs {
		out = append(out, f(x))
	}
	slices.Sort(out)
	return out
}

// dist is p50 / p99 / max of sorted latencies.
func dist(sorted []time.Duration) string {
	if len(sorted) == 0 {
		return "none"
	}
	return fmt.Sprintf("%s / %s / %s", ms(pct(sorted, 0.50)), ms(pct(sorted, 0.99)), ms(sorted[len(sorted)-1]))
}

// serveVsOwner runs one '--role all' process, which holds every example
// projection, and one '--role serve' process, and sends the declared query
// orders.by_id to both, interleaved, in one vegeta load at 1 000
// requests/s in all, while the traffic goes on; meanwhile it appends an
// order every 20 ms and reads it back with Projection-Min-Position, from
// each node in turn.
func serveVsOwner(ctx context.Context, cfg config, db *benchDB, appended *atomic.Int64, rep *report) (err error) {
	ps, err := newProcs(cfg.binary)
	if err != nil {
		return err
	}
	defer func() { ps.finish(err) }()
	args := []string{"--examples", "--database-url", db.url}
	owner, err := ps.start(ctx, append(args, "--role", "all")...)
	if err != nil {
		return err
	}
	server, err := ps.start(ctx, append(args, "--role", "serve")...)
	if err != nil {
		return err
	}
	if _, err := waitSteady(ctx, db, exampleSegs(), []*sightlineProc{owner}, 1, time.Minute); err != nil {
		return err
	}
	orders, _, err := readModelIDs(ctx, db.pool)
	if err != nil {
		return err
	}
	if len(orders) == 0 {
		return errors.New("no orders to read")
	}
	ownerBase, serverBase := "http://"+owner.addr, "http://"+server.addr
	var targets []vegeta.Target
	for _, id := range orders {
		for _, base := range []string{ownerBase, serverBase} {
			targets = append(targets, vegeta.Target{Method: http.MethodGet, URL: base + "/v1/projections/orders/queries/by_id?id=" + url.QueryEscape(id)})
		}
	}
	type nodeLoad struct {
		lat        []time.Duration
		ok, failed int
		codes      map[int]int
	}
	loads := map[string]*nodeLoad{ownerBase: {codes: map[int]int{}}, serverBase: {codes: map[int]int{}}}
	var probes map[string][]time.Duration
	var probeErr error
	var wg sync.WaitGroup
	probeCtx, stopProbes := context.WithCancel(ctx)
	defer stopProbes()
	loadFrom, loadStart := appended.Load(), time.Now()
	cpu, err := cpuOf(func() []int { return []int{owner.pid, server.pid} }, func() error {
		wg.Go(func() {
			time.Sleep(warmUp)
			probes, probeErr = probeNodes(probeCtx, db.store, []string{ownerBase, serverBase}, cfg.phase)
		})
		attacker := vegeta.NewAttacker(vegeta.Timeout(5*time.Second), vegeta.KeepAlive(true), vegeta.Workers(32))
		began := time.Now()
		for res := range attacker.Attack(vegeta.NewStaticTargeter(targets...), vegeta.Rate{Freq: 1000, Per: time.Second}, warmUp+cfg.phase, "nodes") {
			if res.Timestamp.Sub(began) < warmUp {
				continue
			}
			l := loads[serverBase]
			if strings.HasPrefix(res.URL, ownerBase) {
				l = loads[ownerBase]
			}
			l.codes[int(res.Code)]++
			if res.Code != http.StatusOK {
				l.failed++
				continue
			}
			l.ok++
			l.lat = append(l.lat, res.Latency)
		}
		wg.Wait()
		return probeErr
	})
	if err != nil {
		return err
	}
	rate := float64(appended.Load()-loadFrom) / time.Since(loadStart).Seconds()
	for _, l := range loads {
		slices.Sort(l.lat)
		if l.failed > 0 {
			return fmt.Errorf("%d of %d queries failed: %v", l.failed, l.ok+l.failed, l.codes)
		}
	}
	o, s := loads[ownerBase], loads[serverBase]
	rep.add(fmt.Sprintf("queries on a serve-only node (--role serve) against the owner (--role all, holds the 3 example projections): the declared query orders.by_id, the two nodes' requests interleaved in one load at 1 000 requests/s in all, for %s, %.0f events/s appended and projected (p50 / p99 / max; %d and %d requests; CPU cores: %s)", cfg.phase, rate, s.ok, o.ok, cpu),
		dist(s.lat), "owner "+dist(o.lat), fmt.Sprintf("p99 %.2f×", float64(pct(s.lat, 0.99))/float64(pct(o.lat, 0.99))), "", true)
	po, psv := probes[ownerBase], probes[serverBase]
	if len(po) == 0 || len(psv) == 0 {
		return errors.New("no probe answered")
	}
	rep.add(fmt.Sprintf("read your writes on a serve-only node against the owner, under the load above: an order appended, then read back with Projection-Min-Position by orders.by_id, every 20 ms from each node in turn (append sent → answer; p50 / p99 / max; %d and %d probes)", len(psv), len(po)),
		dist(psv), "owner "+dist(po), fmt.Sprintf("p99 %.2f×", float64(pct(psv, 0.99))/float64(pct(po, 0.99))), "", true)
	for _, p := range []*sightlineProc{owner, server} {
		if err := p.stop(); err != nil {
			return err
		}
	}
	return nil
}

// probeNodes appends an order every 20 ms for d and reads it back from
// each base in turn with the declared query, waiting for its position; it
// returns the latencies from the append's start to the answer, by base,
// sorted.
func probeNodes(ctx context.Context, store eventstore.Store, bases []string, d time.Duration) (map[string][]time.Duration, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	out := map[string][]time.Duration{}
	deadline := time.Now().Add(d)
	for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
		base := bases[i%len(bases)]
		took, err := readYourWrite(ctx, client, store, base+"/v1/projections/orders/queries/by_id?id=", fmt.Sprintf("ryw-%s-%d", uuid.NewString()[:8], i))
		if err != nil {
			return nil, err
		}
		out[base] = append(out[base], took)
		time.Sleep(20 * time.Millisecond)
	}
	for _, ls := range out {
		slices.Sort(ls)
	}
	return out, nil
}
