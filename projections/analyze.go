package projections

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// analyzeFirst is how many events a projector applies to a generation
// before it first analyzes the generation's tables; it analyzes them again
// each time that count doubles.
const analyzeFirst = 1_000

// analyzeInline is how many events a generation filling up applies before
// its ANALYZEs run in the background rather than between two batches.
const analyzeInline = 64_000

// analyzeWhileGrowing keeps the planner's statistics of a generation close
// to its size while it is young. Without them, the plans cached while its
// tables were empty (sequential scans matching each row against a whole
// batch's streams) grow quadratically slower until autovacuum gets round to
// them: a rebuild took minutes instead of seconds, and a new projection
// keeping up with 2 000 events/s spent 3 ms reading its stream revisions
// per batch within its first minute.
//
// A generation filling up (a rebuild, a catch-up) analyzes between two
// batches while it is young (up to analyzeInline events), since the next
// batches need the statistics most and its tables are small. Past that, and
// for one keeping up with live traffic, it analyzes in the background, so
// that no batch waits (a rebuild of customer_stats from 1M events spent a
// tenth of its time waiting for ANALYZEs of its three tables), and only
// tables that have changed by more rows than they held when last analyzed:
// the count restarts with every process, and a mature read model is left
// to autovacuum.
func (r *Runner) analyzeWhileGrowing(ctx context.Context, reg registration, applied int, filling bool) {
	r.sinceAttach += applied
	if r.sinceAttach < r.nextAnalyze {
		return
	}
	r.nextAnalyze = 2 * r.sinceAttach
	if filling && r.sinceAttach <= analyzeInline {
		if err := analyze(ctx, r.pool, reg.schema, false); err != nil && ctx.Err() == nil {
			r.log.Warn("could not analyze the read model's tables", "error", err)
		}
		return
	}
	if !r.analyzing.CompareAndSwap(false, true) {
		return
	}
	r.wg.Add(1) // in run's (or runBuild's) goroutine, before its Wait
	go func() {
		defer r.wg.Done()
		defer r.analyzing.Store(false)
		if err := analyze(r.soft, r.pool, reg.schema, true); err != nil && r.soft.Err() == nil {
			r.log.Warn("could not analyze the read model's tables", "error", err)
		}
	}()
}

// analyze analyzes the tables of schema; with grownOnly, only those never
// analyzed or changed by more rows than they held when last analyzed.
func analyze(ctx context.Context, pool *pgxpool.Pool, schema string, grownOnly bool) error {
	rows, err := pool.Query(ctx, `SELECT format('%I.%I', t.schemaname, t.relname)
		FROM pg_stat_user_tables t JOIN pg_class c ON c.oid = t.relid
		WHERE t.schemaname = $1
		  AND (NOT $2 OR t.last_analyze IS NULL AND t.last_autoanalyze IS NULL OR t.n_mod_since_analyze > greatest(c.reltuples, 0))`,
		schema, grownOnly)
	if err != nil {
		return err
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, t := range tables {
		if _, err := pool.Exec(ctx, `ANALYZE (SKIP_LOCKED) `+t); err != nil {
			return err
		}
	}
	return nil
}
