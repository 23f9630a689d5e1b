package main

import (
	"context"
	"encoding/json"
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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// holders says which process (by pid) holds each projection now.
func holders(t *testing.T, ctx context.Context, db *pgxpool.Pool) map[string]int {
	t.Helper()
	rows, err := db.Query(ctx, `SELECT o.projection, p.pid FROM sightline.owners o JOIN sightline.processes p ON p.id = o.owner
		WHERE NOT o.released AND p.heartbeat_at > now() - interval '3 seconds'`)
	require.NoError(t, err)
	out := map[string]int{}
	for rows.Next() {
		var name string
		var pid int
		require.NoError(t, rows.Scan(&name, &pid))
		out[name] = pid
	}
	require.NoError(t, rows.Err())
	return out
}

// waitHeld waits until every example projection is held and ok says so,
// and returns how long that took.
func waitHeld(t *testing.T, ctx context.Context, db *pgxpool.Pool, within time.Duration, ok func(map[string]int) bool) time.Duration {
	t.Helper()
	start := time.Now()
	var last map[string]int
	require.Eventually(t, func() bool {
		last = holders(t, ctx, db)
		return len(last) == 3 && ok(last)
	}, within, 10*time.Millisecond, "holders %v", last)
	return time.Since(start)
}

func holds(h map[string]int, pid int) (n int) {
	for _, p := range h {
		if p == pid {
			n++
		}
	}
	return n
}

// TestProcessesShareFailOverAndFence runs two, then three processes on
// one database under traffic. A joining process takes its share; one
// paused (SIGSTOP) past its lease loses its projections to another, and
// once resumed writes nothing twice; one killed (kill -9) is taken over
// within 5 s; one stopped (SIGTERM) hands over within a second. The read
// models equal the fold of the events at the end.
func TestProcessesShareFailOverAndFence(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 4*time.Minute)
	args := []string{"run", "--examples", "--database-url", db.URL, "--http-addr", "127.0.0.1:0", "--lease", "1s"}

	p1 := start(t, args...)
	pid1 := p1.cmd.Process.Pid
	waitHeld(t, ctx, db.Pool, time.Minute, func(h map[string]int) bool { return holds(h, pid1) == 3 })
	p2 := start(t, args...)
	pid2 := p2.cmd.Process.Pid
	waitHeld(t, ctx, db.Pool, 30*time.Second, func(h map[string]int) bool {
		return holds(h, pid1) == 2 && holds(h, pid2) == 1 || holds(h, pid1) == 1 && holds(h, pid2) == 2
	})

	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, store, simulate.Config{Orders: 2000, Customers: 100, Writers: 4, Rate: 1000, Seed: 21})
		traffic <- err
	}()
	time.Sleep(time.Second)

	// Pause the one that holds orders past its lease.
	paused, other := p1, pid2
	if holders(t, ctx, db.Pool)["orders"] == pid2 {
		paused, other = p2, pid1
	}
	require.NoError(t, paused.cmd.Process.Signal(syscall.SIGSTOP))
	took := waitHeld(t, ctx, db.Pool, 10*time.Second, func(h map[string]int) bool { return holds(h, other) == 3 })
	t.Logf("takeover from a paused owner: %s (lease 1 s)", took)
	require.Less(t, took, 5*time.Second)
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, paused.cmd.Process.Signal(syscall.SIGCONT))
	waitHeld(t, ctx, db.Pool, 30*time.Second, func(h map[string]int) bool { return holds(h, pid1) > 0 && holds(h, pid2) > 0 })

	// Kill the one that holds orders now.
	victim, survivor := p1, pid2
	if holders(t, ctx, db.Pool)["orders"] == pid2 {
		victim, survivor = p2, pid1
	}
	require.NoError(t, victim.cmd.Process.Signal(syscall.SIGKILL))
	<-victim.done
	took = waitHeld(t, ctx, db.Pool, 10*time.Second, func(h map[string]int) bool { return holds(h, survivor) == 3 })
	t.Logf("takeover from a killed owner: %s (lease 1 s)", took)
	require.Less(t, took, 5*time.Second)

	// A third joins, takes its share, and hands it over on SIGTERM.
	p3 := start(t, args...)
	pid3 := p3.cmd.Process.Pid
	waitHeld(t, ctx, db.Pool, 30*time.Second, func(h map[string]int) bool { return holds(h, pid3) > 0 })
	require.NoError(t, p3.cmd.Process.Signal(syscall.SIGTERM))
	took = waitHeld(t, ctx, db.Pool, 10*time.Second, func(h map[string]int) bool { return holds(h, survivor) == 3 })
	<-p3.done
	require.NoError(t, p3.err, p3.stderr.String())
	t.Logf("handover on SIGTERM: %s", took)
	require.Less(t, took, time.Second)

	require.NoError(t, <-traffic)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, db.Pool)
	for _, p := range []*proc{p1, p2} {
		if p == victim {
			continue
		}
		require.NotContains(t, p.stderr.String(), "DATA RACE")
		require.NotContains(t, p.stderr.String(), "panic")
	}
}

// addrOf is the address a started process listens on, from its log.
func addrOf(t *testing.T, p *proc) string {
	t.Helper()
	re := regexp.MustCompile(`http=http://(\S+)`)
	var m []string
	require.Eventually(t, func() bool { m = re.FindStringSubmatch(p.stderr.String()); return m != nil }, time.Minute, 10*time.Millisecond, "%s", p.stderr)
	return m[1]
}

// TestServeOnlyNodeAnswersFreshReads: a --role serve process applies
// nothing, yet answers every query with the staleness headers and waits
// for a write applied by another process; a --role project one serves no
// queries.
func TestServeOnlyNodeAnswersFreshReads(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 2*time.Minute)
	base := []string{"run", "--examples", "--database-url", db.URL, "--http-addr", "127.0.0.1:0", "--lease", "1s"}
	projector := start(t, append(base, "--role", "project")...)
	server := start(t, append(base, "--role", "serve")...)
	pid := projector.cmd.Process.Pid
	waitHeld(t, ctx, db.Pool, time.Minute, func(h map[string]int) bool { return holds(h, pid) == 3 })
	serveAddr, projectAddr := addrOf(t, server), addrOf(t, projector)

	for i := range 5 {
		id := fmt.Sprintf("s%d", i)
		res, err := store.Append(ctx, "order-"+id, eventstore.NoStream,
			storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":7}`))
		require.NoError(t, err)
		req, err := http.NewRequest(http.MethodGet, "http://"+serveAddr+"/v1/orders/"+id, nil)
		require.NoError(t, err)
		req.Header.Set("Projection-Min-Position", res.Position.String())
		start := time.Now()
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		require.Contains(t, string(body), `"id":"`+id+`"`)
		require.Equal(t, res.Position.String(), resp.Header.Get("Projection-Position"))
		t.Logf("read its write on the serve-only node in %s", time.Since(start))
	}
	var st struct {
		Projections []struct {
			Name  string `json:"name"`
			Owned bool   `json:"owned"`
			Owner *struct {
				PID int `json:"pid"`
			} `json:"owner"`
		} `json:"projections"`
	}
	// Each process reads who holds what every tick: poll until the
	// serve-only one has read it.
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + serveAddr + "/v1/projections")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
		if len(st.Projections) != 3 {
			return false
		}
		for _, p := range st.Projections {
			if p.Owned || p.Owner == nil || p.Owner.PID != pid {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "%+v", st)
	resp, err := http.Get("http://" + projectAddr + "/v1/orders/s0")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "a projecting-only process serves no queries")
}

// TestSegmentedProjectionAcrossProcesses: a YAML projection with
// segments: 3, run by two processes, has its segments applied by both at
// once, each segment by one of them; one killed, the other takes its
// segments up; the read model counts every event once, and the status,
// from either process and from the command line, shows every segment's
// owner.
func TestSegmentedProjectionAcrossProcesses(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 3*time.Minute)
	spec, err := os.ReadFile("../../examples/projections/order_activity.yaml")
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "order_activity.yaml"),
		[]byte(strings.Replace(string(spec), "version: 1\n", "version: 1\nsegments: 3\n", 1)), 0o644))
	args := []string{"run", "--projections", dir, "--database-url", db.URL, "--http-addr", "127.0.0.1:0", "--lease", "1s"}
	p1, p2 := start(t, args...), start(t, args...)
	segmentHolders := func() map[int]int {
		rows, err := db.Pool.Query(ctx, `SELECT o.segment, p.pid FROM sightline.owners o JOIN sightline.processes p ON p.id = o.owner
			WHERE o.projection = 'order_activity' AND NOT o.released AND p.heartbeat_at > now() - interval '1 second'`)
		require.NoError(t, err)
		out := map[int]int{}
		var seg, pid int
		_, err = pgx.ForEachRow(rows, []any{&seg, &pid}, func() error { out[seg] = pid; return nil })
		require.NoError(t, err)
		return out
	}
	var held map[int]int
	require.Eventually(t, func() bool {
		held = segmentHolders()
		return len(held) == 3 && holds(toNames(held), p1.cmd.Process.Pid) > 0 && holds(toNames(held), p2.cmd.Process.Pid) > 0
	}, time.Minute, 10*time.Millisecond, "segments held: %v\n%s\n%s", held, p1.stderr, p2.stderr)

	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, store, simulate.Config{Orders: 600, Customers: 50, Writers: 4, Rate: 1000, Seed: 31})
		traffic <- err
	}()
	time.Sleep(500 * time.Millisecond)
	require.NoError(t, p2.cmd.Process.Signal(syscall.SIGKILL))
	<-p2.done
	require.Eventually(t, func() bool { held = segmentHolders(); return holds(toNames(held), p1.cmd.Process.Pid) == 3 },
		10*time.Second, 10*time.Millisecond, "segments held: %v", held)
	require.NoError(t, <-traffic)

	// Caught up: every segment's checkpoint at the head.
	require.Eventually(t, func() bool {
		var behind int
		require.NoError(t, db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM sightline.unsequenced) + count(*) FILTER (WHERE c.commit_position < s.head)
			FROM sightline.checkpoints c JOIN sightline.projections p ON p.name = c.projection AND p.generation = c.generation, sightline.sequencer s
			WHERE c.projection = 'order_activity'`).Scan(&behind))
		return behind == 0
	}, time.Minute, 20*time.Millisecond)
	var differ, orders int
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM (
			(SELECT substr(stream_id, 7), count(*) FROM sightline.events WHERE stream_id LIKE 'order-%' GROUP BY 1
			 EXCEPT SELECT order_id, events FROM readmodel.order_activity)
			UNION ALL
			(SELECT order_id, events FROM readmodel.order_activity
			 EXCEPT SELECT substr(stream_id, 7), count(*) FROM sightline.events WHERE stream_id LIKE 'order-%' GROUP BY 1)) d`).Scan(&differ))
	require.Zero(t, differ, "order_activity counts each order's events once")
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT count(*) FROM readmodel.order_activity`).Scan(&orders))
	require.Equal(t, 600, orders)

	var st struct {
		Position string `json:"position"`
		Owned    bool   `json:"owned"`
		Segments []struct {
			Segment  int    `json:"segment"`
			Position string `json:"position"`
			Owned    bool   `json:"owned"`
			Owner    *struct {
				PID int `json:"pid"`
			} `json:"owner"`
		} `json:"segments"`
	}
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addrOf(t, p1) + "/v1/projections/order_activity")
		require.NoError(t, err)
		defer resp.Body.Close()
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&st))
		if len(st.Segments) != 3 || !st.Owned {
			return false
		}
		for i, seg := range st.Segments {
			if seg.Segment != i || !seg.Owned || seg.Owner == nil || seg.Owner.PID != p1.cmd.Process.Pid {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "%+v", st)

	out, errOut, code := runCLI(t, "status", "--database-url", db.URL)
	require.Zero(t, code, errOut)
	require.Contains(t, out, "3 segments:")
	for seg := range 3 {
		require.Regexp(t, fmt.Sprintf(`segment %d\s+\S+\s+\S+ \(pid %d on`, seg, p1.cmd.Process.Pid), out)
	}
	require.NotContains(t, p1.stderr.String(), "DATA RACE")
}

// toNames keys segment holders like holders' projections, for holds.
func toNames(bySegment map[int]int) map[string]int {
	out := map[string]int{}
	for seg, pid := range bySegment {
		out[fmt.Sprint(seg)] = pid
	}
	return out
}
