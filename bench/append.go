package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

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
	var stores, plains []float64
	round := cfg.phase / 3
	for r := range cfg.runs {
		s, err := writeFor(ctx, round, func(ctx context.Context, w, i int) error {
			_, err := store.Append(ctx, fmt.Sprintf("order-r%d-w%d-%d", r, w, i), eventstore.NoStream,
				eventstore.EventData{EventID: uuid.NewString(), Type: readmodel.TypeOrderPlaced, Data: plainEvent})
			return err
		})
		if err != nil {
			return err
		}
		p, err := writeFor(ctx, round, func(ctx context.Context, w, i int) error {
			_, err := pool.Exec(ctx, insertPlain, fmt.Sprintf("order-r%d-w%d-%d", r, w, i), uuid.NewString(), readmodel.TypeOrderPlaced, plainEvent)
			return err
		})
		if err != nil {
			return err
		}
		stores, plains = append(stores, s), append(plains, p)
	}
	s, p := median(stores), median(plains)
	rep.add(fmt.Sprintf("append, %d concurrent single-event writers (median of %d rounds of %s)", appendWriters, cfg.runs, round),
		perSecond(s), "plain inserts "+perSecond(p), fmt.Sprintf("%.2f×", s/p), "≥ 0.5× (SPEC §1)", s >= p/2)
	return nil
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
