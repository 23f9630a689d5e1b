package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/readmodel"
)

// floor is what PostgreSQL alone does on this machine under a write load:
// the latency of reading an order's row by primary key, with no API, HTTP
// or JSON in the way, while plain inserts go in at the live part's rate
// (measureFloor: no store and no projection work either), or while the
// live traffic is appended and projected (readOrders during it).
type floor struct {
	reads    []time.Duration // sorted
	readRate float64         // reads per second sent
	inserted float64         // inserts per second committed, by measureFloor
	cpu      string
}

// floorReadRate is the query part's rate.
const floorReadRate = 1000

// measureFloor inserts single events into a plain table (insertPlain) at
// liveRate from liveWriters writers, one transaction each, and meanwhile
// reads orders by id as readOrders does.
func measureFloor(ctx context.Context, pool *pgxpool.Pool, ids []string, d time.Duration) (floor, error) {
	if _, err := pool.Exec(ctx, createPlain); err != nil {
		return floor{}, err
	}
	defer func() {
		// Gone before the traffic starts, so that autovacuum has nothing
		// of it to do meanwhile; the database is dropped by the next run
		// if this fails.
		_, _ = pool.Exec(context.WithoutCancel(ctx), `DROP TABLE bench_plain`)
	}()
	load, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu       sync.Mutex
		inserted int
		failed   firstError
	)
	limiter := simulate.Pacer(liveRate) // as the traffic's writers are paced
	var writers sync.WaitGroup
	for w := range liveWriters {
		writers.Go(func() {
			for i := 0; limiter.Wait(load) == nil; i++ {
				if _, err := pool.Exec(load, insertPlain, fmt.Sprintf("floor-w%d-%d", w, i), uuid.NewString(), readmodel.TypeOrderPlaced, plainEvent); err != nil {
					failed.set(load, stop, err)
					return
				}
				mu.Lock()
				inserted++
				mu.Unlock()
			}
		})
	}
	time.Sleep(warmUp) // the writes settle, as the live part's traffic does

	mu.Lock()
	insertedBefore := inserted
	mu.Unlock()
	start := time.Now()
	f, err := readOrders(load, pool, ids, d)
	mu.Lock()
	f.inserted = float64(inserted-insertedBefore) / time.Since(start).Seconds()
	mu.Unlock()
	stop()
	writers.Wait()
	if err := cmp.Or(ctx.Err(), failed.get(), err); err != nil {
		return floor{}, err
	}
	return f, nil
}

// readOrders reads orders by id, round robin, at 1 000/s for warmUp and
// then d, each read on its own from the pool, as the API's reads are, and
// returns the latencies of those after warmUp (as the queries' are
// counted). A read is timed from its start to its row, as vegeta times a
// request, and goes out when it is due whatever the answers before it
// take, so that slow answers do not slow the load.
func readOrders(ctx context.Context, pool *pgxpool.Pool, ids []string, d time.Duration) (floor, error) {
	if len(ids) == 0 {
		return floor{}, errors.New("no orders to read")
	}
	load, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu     sync.Mutex
		f      floor
		failed firstError
	)
	start := time.Now()
	cpu, err := measureCPU(func() {
		var readers sync.WaitGroup
		sent := 0
		for ; load.Err() == nil; sent++ {
			due := start.Add(time.Duration(sent) * time.Second / floorReadRate)
			if due.Sub(start) >= warmUp+d {
				break
			}
			measured := due.Sub(start) >= warmUp
			time.Sleep(time.Until(due))
			id := ids[sent%len(ids)]
			readers.Go(func() {
				began := time.Now()
				rows, err := pool.Query(load, `SELECT * FROM readmodel.orders WHERE id = $1`, id)
				if err == nil {
					for rows.Next() {
					}
					err = rows.Err()
				}
				took := time.Since(began)
				if err != nil {
					failed.set(load, stop, fmt.Errorf("read order %s: %w", id, err))
					return
				}
				if measured {
					mu.Lock()
					f.reads = append(f.reads, took)
					mu.Unlock()
				}
			})
		}
		f.readRate = float64(sent) / time.Since(start).Seconds()
		readers.Wait()
	})
	if err := cmp.Or(ctx.Err(), failed.get(), err); err != nil {
		return floor{}, err
	}
	if len(f.reads) == 0 {
		return floor{}, errors.New("no read answered")
	}
	f.cpu = cpu
	slices.Sort(f.reads)
	return f, nil
}

// firstError keeps the first error of a load, and stops the load on it;
// what fails once the load is stopped is the stop's doing, not kept.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (e *firstError) set(load context.Context, stop context.CancelFunc, err error) {
	e.mu.Lock()
	if e.err == nil && load.Err() == nil {
		e.err = err
	}
	e.mu.Unlock()
	stop()
}

func (e *firstError) get() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}
