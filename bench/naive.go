package main

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/readmodel"
)

// naive is the orders projection as most hand-written projectors do it:
// one transaction per event that reads the checkpoint and the order's row,
// writes the row back and writes the checkpoint. It runs for d over the
// first events of the store and returns its events per second.
func naive(ctx context.Context, pool *pgxpool.Pool, d time.Duration) (float64, error) {
	if _, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS bench_naive CASCADE; CREATE SCHEMA bench_naive;
		CREATE TABLE bench_naive.checkpoint (id int PRIMARY KEY, position bigint NOT NULL);
		INSERT INTO bench_naive.checkpoint VALUES (1, 0)`); err != nil {
		return 0, err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	if err := (readmodel.Orders{}).Setup(ctx, tx, "bench_naive"); err != nil {
		tx.Rollback(ctx) //nolint:errcheck // the error says more
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	// Events are read before the clock starts: what is timed is applying.
	rows, err := pool.Query(ctx, `SELECT position, stream_id, revision, type, data, created_at FROM sightline.events ORDER BY position LIMIT 200000`)
	if err != nil {
		return 0, err
	}
	type event struct {
		position int64
		e        eventstore.RecordedEvent
	}
	var events []event
	var ev event
	var revision int64
	if _, err := pgx.ForEachRow(rows, []any{&ev.position, &ev.e.StreamID, &revision, &ev.e.Type, &ev.e.Data, &ev.e.CreatedAt}, func() error {
		ev.e.Revision = uint64(revision)
		events = append(events, ev)
		return nil
	}); err != nil {
		return 0, err
	}
	start := time.Now()
	n := 0
	for _, ev := range events {
		if time.Since(start) > d {
			break
		}
		if err := naiveApply(ctx, pool, ev.position, ev.e); err != nil {
			return 0, err
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

func naiveApply(ctx context.Context, pool *pgxpool.Pool, position int64, e eventstore.RecordedEvent) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var checkpoint int64
		if err := tx.QueryRow(ctx, `SELECT position FROM bench_naive.checkpoint WHERE id = 1 FOR UPDATE`).Scan(&checkpoint); err != nil {
			return err
		}
		if position <= checkpoint {
			return nil
		}
		id := readmodel.OrderID(e.StreamID)
		o := orderRow{}
		err := tx.QueryRow(ctx, `SELECT customer_id, status, total, paid, placed_at, updated_at, revision FROM bench_naive.orders WHERE id = $1`, id).
			Scan(&o.customer, &o.status, &o.total, &o.paid, &o.placedAt, &o.updatedAt, &o.revision)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		f := ordersFold{orders: map[string]*orderRow{id: &o}}
		if err := f.add(e); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO bench_naive.orders (id, customer_id, status, total, paid, placed_at, updated_at, revision)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
			ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, status = excluded.status, total = excluded.total,
				paid = excluded.paid, placed_at = excluded.placed_at, updated_at = excluded.updated_at, revision = excluded.revision`,
			id, o.customer, o.status, o.total, o.paid, o.placedAt, o.updatedAt, o.revision); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE bench_naive.checkpoint SET position = $1 WHERE id = 1`, position)
		return err
	})
}
