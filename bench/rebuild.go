package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
)

// benchRebuild measures rebuilds of each example projection by the
// sightline binary against the ceiling (fold in memory, COPY the final
// rows) and, for orders, a naive one-transaction-per-event consumer.
func benchRebuild(ctx context.Context, cfg config, rep *report) error {
	db, err := openDatabase(ctx, cfg, fmt.Sprintf("sightline_bench_%d", cfg.events), false)
	if err != nil {
		return err
	}
	defer db.Close()
	pool, dbURL := db.pool, db.url
	events, err := seed(ctx, pool, db.store, cfg.events)
	if err == nil {
		err = register(ctx, cfg, pool, db.store, readmodel.All())
	}
	db.store.Close() // the rebuilds run in processes of their own
	if err != nil {
		return err
	}
	conf, err := rebuildConfig()
	if err != nil {
		return err
	}
	defer os.Remove(conf)

	label := fmt.Sprintf("%.1fM events", float64(events)/1e6)
	var ordersRate float64
	for _, p := range readmodel.All() {
		var rates, cpu, pgCores []float64
		var rss int64
		for range cfg.runs {
			r, err := rebuildOnce(ctx, cfg.binary, []string{"--examples"}, dbURL, conf, pool, p.Name(), events)
			if err != nil {
				return err
			}
			rates, cpu, pgCores = append(rates, r.rate), append(cpu, r.cpuShare), append(pgCores, r.pgCores)
			rss = max(rss, r.rssKB)
		}
		var ceilings []float64
		for range cfg.runs {
			d, err := ceiling(ctx, pool, p)
			if err != nil {
				return fmt.Errorf("ceiling of %s: %w", p.Name(), err)
			}
			ceilings = append(ceilings, float64(events)/d.Seconds())
		}
		rate, ceil := median(rates), median(ceilings)
		if p.Name() == "orders" {
			ordersRate = rate
		}
		pg := "PostgreSQL not measured"
		if median(pgCores) >= 0 {
			pg = fmt.Sprintf("PostgreSQL %.2f cores", median(pgCores))
		}
		rep.add(fmt.Sprintf("rebuild %s, %s (median of %d; RSS peak %d MiB; sightline process CPU %.0f%% of wall, %s)", p.Name(), label, cfg.runs, rss/1024, 100*median(cpu), pg),
			perSecond(rate), "ceiling "+perSecond(ceil), fmt.Sprintf("%.0f%% of ceiling", 100*rate/ceil),
			"≥ 50k/s and ≥ 50% of ceiling", rate >= 50_000 && rate >= ceil/2)
		if cfg.events >= 5_000_000 {
			rep.add(fmt.Sprintf("rebuild %s, %s: RSS peak", p.Name(), label), fmt.Sprintf("%d MiB", rss/1024), "", "", "< 256 MiB", rss < 256*1024)
		}
	}
	naiveRate, err := naive(ctx, pool, cfg.phase)
	if err != nil {
		return fmt.Errorf("naive consumer: %w", err)
	}
	rep.add("rebuild orders against a naive consumer (a transaction per event: read the row, write it, write the checkpoint)",
		perSecond(ordersRate), "naive "+perSecond(naiveRate), fmt.Sprintf("%.0f×", ordersRate/naiveRate), "≥ 30×", ordersRate >= 30*naiveRate)
	return nil
}

// rebuildConfig writes a configuration file for the rebuilds, and returns
// its path: replaced generations are dropped by the next rebuild.
func rebuildConfig() (string, error) {
	f, err := os.CreateTemp("", "sightline-bench-*.yaml")
	if err != nil {
		return "", err
	}
	_, err = f.WriteString("rebuild_grace: 1ms\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// register makes the first generations of those of ps that have none,
// empty: a rebuild needs a projection that has run.
func register(ctx context.Context, cfg config, pool *pgxpool.Pool, store eventstore.Store, ps []projections.Projection) error {
	var names []string
	for _, p := range ps {
		names = append(names, p.Name())
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM sightline.projections WHERE name = ANY($1)`, names).Scan(&n); err != nil || n == len(ps) {
		return err
	}
	d, err := projections.NewDaemon(pool, storetest.Silent{Store: store}, ps, projections.Config{Logger: cfg.logger})
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	return d.Stop(ctx)
}

type rebuildRun struct {
	rate     float64 // events per second over the process's wall time
	rssKB    int64
	cpuShare float64 // the sightline process's CPU time over the wall time
	pgCores  float64 // the local PostgreSQL server's CPU time over the wall time; -1 when not local
}

// rebuildOnce runs 'BINARY rebuild NAME --wait FLAGS...' and times it from
// the process's start to its exit, the way a user would.
func rebuildOnce(ctx context.Context, binary string, flags []string, dbURL, conf string, pool *pgxpool.Pool, name string, events int64) (rebuildRun, error) {
	// A rebuild an interrupted bench left half done would be resumed, and
	// look faster than it is.
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM sightline.generations WHERE projection = $1 AND state = 'building'`, name).Scan(&left); err != nil {
		return rebuildRun{}, err
	}
	if left > 0 {
		return rebuildRun{}, fmt.Errorf("a rebuild of %s was left half done by an interrupted run; finish it first ('sightline rebuild %s --wait --database-url %s')", name, name, dbURL)
	}
	args := append([]string{"rebuild", name, "--wait"}, flags...)
	cmd := exec.CommandContext(ctx, binary, append(args, "--database-url", dbURL, "--config", conf, "--log-level", "warn")...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) } // it stops cleanly, to resume later
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cpuFrom, err := sampleCPU()
	if err != nil {
		return rebuildRun{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return rebuildRun{}, err
	}
	// The peak RSS is read from /proc while it runs: the rusage of a child
	// counts the memory of the parent it was forked from.
	done := make(chan struct{})
	peak := make(chan int64, 1)
	go func() {
		var hwm int64
		for {
			hwm = max(hwm, vmHWM(cmd.Process.Pid))
			select {
			case <-done:
				peak <- hwm
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	rss := <-peak
	if err != nil {
		return rebuildRun{}, fmt.Errorf("sightline rebuild %s: %w\n%s", name, err, out.String())
	}
	wall := time.Since(start)
	cpuTo, err := sampleCPU()
	if err != nil {
		return rebuildRun{}, err
	}
	pgCores := -1.0
	if cpuFrom.postgresReadable && cpuTo.postgresReadable {
		pgCores = (cpuTo.postgres - cpuFrom.postgres) / wall.Seconds()
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return rebuildRun{rate: float64(events) / wall.Seconds(), rssKB: rss, cpuShare: cpu.Seconds() / wall.Seconds(), pgCores: pgCores}, nil
}

// vmHWM is the peak resident set of process pid, in KiB, as Linux reports
// it; 0 once the process is gone.
func vmHWM(pid int) int64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscan(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), &kb)
			return kb
		}
	}
	return 0
}

// ceiling is the fastest way PostgreSQL and Go write p's final rows on this
// machine: read every event in order, fold them in memory, COPY the rows
// into fresh tables of the same shape, build the indexes, commit. It checks
// that the rows equal the read model sightline built.
func ceiling(ctx context.Context, pool *pgxpool.Pool, p projections.Projection) (time.Duration, error) {
	const schema = "bench_ceiling"
	if _, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+schema+` CASCADE`); err != nil {
		return 0, err
	}
	start := time.Now()
	f := newFold(p.Name())
	rows, err := pool.Query(ctx, `SELECT stream_id, revision, type, data, created_at FROM sightline.events ORDER BY position`)
	if err != nil {
		return 0, err
	}
	var e eventstore.RecordedEvent
	var revision int64
	if _, err := pgx.ForEachRow(rows, []any{&e.StreamID, &revision, &e.Type, &e.Data, &e.CreatedAt}, func() error {
		e.Revision = uint64(revision)
		return f.add(e)
	}); err != nil {
		return 0, err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	if _, err := tx.Exec(ctx, `CREATE SCHEMA `+schema); err != nil {
		return 0, err
	}
	if err := p.Setup(ctx, tx, schema); err != nil {
		return 0, err
	}
	table, columns, data := f.rows()
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{schema, table}, columns, pgx.CopyFromRows(data)); err != nil {
		return 0, err
	}
	if ix, ok := p.(projections.Indexer); ok {
		for _, stmt := range ix.Indexes(schema) {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return 0, err
			}
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	took := time.Since(start)
	var differ int64
	if err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM ((TABLE %[1]s EXCEPT ALL TABLE %[2]s) UNION ALL (TABLE %[2]s EXCEPT ALL TABLE %[1]s)) d`,
		pgx.Identifier{schema, table}.Sanitize(), pgx.Identifier{"readmodel", table}.Sanitize())).Scan(&differ); err != nil {
		return 0, err
	}
	if differ > 0 {
		return 0, fmt.Errorf("the ceiling's %s differs from sightline's in %d rows: one of them is wrong", table, differ)
	}
	return took, nil
}
