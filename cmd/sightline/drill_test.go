//go:build drill

// The failover drill runs in make drill, alone: it starts three processes
// at a time for minutes, and beside the other tests it would crowd the
// server's connections.

package main

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/esdb"
	"github.com/sightlinehq/sightline/eventstore/esdb/esdbtest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// The failover drill's contract: a projection whose holder is killed
// outright is held by another process within this, whatever the lease
// (with --lease 1s a takeover takes a little over a second).
const drillTakeoverMax = 5 * time.Second

// A takeover slower than this (twice the lease) is logged with what the
// survivors wrote meanwhile.
const drillSlow = 2 * time.Second

// TestDrillThreeProcessesTwentyKills is the failover drill on the embedded
// store: three processes under steady appends, the holder of a random
// projection killed with SIGKILL twenty times at random moments (and a new
// process started each time), and every fourth round, before the kill, a
// holder's sessions ended with pg_terminate_backend while it applies, which
// it must get over by itself. Every takeover is timed and within the
// contract, and the read models equal the fold of the events at the end.
func TestDrillThreeProcessesTwentyKills(t *testing.T) {
	t.Parallel()
	drill(t, false)
}

// TestDrillThreeProcessesTwentyKillsOnEventStoreDB is the same drill with
// the processes reading from the EventStoreDB wire-level double (esdbtest,
// in this test process) instead of the embedded store.
func TestDrillThreeProcessesTwentyKillsOnEventStoreDB(t *testing.T) {
	t.Parallel()
	drill(t, true)
}

// drillOne runs one drill at a time: each has three processes with pools
// of their own, and two at once would crowd the server's connections.
var drillOne sync.Mutex

func drill(t *testing.T, onESDB bool) {
	const rounds, terminateEvery = 20, 4
	drillOne.Lock()
	defer drillOne.Unlock()
	ctx, db, pgStore := newDatabase(t, 4*time.Minute)
	args := []string{"run", "--examples", "--database-url", db.URL, "--http-addr", "127.0.0.1:0", "--lease", "1s"}
	var store eventstore.Store = pgStore
	var es *esdb.Store
	source := "postgres"
	if onESDB {
		srv := esdbtest.Start(t)
		var err error
		es, err = esdb.New(esdb.Config{URL: srv.URL()})
		require.NoError(t, err)
		t.Cleanup(es.Close)
		store, source = es, "esdb"
		args = append(args, "--source", srv.URL())
	}

	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SIGHTLINE_DRILL_SEED"); s != "" {
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "SIGHTLINE_DRILL_SEED")
	}
	t.Logf("seed %d (SIGHTLINE_DRILL_SEED=%d repeats the choices)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 2))

	procs := map[int]*proc{} // by pid, every process started
	live := map[int]bool{}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for pid := range live {
			out := procs[pid].stderr.String()
			t.Logf("pid %d, the end of its output:\n%s", pid, out[max(0, len(out)-4000):])
		}
	})
	launch := func() {
		p := start(t, args...)
		procs[p.cmd.Process.Pid], live[p.cmd.Process.Pid] = p, true
	}
	// balanced: each live process holds one projection.
	balanced := func(h map[string]int) bool {
		for pid := range live {
			if holds(h, pid) != 1 {
				return false
			}
		}
		return true
	}
	began := time.Now()
	for range 3 {
		launch()
	}
	t.Logf("three processes share the projections after %s", waitHeld(t, ctx, db.Pool, time.Minute, balanced))

	trafficCtx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	traffic := make(chan error, 1)
	go func() {
		// More orders than the drill lasts: it is stopped at the end.
		_, err := simulate.Run(trafficCtx, store, simulate.Config{Orders: 1_000_000, Customers: 200, Writers: 4, Rate: 400, Seed: seed})
		traffic <- err
	}()

	names := readmodeltest.Names()
	slices.Sort(names)
	var takeovers, recoveries []time.Duration
	for round := 1; round <= rounds; round++ {
		time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		name := names[rng.IntN(len(names))]
		pid := holders(t, ctx, db.Pool)[name]
		victim := procs[pid]
		require.True(t, live[pid], "round %d: %s is held by pid %d, not a live process of this test", round, name, pid)

		if round%terminateEvery == 0 {
			took, kept := terminateSessions(t, ctx, db.Pool, pid)
			recoveries = append(recoveries, took)
			t.Logf("round %d: ended the sessions of pid %d (holding %s): applying again in %s, still holding its projections: %v", round, pid, name, took, kept)
			select {
			case <-victim.done:
				t.Fatalf("round %d: pid %d exited after its sessions were ended: %v\n%s", round, pid, victim.err, victim.stderr)
			default:
			}
			// And kill the holder of a random projection, at another
			// random moment.
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			name = names[rng.IntN(len(names))]
			pid = holders(t, ctx, db.Pool)[name]
			victim = procs[pid]
			require.True(t, live[pid], "round %d: %s is held by pid %d, not a live process of this test", round, name, pid)
		}

		// How long ago its heart last beat: the lease runs from then.
		var beat time.Duration
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT (extract(epoch FROM now() - max(heartbeat_at)) * 1e9)::bigint FROM sightline.processes WHERE pid = $1`, pid).Scan(&beat))
		logged := map[int]int{}
		for p := range live {
			logged[p] = len(procs[p].stderr.String())
		}
		killed := time.Now()
		require.NoError(t, victim.cmd.Process.Signal(syscall.SIGKILL))
		<-victim.done
		delete(live, pid)
		waitHeld(t, ctx, db.Pool, 30*time.Second, func(h map[string]int) bool { return holds(h, pid) == 0 })
		took := time.Since(killed)
		takeovers = append(takeovers, took)
		t.Logf("round %d: killed pid %d (holding %s, its last heartbeat %s before): every projection held again in %s", round, pid, name, beat.Round(time.Millisecond), took)
		if took > drillSlow {
			for p := range live {
				t.Logf("pid %d since the kill:\n%s", p, procs[p].stderr.String()[logged[p]:])
			}
		}

		launch()
		joined := waitHeld(t, ctx, db.Pool, time.Minute, balanced)
		t.Logf("round %d: a new process took its share in %s", round, joined)
	}

	report(t, source, takeovers, recoveries)

	t.Logf("%d rounds in %s", rounds, time.Since(began))
	ended := time.Now()
	stopTraffic()
	if err := <-traffic; err != nil && !errors.Is(err, context.Canceled) {
		require.NoError(t, err, "traffic")
	}
	if onESDB {
		waitCaughtUpOn(t, ctx, db.Pool, es, names)
		t.Logf("caught up in %s", time.Since(ended))
		copied := time.Now()
		n := copyOrderEvents(t, ctx, es, db.Pool)
		t.Logf("copied the source's %d order events to the database in %s, to fold them", n, time.Since(copied))
	} else {
		readmodeltest.WaitCaughtUp(t, ctx, db.Pool, names...)
		t.Logf("caught up in %s", time.Since(ended))
	}
	readmodeltest.RequireExact(t, ctx, db.Pool)
	for pid, p := range procs {
		// The killed ones too: what they wrote before the kill counts.
		out := p.stderr.String()
		require.NotContains(t, out, "DATA RACE", "pid %d", pid)
		require.NotContains(t, out, "panic", "pid %d", pid)
	}

	require.Len(t, takeovers, rounds)
	for i, took := range takeovers {
		require.Less(t, took, drillTakeoverMax, "takeover %d", i+1)
	}
}

// terminateSessions ends every session of the process pid (by its
// application_name) while it applies under traffic, and waits until every
// projection is held by a live process again and the checkpoint of each it
// held has moved past where it was: the batches cut off are applied again,
// by it or by a process that took over. It returns how long that took and
// whether pid still holds what it held.
func terminateSessions(t *testing.T, ctx context.Context, db *pgxpool.Pool, pid int) (time.Duration, bool) {
	t.Helper()
	var id string
	require.NoError(t, db.QueryRow(ctx, `SELECT id FROM sightline.processes WHERE pid = $1 ORDER BY heartbeat_at DESC LIMIT 1`, pid).Scan(&id))
	var held []string
	for name, p := range holders(t, ctx, db) {
		if p == pid {
			held = append(held, name)
		}
	}
	before := checkpoints(t, ctx, db)
	start := time.Now()
	var ended int
	require.NoError(t, db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`,
		projections.ApplicationName(id)).Scan(&ended))
	require.Positive(t, ended, "sessions of process %s", id)
	var h map[string]int
	var now map[string]int64
	require.Eventually(t, func() bool {
		h = holders(t, ctx, db)
		now = checkpoints(t, ctx, db)
		if len(h) != len(readmodel.All()) {
			return false
		}
		for _, name := range held {
			if now[name] <= before[name] {
				return false
			}
		}
		return true
	}, 30*time.Second, 10*time.Millisecond, "holders %v, checkpoints %v, before %v", h, now, before)
	took := time.Since(start)
	kept := true
	for _, name := range held {
		kept = kept && h[name] == pid
	}
	return took, kept
}

// checkpoints are the commit positions of the current generations.
func checkpoints(t *testing.T, ctx context.Context, db *pgxpool.Pool) map[string]int64 {
	t.Helper()
	rows, err := db.Query(ctx, `SELECT c.projection, c.commit_position FROM sightline.checkpoints c
		JOIN sightline.projections p ON p.name = c.projection AND p.generation = c.generation`)
	require.NoError(t, err)
	out := map[string]int64{}
	var name string
	var pos int64
	_, err = pgx.ForEachRow(rows, []any{&name, &pos}, func() error { out[name] = pos; return nil })
	require.NoError(t, err)
	return out
}

// waitCaughtUpOn is readmodeltest.WaitCaughtUp for an EventStoreDB source:
// every named projection's checkpoint has reached the server's head.
func waitCaughtUpOn(t *testing.T, ctx context.Context, db *pgxpool.Pool, es *esdb.Store, names []string) {
	t.Helper()
	head, err := es.Head(ctx)
	require.NoError(t, err)
	var behind int
	require.Eventually(t, func() bool {
		err := db.QueryRow(ctx, `SELECT count(*) FROM unnest($1::text[]) AS n(name)
			LEFT JOIN sightline.projections p ON p.name = n.name
			LEFT JOIN sightline.checkpoints c ON c.projection = p.name AND c.generation = p.generation
			WHERE c.commit_position IS NULL OR (c.commit_position, c.prepare_position) < ($2, $3)`,
			names, int64(head.Position.Commit), int64(head.Position.Prepare)).Scan(&behind)
		return err == nil && behind == 0
	}, time.Minute, 20*time.Millisecond, "%d projections behind the head %v", behind, head.Position)
}

// copyOrderEvents writes every order event of the EventStoreDB source into
// the database's event log, so that the fold of sightline.events
// (readmodeltest) is the fold of what the source holds, and returns how
// many it copied.
func copyOrderEvents(t *testing.T, ctx context.Context, es *esdb.Store, db *pgxpool.Pool) int {
	t.Helper()
	sub, err := es.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{readmodel.OrderStreamPrefix}})
	require.NoError(t, err)
	defer sub.Close()
	var rows [][]any
	for {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		for _, e := range msg.Events {
			md := e.Metadata
			if len(md) == 0 {
				md = []byte(`{}`)
			}
			rows = append(rows, []any{e.StreamID, int64(e.Revision), e.EventID, e.Type, string(e.Data), string(md), e.CreatedAt})
		}
		if msg.CaughtUp {
			break
		}
	}
	n, err := db.CopyFrom(ctx, pgx.Identifier{"sightline", "event_log"},
		[]string{"stream_id", "revision", "event_id", "type", "data", "metadata", "created_at"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	require.EqualValues(t, len(rows), n)
	return len(rows)
}

// report logs the takeover times' count, p50, p99 and max, and appends
// them as a line of JSON to the file SIGHTLINE_DRILL_REPORT names, if any.
func report(t *testing.T, source string, takeovers, recoveries []time.Duration) {
	t.Helper()
	ms := func(ds []time.Duration) []int64 {
		out := make([]int64, len(ds))
		for i, d := range ds {
			out[i] = d.Milliseconds()
		}
		return out
	}
	sorted := slices.Sorted(slices.Values(takeovers))
	p50, p99, maxTook := percentile(sorted, 50), percentile(sorted, 99), percentile(sorted, 100)
	t.Logf("%d takeovers (%s): p50 %s, p99 %s, max %s; %d recoveries from ended sessions: %v",
		len(takeovers), source, p50, p99, maxTook, len(recoveries), recoveries)
	path := os.Getenv("SIGHTLINE_DRILL_REPORT")
	if path == "" {
		return
	}
	line, err := json.Marshal(struct {
		Test         string  `json:"test"`
		Source       string  `json:"source"`
		TakeoversMS  []int64 `json:"takeovers_ms"`
		P50MS        int64   `json:"p50_ms"`
		P99MS        int64   `json:"p99_ms"`
		MaxMS        int64   `json:"max_ms"`
		RecoveriesMS []int64 `json:"recoveries_ms"`
	}{t.Name(), source, ms(takeovers), p50.Milliseconds(), p99.Milliseconds(), maxTook.Milliseconds(), ms(recoveries)})
	require.NoError(t, err)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	require.NoError(t, err)
	_, err = f.Write(append(line, '\n'))
	require.NoError(t, errors.Join(err, f.Close()), "SIGHTLINE_DRILL_REPORT")
}

// percentile is the nearest-rank p-th percentile of sorted, which must not
// be empty.
func percentile(sorted []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}
