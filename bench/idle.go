package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	dto "github.com/prometheus/client_model/go"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/internal/simulate"
)

// idleRate is the append rate of SPEC §7's idle cost target, and idleRest
// how long the part first counts commits with nothing appended.
const (
	idleRate     = 250
	idleRest     = 5 * time.Second
	idleDatabase = "sightline_bench_idle"
)

// idleSample is what the idle part counts at one moment: the bench
// database's commits (pg_stat_database.xact_commit), the calls of each of
// its functions (pg_stat_user_functions, with track_functions on for that
// database), the sequencer's runs that gave positions (the store's
// SequencerRuns), the batches each projection applied
// (sightline_batch_events) and how many of them committed together, and
// the events and Append calls the traffic made.
type idleSample struct {
	at       time.Time
	commits  int64
	calls    map[string]int64
	batches  map[string]uint64
	shared   float64 // batches committed with other projections' (sightline_batches_shared_total)
	together float64 // the transactions that committed them (sightline_shared_commits_total)
	appended int64
	appends  int64
	runs     int64 // the sequencer's runs that gave positions (pgstore's SequencerRuns)
}

// benchIdle runs the example projections and order_activity in this
// process on a fresh database, and counts PostgreSQL's commits in it:
// first for idleRest with nothing appended, then for cfg.phase while the
// live part's traffic appends at a steady 250 events/s; it reports the
// commits per appended event, where they come from, and the phase's
// event written → visible p99.
func benchIdle(ctx context.Context, cfg config, rep *report) error {
	db, err := openDatabase(ctx, cfg, idleDatabase, true)
	if err != nil {
		return err
	}
	defer db.Close()
	pool, store := db.pool, db.store
	admin, err := pgxpool.New(ctx, cfg.server) // its own queries count in another database's commits
	if err != nil {
		return err
	}
	defer admin.Close()
	// The bench database's own setting, for the connections opened after
	// it: the server's configuration is left alone.
	if _, err := admin.Exec(ctx, `ALTER DATABASE `+idleDatabase+` SET track_functions = 'pl'`); err != nil {
		return err
	}
	pool.Reset()
	d, ps, reg, err := startLive(ctx, cfg, pool, store)
	if err != nil {
		return err
	}
	defer d.Stop(context.WithoutCancel(ctx)) //nolint:errcheck // the bench is over
	if err := waitCaughtUp(ctx, d, store); err != nil {
		return err
	}
	var appended atomic.Int64
	counted := &countingStore{Store: store}
	sample := func() (idleSample, error) {
		s := idleSample{at: time.Now(), calls: map[string]int64{}, batches: map[string]uint64{}, appended: appended.Load(), appends: counted.appends.Load(), runs: store.SequencerRuns()}
		if err := admin.QueryRow(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = $1`, idleDatabase).Scan(&s.commits); err != nil {
			return s, err
		}
		rows, err := pool.Query(ctx, `SELECT schemaname || '.' || funcname, calls FROM pg_stat_user_functions`)
		if err != nil {
			return s, err
		}
		var name string
		var calls int64
		if _, err := pgx.ForEachRow(rows, []any{&name, &calls}, func() error { s.calls[name] += calls; return nil }); err != nil {
			return s, err
		}
		for _, p := range ps {
			h, err := gatherHistogram(reg, "sightline_batch_events", func(m *dto.Metric) bool { return label(m, "projection") == p.Name() })
			if err != nil {
				return s, err
			}
			s.batches[p.Name()] = h.counts[len(h.counts)-1]
		}
		all := func(*dto.Metric) bool { return true }
		if s.shared, err = gatherCounter(reg, "sightline_batches_shared_total", all); err != nil {
			return s, err
		}
		if s.together, err = gatherCounter(reg, "sightline_shared_commits_total", all); err != nil {
			return s, err
		}
		return s, nil
	}

	// At rest: what the projector and the store commit with nothing to do.
	time.Sleep(time.Second) // the catch-up's statistics are flushed
	restFrom, err := sample()
	if err != nil {
		return err
	}
	time.Sleep(idleRest)
	restTo, err := sample()
	if err != nil {
		return err
	}
	restRate := float64(restTo.commits-restFrom.commits) / restTo.at.Sub(restFrom.at).Seconds()

	traffic, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	trafficDone := make(chan error, 1)
	go func() {
		_, err := simulate.Run(traffic, counted, simulate.Config{Orders: 200_000, Customers: 10_000, Writers: liveWriters, Rate: idleRate, Seed: 3,
			Progress: func(n int64) { appended.Store(n) }})
		trafficDone <- err
	}()
	time.Sleep(warmUp)
	e2eFrom := map[string]histogram{}
	for _, p := range ps {
		if e2eFrom[p.Name()], err = endToEnd(reg, p.Name()); err != nil {
			return err
		}
	}
	from, err := sample()
	if err != nil {
		return err
	}
	time.Sleep(cfg.phase)
	to, err := sample()
	if err != nil {
		return err
	}
	var p99s []string
	for _, p := range ps {
		h, err := endToEnd(reg, p.Name())
		if err != nil {
			return err
		}
		p99s = append(p99s, fmt.Sprintf("%s %s", p.Name(), ms(h.minus(e2eFrom[p.Name()]).quantile(0.99))))
	}
	stopTraffic()
	if err := <-trafficDone; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}

	secs := to.at.Sub(from.at).Seconds()
	events := to.appended - from.appended
	if events <= 0 {
		return errors.New("no event appended")
	}
	commits := to.commits - from.commits
	per := func(n float64) float64 { return n / float64(events) }
	// The sequencer's runs: position_events_rows is also called by the
	// groups of appends that position their own (position_events_try).
	sequencer := to.runs - from.runs
	groups := to.calls["sightline.position_events_try"] - from.calls["sightline.position_events_try"]
	ownRuns := to.calls["sightline.position_events_rows"] - from.calls["sightline.position_events_rows"] - sequencer
	var batches uint64
	var perProjection []string
	for _, p := range ps {
		n := to.batches[p.Name()] - from.batches[p.Name()]
		batches += n
		perProjection = append(perProjection, fmt.Sprintf("%s %.2f", p.Name(), per(float64(n))))
	}
	appends := to.appends - from.appends
	background := restRate * secs
	shared, together := to.shared-from.shared, to.together-from.together
	batchCommits := float64(batches) - shared + together // a shared commit is one transaction for its batches
	rest := float64(commits) - float64(sequencer) - batchCommits - background
	var fns []string
	for name, n := range to.calls {
		if d := n - from.calls[name]; d > 0 {
			fns = append(fns, fmt.Sprintf("%s %.2f", strings.TrimPrefix(name, "sightline."), per(float64(d))))
		}
	}
	sort.Strings(fns)
	rep.add(fmt.Sprintf("idle cost at %d events/s, %d projections (%d events appended in %.0f s by %d writers, %d Append calls; calls of the store's functions per appended event: %s)",
		idleRate, len(ps), events, secs, liveWriters, appends, strings.Join(fns, ", ")),
		fmt.Sprintf("%.2f commits per appended event", per(float64(commits))),
		fmt.Sprintf("sequencer runs %.2f, projection transactions %.2f for batches %.2f (%s; %.0f%% of them committed together, %.1f to a transaction), appends and the rest %.2f (groups of appends %.2f, %.0f%% of them positioning their own events), background %.2f (%.1f commits/s at rest, nothing appended)",
			per(float64(sequencer)), per(batchCommits), per(float64(batches)), strings.Join(perProjection, ", "),
			100*shared/max(float64(batches), 1), shared/max(together, 1), per(rest), per(float64(groups)), 100*float64(ownRuns)/max(float64(groups), 1),
			per(background), restRate),
		"event written → visible p99 "+strings.Join(p99s, ", "),
		"≤ 2.5 commits per appended event", per(float64(commits)) <= 2.5)
	return nil
}

// countingStore counts the Append calls made through it.
type countingStore struct {
	eventstore.Store
	appends atomic.Int64
}

func (s *countingStore) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	s.appends.Add(1)
	return s.Store.Append(ctx, stream, expected, events...)
}
