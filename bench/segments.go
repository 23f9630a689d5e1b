package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// orderActivity4 is examples/projections/order_activity.yaml in 4
// segments, as order_activity_4.
//
//go:embed projections/order_activity_4.yaml
var orderActivity4 string

const (
	segmentedName = "order_activity_4"
	referenceName = "order_activity_1"
	segmentsLine  = "segments: 4"
)

// segmentedYAML is orderActivity4 with segments: n; without the key for 0.
func segmentedYAML(n int) (string, error) {
	if !strings.Contains(orderActivity4, "\n"+segmentsLine+"\n") {
		return "", fmt.Errorf("projections/order_activity_4.yaml has no line %q", segmentsLine)
	}
	line := ""
	if n > 0 {
		line = fmt.Sprintf("segments: %d\n", n)
	}
	return strings.Replace(orderActivity4, segmentsLine+"\n", line, 1), nil
}

// referenceYAML is the same projection without segments, as
// order_activity_1.
func referenceYAML() (string, error) {
	s, err := segmentedYAML(0)
	return strings.ReplaceAll(s, segmentedName, referenceName), err
}

// errSegmentsIgnored says the binary took the segments key and ran the
// projection as one segment.
var errSegmentsIgnored = errors.New("segments: the binary accepts the key but runs the projection as one segment")

// benchSegments measures order_activity in cfg.segments segments with 1, 2
// and 3 processes, against the same projection without segments with one:
// how fast it catches up with a store of cfg.segmentEvents events, and how
// fast it rebuilds. A binary that refuses the segments key (or ignores it)
// gets a row that says so, and the part goes on.
func benchSegments(ctx context.Context, cfg config, rep *report) error {
	dir, err := os.MkdirTemp("", "sightline-bench-segments-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	segmented, err := segmentedYAML(cfg.segments)
	if err != nil {
		return err
	}
	reference, err := referenceYAML()
	if err != nil {
		return err
	}
	segDir, refDir := filepath.Join(dir, "segmented"), filepath.Join(dir, "reference")
	for d, body := range map[string]string{segDir: segmented, refDir: reference} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, "order_activity.yaml"), []byte(body), 0o644); err != nil {
			return err
		}
	}
	checkURL, err := databaseURL(cfg.server, segmentsDB)
	if err != nil {
		return err
	}
	// The binary checks the file as it would load it: one without segments
	// refuses the key.
	if out, err := exec.CommandContext(ctx, cfg.binary, "check", segDir, "--database-url", checkURL).CombinedOutput(); err != nil {
		if strings.Contains(string(out), "segments") {
			notSupported(rep, strings.TrimSpace(string(out)))
			return nil
		}
		return fmt.Errorf("sightline check %s: %w\n%s", segDir, err, out)
	}
	events, err := seedSegments(ctx, cfg)
	if err != nil {
		return err
	}
	segments := max(cfg.segments, 1)
	ref, err := segmentRunOf(ctx, cfg, refDir, referenceName, 1, 1, events)
	if err != nil {
		return fmt.Errorf("without segments: %w", err)
	}
	var runs []segmentRun
	for n := 1; n <= 3; n++ {
		r, err := segmentRunOf(ctx, cfg, segDir, segmentedName, n, segments, events)
		if errors.Is(err, errSegmentsIgnored) {
			notSupported(rep, err.Error())
			return nil
		}
		if err != nil {
			return fmt.Errorf("%d segments, %d processes: %w", segments, n, err)
		}
		runs = append(runs, r)
	}
	note := ""
	if cfg.segments == 0 {
		note = " (--segments 0: the key omitted, one segment: a test of the bench, not of segments)"
	}
	rep.add(fmt.Sprintf("segments, reference: order_activity without segments, 1 process started on a copy of a store of %d order events, no traffic; live: events/s from the process's start until its checkpoint reached the head (held after %s; CPU cores: %s); rebuild: events/s from POST /v1/projections/%s/rebuild until sightline.projections has the new generation (CPU cores: %s)",
		events, ref.settled.Round(time.Millisecond), ref.liveCPU, referenceName, ref.rebuildCPU),
		"live "+perSecond(ref.liveRate())+", rebuild "+perSecond(ref.rebuildRate()), "", "", "", true)
	for i, r := range runs {
		n := i + 1
		rep.add(fmt.Sprintf("segments, live: the same in %d segments%s, %d process(es) started at once: events/s from their start until every segment's checkpoint reached the head (segments shared after %s, by %d processes at the end; CPU cores: %s)",
			segments, note, n, r.settled.Round(time.Millisecond), r.by, r.liveCPU),
			perSecond(r.liveRate()), "no segments "+perSecond(ref.liveRate()), fmt.Sprintf("%.2f×", r.liveRate()/ref.liveRate()), "", true)
		rep.add(fmt.Sprintf("segments, rebuild: the same %d events in %d segments%s, %d process(es) (CPU cores: %s)", r.events, segments, note, n, r.rebuildCPU),
			perSecond(r.rebuildRate()), "no segments "+perSecond(ref.rebuildRate()), fmt.Sprintf("%.2f×", r.rebuildRate()/ref.rebuildRate()), "", true)
	}
	return nil
}

func notSupported(rep *report, why string) {
	fmt.Fprintf(os.Stderr, "bench: segments: not supported by this binary (%s)\n", why)
	rep.add("segments: order_activity in segments with 1, 2 and 3 processes", "segments: not supported by this binary", "", "", "", true)
}

// segmentRun is one projection on a fresh copy of the seeded store with
// some processes: its catch-up from the first event, then its rebuild.
type segmentRun struct {
	events     int64
	caughtUp   time.Duration // from starting the processes until every segment's checkpoint reached the head
	settled    time.Duration // from starting them until they shared the segments
	liveCPU    string
	by         int // processes holding its segments at the end
	rebuilt    time.Duration
	rebuildCPU string
}

func (r segmentRun) liveRate() float64    { return float64(r.events) / r.caughtUp.Seconds() }
func (r segmentRun) rebuildRate() float64 { return float64(r.events) / r.rebuilt.Seconds() }

// Databases of the segments measurements: a store seeded once and kept,
// copied afresh for each measurement.
const (
	segmentsSeedDB = "sightline_bench_segments_seed"
	segmentsDB     = "sightline_bench_segments"
)

// seedSegments makes sure the seed database holds cfg.segmentEvents events
// (seeding it again when it holds fewer) and is vacuumed, so that its
// copies have nothing for autovacuum to do; it returns the events it holds.
func seedSegments(ctx context.Context, cfg config) (int64, error) {
	for fresh := false; ; fresh = true {
		db, err := openDatabase(ctx, cfg, segmentsSeedDB, fresh)
		if err != nil {
			return 0, err
		}
		have, err := sequenced(ctx, db.pool)
		if err == nil && have > 0 && have < int64(cfg.segmentEvents) && !fresh {
			db.Close()
			continue
		}
		if err == nil {
			have, err = seed(ctx, db.pool, db.store, cfg.segmentEvents)
		}
		if err == nil {
			_, err = db.pool.Exec(ctx, `VACUUM (ANALYZE)`)
		}
		db.Close()
		return have, err
	}
}

// copySeed replaces the measurement database with a copy of the seed.
func copySeed(ctx context.Context, cfg config) error {
	admin, err := pgxpool.New(ctx, cfg.server)
	if err != nil {
		return err
	}
	defer admin.Close()
	if _, err := admin.Exec(ctx, `DROP DATABASE IF EXISTS `+segmentsDB+` WITH (FORCE)`); err != nil {
		return err
	}
	_, err = admin.Exec(ctx, `CREATE DATABASE `+segmentsDB+` TEMPLATE `+segmentsSeedDB)
	return err
}

// segmentRunOf runs the projection of dir, name, in segments, with n
// processes started at once on a fresh copy of the seeded store, and
// times until every segment's checkpoint reaches the head (the live path,
// from the first event); then it rebuilds the projection. It checks the
// read model against the events after each.
func segmentRunOf(ctx context.Context, cfg config, dir, name string, n, segments int, events int64) (_ segmentRun, err error) {
	if err := copySeed(ctx, cfg); err != nil {
		return segmentRun{}, err
	}
	db, err := openDatabase(ctx, cfg, segmentsDB, false)
	if err != nil {
		return segmentRun{}, err
	}
	defer db.Close()
	ps, err := newProcs(cfg.binary)
	if err != nil {
		return segmentRun{}, err
	}
	defer func() { ps.finish(err) }()
	var want []seg
	for s := range segments {
		want = append(want, seg{projection: name, segment: s})
	}
	r := segmentRun{events: events}
	var live []*sightlineProc
	r.liveCPU, err = cpuOf(func() []int { return pidsOf(live) }, func() error {
		start := time.Now()
		var mu sync.Mutex
		var wg sync.WaitGroup
		var errs []error
		for range n {
			wg.Go(func() {
				p, err := ps.start(ctx, "--projections", dir, "--database-url", db.url)
				mu.Lock()
				defer mu.Unlock()
				if p != nil {
					live = append(live, p)
				}
				errs = append(errs, err)
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return err
		}
		_, err := waitSteady(ctx, db, want, live, n, 20*time.Second)
		if err != nil {
			if ignored(ctx, db, name, segments) {
				return errSegmentsIgnored
			}
			return err
		}
		r.settled = time.Since(start)
		if err := waitCheckpoints(ctx, db, name, segments, events, live); err != nil {
			return err
		}
		r.caughtUp = time.Since(start)
		return nil
	})
	if err != nil {
		return r, err
	}
	h, err := holders(ctx, db.pool)
	if err != nil {
		return r, err
	}
	_, r.by = heldBy(h, want, alive(live))
	if err := exact(ctx, db, name); err != nil {
		return r, fmt.Errorf("projected live: %w", err)
	}

	r.rebuildCPU, err = cpuOf(func() []int { return pidsOf(live) }, func() error {
		start := time.Now()
		gen, err := requestRebuild(ctx, live[0], name)
		if err != nil {
			return err
		}
		for {
			var active int
			if err := db.pool.QueryRow(ctx, `SELECT generation FROM sightline.projections WHERE name = $1`, name).Scan(&active); err != nil {
				return err
			}
			if active == gen {
				r.rebuilt = time.Since(start)
				return nil
			}
			if time.Since(start) > 5*time.Minute {
				return fmt.Errorf("the rebuild of %s (generation %d) did not finish within 5 minutes", name, gen)
			}
			for _, p := range live {
				if !p.running() {
					return fmt.Errorf("sightline (pid %d) exited: %v\n%s", p.pid, p.err, p.logTail())
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err != nil {
		return r, fmt.Errorf("rebuild: %w", err)
	}
	if err := exact(ctx, db, name); err != nil {
		return r, fmt.Errorf("rebuilt: %w", err)
	}
	for _, p := range live {
		if err := p.stop(); err != nil {
			return r, err
		}
	}
	fmt.Fprintf(os.Stderr, "bench: %s, %d processes: caught up at %s (shares settled in %s), rebuilt at %s\n", name, n, perSecond(r.liveRate()), r.settled.Round(time.Millisecond), perSecond(r.rebuildRate()))
	return r, nil
}

// ignored says whether the processes run the projection as one segment
// although its file asks for more.
func ignored(ctx context.Context, db *benchDB, name string, segments int) bool {
	h, err := holders(ctx, db.pool)
	if err != nil || segments < 2 {
		return false
	}
	if _, ok := h[seg{projection: name}]; !ok {
		return false
	}
	for s := range h {
		if s.projection == name && s.segment != 0 {
			return false
		}
	}
	return true
}

// waitCheckpoints waits until the projection's active generation has a
// checkpoint for each of its segments, every one at head or past it.
func waitCheckpoints(ctx context.Context, db *benchDB, name string, segments int, head int64, live []*sightlineProc) error {
	start := time.Now()
	for {
		at, n, err := checkpoint(ctx, db.pool, name)
		if err != nil {
			return err
		}
		if n == segments && at >= head {
			return nil
		}
		if time.Since(start) > 5*time.Minute {
			return fmt.Errorf("%s not caught up within 5 minutes: %d checkpoints of %d segments, the lowest at %d of %d", name, n, segments, at, head)
		}
		for _, p := range live {
			if !p.running() {
				return fmt.Errorf("sightline (pid %d) exited: %v\n%s", p.pid, p.err, p.logTail())
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// requestRebuild asks p to rebuild the projection and returns the
// generation being built.
func requestRebuild(ctx context.Context, p *sightlineProc, name string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+p.addr+"/v1/projections/"+name+"/rebuild", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var rb struct {
		Generation int `json:"generation"`
	}
	if resp.StatusCode != http.StatusAccepted {
		return 0, fmt.Errorf("POST /v1/projections/%s/rebuild: %s", name, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&rb); err != nil {
		return 0, err
	}
	return rb.Generation, nil
}

// exact checks the read model of an order_activity copy against a fold of
// the events in SQL: one row per order, its event count, last event, last
// carrier and time.
func exact(ctx context.Context, db *benchDB, name string) error {
	table := pgx.Identifier{"readmodel", name}.Sanitize()
	var differ, rows int64
	err := db.pool.QueryRow(ctx, fmt.Sprintf(`WITH want AS (
			SELECT substr(stream_id, 7) AS order_id,
				(array_agg(type ORDER BY revision DESC))[1] AS last_event,
				count(*) AS events,
				(array_agg(data->>'carrier' ORDER BY revision DESC) FILTER (WHERE type = 'OrderShipped'))[1] AS carrier,
				(array_agg(created_at ORDER BY revision DESC))[1] AS last_at
			FROM sightline.events WHERE stream_id LIKE 'order-%%' GROUP BY stream_id),
		have AS (SELECT order_id, last_event, events, carrier, last_at FROM %s)
		SELECT (SELECT count(*) FROM ((TABLE want EXCEPT ALL TABLE have) UNION ALL (TABLE have EXCEPT ALL TABLE want)) d), (SELECT count(*) FROM have)`, table)).Scan(&differ, &rows)
	if err != nil {
		return err
	}
	if differ > 0 {
		return fmt.Errorf("%s differs from a fold of the events in %d rows (of %d)", table, differ, rows)
	}
	return nil
}
