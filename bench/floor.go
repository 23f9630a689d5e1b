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
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/time/rate"

	"github.com/sightlinehq/sightline/readmodel"
)

// floor is what PostgreSQL alone does on this machine under the live
// part's write rate: the latency of a bare primary-key read while plain
// inserts go in, with no store, projector, API, HTTP or JSON in the way.
// It is the least that reading a read model from this server costs under
// that load.
type floor struct {
	reads    []time.Duration // sorted
	readRate float64         // reads per second sent
	inserted float64         // inserts per second committed
	cpu      string
}

// floorReadRate is the query part's rate.
const floorReadRate = 1000

// measureFloor inserts single events into a plain table of the event log's
// shape at liveRate from liveWriters writers (as the append part's plain
// inserts do, one transaction each), and meanwhile reads orders by id,
// round robin, at 1 000/s, each read on its own from the pool, timed from
// its start to its row as vegeta times a request. The reads go out on
// schedule whatever the answers take, so slow answers do not slow the
// load.
func measureFloor(ctx context.Context, pool *pgxpool.Pool, ids []string, d time.Duration) (floor, error) {
	if len(ids) == 0 {
		return floor{}, errors.New("floor: no orders to read")
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE bench_plain (LIKE sightline.event_log INCLUDING ALL)`); err != nil {
		return floor{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	data := []byte(`{"customer_id":"c-00042","items":[{"sku":"SKU-0042","qty":2,"price":1250}],"total":2500}`)
	limiter := rate.NewLimiter(liveRate, liveWriters)
	var inserted int
	var mu sync.Mutex
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil && ctx.Err() == nil {
			firstErr = err
		}
		cancel()
	}
	var writers sync.WaitGroup
	for w := range liveWriters {
		writers.Go(func() {
			for i := 0; ; i++ {
				if limiter.Wait(ctx) != nil {
					return
				}
				if _, err := pool.Exec(ctx, `INSERT INTO bench_plain (stream_id, revision, event_id, type, data) VALUES ($1, 0, $2, $3, $4)`,
					fmt.Sprintf("floor-w%d-%d", w, i), uuid.NewString(), readmodel.TypeOrderPlaced, data); err != nil {
					fail(err)
					return
				}
				mu.Lock()
				inserted++
				mu.Unlock()
			}
		})
	}
	time.Sleep(2 * time.Second) // the writes settle, as the live part's traffic does

	var f floor
	mu.Lock()
	insertedBefore := inserted
	mu.Unlock()
	start := time.Now()
	var err error
	f.cpu, err = measureCPU(func() {
		var readers sync.WaitGroup
		sent := 0
		for ; ctx.Err() == nil; sent++ {
			// Each read is due at its place in the schedule; one that is
			// late goes at once, as vegeta's pacer sends.
			due := start.Add(time.Duration(sent) * time.Second / floorReadRate)
			if due.Sub(start) >= d {
				break
			}
			time.Sleep(time.Until(due))
			id := ids[sent%len(ids)]
			readers.Go(func() {
				began := time.Now()
				var got string
				if err := pool.QueryRow(ctx, `SELECT id FROM readmodel.orders WHERE id = $1`, id).Scan(&got); err != nil {
					fail(fmt.Errorf("read order %s: %w", id, err))
					return
				}
				took := time.Since(began)
				mu.Lock()
				f.reads = append(f.reads, took)
				mu.Unlock()
			})
		}
		readers.Wait()
		f.readRate = float64(sent) / d.Seconds()
	})
	mu.Lock()
	f.inserted = float64(inserted-insertedBefore) / time.Since(start).Seconds()
	mu.Unlock()
	cancel()
	writers.Wait()
	if err = cmp.Or(firstErr, err); err != nil {
		return floor{}, err
	}
	// Gone before the traffic starts, so that autovacuum has nothing of it
	// to do meanwhile.
	if _, err := pool.Exec(context.WithoutCancel(ctx), `DROP TABLE bench_plain`); err != nil {
		return floor{}, err
	}
	slices.Sort(f.reads)
	return f, nil
}

// orderIDs returns up to n ids of orders in the read model.
func orderIDs(ctx context.Context, pool *pgxpool.Pool, n int) ([]string, error) {
	rows, err := pool.Query(ctx, `SELECT id FROM readmodel.orders LIMIT $1`, n)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
