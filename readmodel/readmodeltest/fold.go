package readmodeltest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/readmodel"
)

// The folds below compute each read model straight from sightline.events,
// in SQL that shares nothing with the projections' Go code. An event the
// projection has parked, held or skipped (sightline.parked) is not in its
// read model, so it is not in its fold either.
func orderEvents(projection string) string {
	return `SELECT substr(stream_id, 7) AS id, * FROM sightline.events e
		WHERE stream_id LIKE 'order-%' AND NOT EXISTS (
			SELECT FROM sightline.parked k JOIN sightline.projections p ON p.name = k.projection AND p.generation = k.generation
			WHERE k.projection = '` + projection + `' AND k.stream_id = e.stream_id AND k.revision = e.revision
			  AND k.state <> 'applied')`
}

var folds = map[string][2]string{
	"orders": {
		`WITH ev AS (` + orderEvents("orders") + `)
		SELECT id,
			(array_agg(data->>'customer_id') FILTER (WHERE type = 'OrderPlaced'))[1] AS customer_id,
			(ARRAY['placed','paid','shipped','delivered','cancelled'])[max(CASE type
				WHEN 'OrderPlaced' THEN 1 WHEN 'OrderPaid' THEN 2 WHEN 'OrderShipped' THEN 3
				WHEN 'OrderDelivered' THEN 4 WHEN 'OrderCancelled' THEN 5 END)] AS status,
			coalesce(max((data->>'total')::bigint) FILTER (WHERE type = 'OrderPlaced'), 0) AS total,
			coalesce(sum((data->>'amount')::bigint) FILTER (WHERE type = 'OrderPaid'), 0)::bigint AS paid,
			min(created_at) FILTER (WHERE type = 'OrderPlaced') AS placed_at,
			max(created_at) AS updated_at,
			max(revision) AS revision
		FROM ev GROUP BY id`,
		`SELECT id, customer_id, status, total, paid, placed_at, updated_at, revision FROM readmodel.orders`,
	},
	"customer_stats": {
		`WITH ev AS (` + orderEvents("customer_stats") + `),
		placed AS (SELECT id, data->>'customer_id' AS customer_id FROM ev WHERE type = 'OrderPlaced')
		SELECT placed.customer_id,
			count(*) FILTER (WHERE type = 'OrderPlaced') AS orders,
			coalesce(sum((data->>'amount')::bigint) FILTER (WHERE type = 'OrderPaid'), 0)::bigint AS lifetime_total,
			count(*) FILTER (WHERE type = 'OrderCancelled') AS cancelled
		FROM ev JOIN placed USING (id) GROUP BY placed.customer_id`,
		`SELECT customer_id, orders, lifetime_total, cancelled FROM readmodel.customer_stats`,
	},
	"daily_sales": {
		`WITH ev AS (` + orderEvents("daily_sales") + `)
		SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
			count(*) FILTER (WHERE type = 'OrderPlaced') AS orders,
			coalesce(sum((data->>'amount')::bigint) FILTER (WHERE type = 'OrderPaid'), 0)::bigint AS revenue,
			count(*) FILTER (WHERE type = 'OrderCancelled') AS cancelled
		FROM ev GROUP BY 1`,
		`SELECT day, orders, revenue, cancelled FROM readmodel.daily_sales`,
	},
}

// Diff returns, per read model, up to limit rows that differ from the fold
// of sightline.events, each prefixed with "missing" (in the fold, not in
// the read model) or "extra" (the other way round). Empty means exact.
func Diff(ctx context.Context, db *pgxpool.Pool, limit int) (map[string][]string, error) {
	return DiffOf(ctx, db, limit, Names()...)
}

// DiffOf is Diff of the named example read models only.
func DiffOf(ctx context.Context, db *pgxpool.Pool, limit int, names ...string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, name := range names {
		q, ok := folds[name]
		if !ok {
			return nil, fmt.Errorf("%s is not an example read model", name)
		}
		rows, err := db.Query(ctx, fmt.Sprintf(`
			(SELECT 'missing' AS side, f::text FROM ((%[1]s) EXCEPT ALL (%[2]s)) f LIMIT %[3]d)
			UNION ALL
			(SELECT 'extra', r::text FROM ((%[2]s) EXCEPT ALL (%[1]s)) r LIMIT %[3]d)`, q[0], q[1], limit))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		var side, row string
		if _, err := pgx.ForEachRow(rows, []any{&side, &row}, func() error {
			out[name] = append(out[name], side+" "+row)
			return nil
		}); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	return out, nil
}

// RequireExact fails t unless every example read model equals the fold of
// sightline.events and no event was parked: a test of faults that are not
// the events' (lost connections, restarts, redeliveries) must park nothing.
func RequireExact(t testing.TB, ctx context.Context, db *pgxpool.Pool) {
	t.Helper()
	var parked int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM sightline.parked`).Scan(&parked); err != nil {
		t.Fatal(err)
	}
	if parked > 0 {
		t.Fatalf("%d events were parked; nothing in this test should be", parked)
	}
	RequireExactBesideParked(t, ctx, db)
}

// RequireExactBesideParked is RequireExact for tests that park events on
// purpose: the read models must equal the fold of the events they have
// applied, leaving out those parked, held or skipped.
func RequireExactBesideParked(t testing.TB, ctx context.Context, db *pgxpool.Pool) {
	t.Helper()
	diff, err := Diff(ctx, db, 10)
	if err != nil {
		t.Fatalf("compare read models with the events: %v", err)
	}
	var b strings.Builder
	for name, rows := range diff {
		fmt.Fprintf(&b, "\n%s differs from the fold of sightline.events:\n  %s", name, strings.Join(rows, "\n  "))
	}
	if b.Len() > 0 {
		t.Fatal(b.String())
	}
	var events int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM sightline.events`).Scan(&events); err != nil {
		t.Fatal(err)
	}
	if events == 0 {
		t.Fatal("no events: comparing empty read models proves nothing")
	}
}

// WaitCaughtUp waits until every named projection's checkpoint has reached
// the store's head and the store has no events waiting for a position.
// It fails t when ctx ends first.
func WaitCaughtUp(t testing.TB, ctx context.Context, db *pgxpool.Pool, names ...string) {
	t.Helper()
	for {
		var behind int
		err := db.QueryRow(ctx, `
			SELECT (SELECT count(*) FROM sightline.unsequenced)
			     + (SELECT count(*) FROM unnest($1::text[]) AS n(name)
			        LEFT JOIN sightline.projections p ON p.name = n.name
			        LEFT JOIN sightline.checkpoints c ON c.projection = p.name AND c.generation = p.generation
			        WHERE c.commit_position IS NULL OR c.commit_position < (SELECT head FROM sightline.sequencer))`,
			names).Scan(&behind)
		if err == nil && behind == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("projections %v did not catch up: %v (last error: %v)", names, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Names are the example projections' names, for WaitCaughtUp.
func Names() []string {
	var out []string
	for _, p := range readmodel.All() {
		out = append(out, p.Name())
	}
	return out
}
