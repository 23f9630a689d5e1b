package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/readmodel"
)

// appendWriters is how many concurrent single-event writers SPEC §1 names.
const appendWriters = 8

// The plain inserts that appends are measured against, and that the
// queries' floor writes: single events into a table of the event log's
// shape (columns, keys, indexes), with no sequencing.
const (
	createPlain = `CREATE TABLE bench_plain (LIKE sightline.event_log INCLUDING ALL)`
	insertPlain = `INSERT INTO bench_plain (stream_id, revision, event_id, type, data) VALUES ($1, 0, $2, $3, $4)`
)

// plainEvent is the data of every event the plain inserts and the
// measured appends write.
var plainEvent = []byte(`{"customer_id":"c-00042","items":[{"sku":"SKU-0042","qty":2,"price":1250}],"total":2500}`)

// benchAppend measures appends of single events by 8 concurrent writers to
// the embedded store against plain concurrent inserts of the same rows
// into a table of the same shape (columns, keys, indexes), in alternating
// rounds on the same database.
func benchAppend(ctx context.Context, cfg config, rep *report) error {
	db, err := openDatabase(ctx, cfg, "sightline_bench_append", true)
	if err != nil {
		return err
	}
	defer db.Close()
	pool, store := db.pool, db.store
	if _, err := pool.Exec(ctx, createPlain); err != nil {
		return err
	}
	// How often the store's functions run, per appended event: groups
	// try to position their own events (position_events_try) and the
	// sequencer's runs position the rest (position_events_rows).
	if _, err := pool.Exec(ctx, `ALTER DATABASE sightline_bench_append SET track_functions = 'pl'`); err != nil {
		return err
	}
	pool.Reset()
	var groups, positionings, runs int64
	var appended float64
	var stores, plains []float64
	var storeCPU, plainCPU appendCPU
	round := cfg.phase / 3
	for r := range cfg.runs {
		g0, r0, err := functionCalls(ctx, pool)
		s0 := store.SequencerRuns()
		if err != nil {
			return err
		}
		before := storeCPU.writes
		s, err := storeCPU.writeFor(ctx, round, func(ctx context.Context, w, i int) error {
			_, err := store.Append(ctx, fmt.Sprintf("order-r%d-w%d-%d", r, w, i), eventstore.NoStream,
				eventstore.EventData{EventID: uuid.NewString(), Type: readmodel.TypeOrderPlaced, Data: plainEvent})
			return err
		})
		if err != nil {
			return err
		}
		time.Sleep(time.Second) // the backends' statistics are flushed
		g1, r1, err := functionCalls(ctx, pool)
		if err != nil {
			return err
		}
		groups, positionings, runs, appended = groups+g1-g0, positionings+r1-r0, runs+store.SequencerRuns()-s0, appended+storeCPU.writes-before
		p, err := plainCPU.writeFor(ctx, round, func(ctx context.Context, w, i int) error {
			_, err := pool.Exec(ctx, insertPlain, fmt.Sprintf("order-r%d-w%d-%d", r, w, i), uuid.NewString(), readmodel.TypeOrderPlaced, plainEvent)
			return err
		})
		if err != nil {
			return err
		}
		stores, plains = append(stores, s), append(plains, p)
	}
	s, p := median(stores), median(plains)
	rep.add(fmt.Sprintf("append, %d concurrent single-event writers (median of %d rounds of %s; CPU per event, all rounds: %s; plain inserts %s)", appendWriters, cfg.runs, round, storeCPU, plainCPU)+fmt.Sprintf("; per appended event: %.2f groups, %.2f positionings (groups that took the lock, and sequencer runs), %.2f sequencer runs that positioned events", float64(groups)/appended, float64(positionings)/appended, float64(runs)/appended),
		perSecond(s), "plain inserts "+perSecond(p), fmt.Sprintf("%.2f×", s/p), "≥ 0.5× (SPEC §1)", s >= p/2)
	return nil
}

// functionCalls returns how many groups of appends have gone to the server
// (each calls position_events_try) and how many times events were
// positioned (position_events_rows, by a group that took the lock or by a
// sequencer run, empty ones included), from pg_stat_user_functions.
func functionCalls(ctx context.Context, pool *pgxpool.Pool) (groups, positionings int64, err error) {
	err = pool.QueryRow(ctx, `SELECT
			coalesce(sum(calls) FILTER (WHERE funcname = 'position_events_try'), 0),
			coalesce(sum(calls) FILTER (WHERE funcname = 'position_events_rows'), 0)
		FROM pg_stat_user_functions WHERE schemaname = 'sightline'`).Scan(&groups, &positionings)
	return groups, positionings, err
}

// appendCPU adds up how the machine's CPU went over rounds of writes, per
// write: what limits appends on a machine whose cores PostgreSQL shares.
type appendCPU struct {
	writes, wall                 float64
	postgres, bench, idle, cores float64
	postgresUnread               bool // some round could not read PostgreSQL's processes
}

// writeFor runs writeFor and adds its round's CPU.
func (c *appendCPU) writeFor(ctx context.Context, d time.Duration, write func(ctx context.Context, w, i int) error) (float64, error) {
	from, err := sampleCPU()
	if err != nil {
		return 0, err
	}
	rate, err := writeFor(ctx, d, write)
	if err != nil {
		return 0, err
	}
	to, err := sampleCPU()
	if err != nil {
		return 0, err
	}
	wall := to.at.Sub(from.at).Seconds()
	c.writes += rate * wall
	c.wall += wall
	c.postgres += to.postgres - from.postgres
	c.bench += to.bench - from.bench
	c.idle += to.idle - from.idle
	c.cores += to.busy + to.idle - from.busy - from.idle
	c.postgresUnread = c.postgresUnread || !from.postgresReadable || !to.postgresReadable
	return rate, nil
}

// String gives the CPU time per write of PostgreSQL and of the bench's
// process (the store runs in it), and the idle share of the machine.
func (c appendCPU) String() string {
	if c.writes == 0 || c.cores == 0 {
		return "not measured"
	}
	pg := "PostgreSQL not measured"
	if !c.postgresUnread {
		pg = fmt.Sprintf("PostgreSQL %.0f µs", 1e6*c.postgres/c.writes)
	}
	return fmt.Sprintf("%s, the bench process %.0f µs, machine idle %.0f%%", pg, 1e6*c.bench/c.writes, 100*c.idle/c.cores)
}

// writeFor runs write from appendWriters goroutines for d and returns the
// writes per second.
func writeFor(ctx context.Context, d time.Duration, write func(ctx context.Context, w, i int) error) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var n atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, appendWriters)
	start := time.Now()
	for w := range appendWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				if err := write(ctx, w, i); err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return float64(n.Load()) / time.Since(start).Seconds(), <-errs
}
