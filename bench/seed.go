package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/simulate"
)

// seed fills the store with simulated order traffic, about n events, in
// large transactions (each order's events in one append) unless it holds
// that many already; it returns the events the store holds.
func seed(ctx context.Context, pool *pgxpool.Pool, store *pgstore.Store, n int) (int64, error) {
	have, err := sequenced(ctx, pool)
	if err != nil || have >= int64(n) {
		return have, err
	}
	if have > 0 {
		return 0, fmt.Errorf("the store holds %d events, fewer than %d: drop the database to seed it again", have, n)
	}
	start := time.Now()
	sim := simulate.Config{Customers: 10_000, Seed: 1}
	var next, written atomic.Int64
	const perTx = 200
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for written.Load() < int64(n) && ctx.Err() == nil {
				first := int(next.Add(perTx)) - perTx
				tx, err := pool.Begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				var k int64
				for i := first; i < first+perTx; i++ {
					stream, events := simulate.Order(sim, i)
					if _, err := store.AppendTx(ctx, tx, stream, eventstore.NoStream, events...); err != nil {
						tx.Rollback(ctx) //nolint:errcheck // the error says more
						errs <- err
						return
					}
					k += int64(len(events))
				}
				if err := tx.Commit(ctx); err != nil {
					errs <- err
					return
				}
				if w := written.Add(k); w/100_000 != (w-k)/100_000 {
					fmt.Fprintf(os.Stderr, "bench: seeded %d events\n", w)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	// Wait until the sequencer has given every event its position.
	for {
		var waiting int64
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM sightline.unsequenced`).Scan(&waiting); err != nil {
			return 0, err
		}
		if waiting == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	have, err = sequenced(ctx, pool)
	fmt.Fprintf(os.Stderr, "bench: seeded %d events in %s\n", have, time.Since(start).Round(time.Second))
	return have, err
}

func sequenced(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	var head int64
	err := pool.QueryRow(ctx, `SELECT head FROM sightline.sequencer`).Scan(&head)
	return head, err
}
