package projections

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// Kinds of drift.
const (
	// DriftMissing: a clean replay has the row; the read model lacks it.
	DriftMissing = "missing"
	// DriftExtra: the read model has a row a clean replay does not.
	DriftExtra = "extra"
	// DriftDiffers: both have the row, with different values.
	DriftDiffers = "differs"
)

// VerifyLimitDefault is how many differing rows a verify reports unless
// told otherwise.
const VerifyLimitDefault = 20

// Drift is a row where the read model and a clean replay disagree.
type Drift struct {
	Table string `json:"table"`
	Kind  string `json:"kind"`
	// Key is the row's primary key, column by column.
	Key map[string]any `json:"key"`
	// Live and Replay are the row in the read model and in the replay; nil
	// on the side that lacks it.
	Live   map[string]any `json:"live"`
	Replay map[string]any `json:"replay"`
	// Columns are those whose values differ (for DriftDiffers).
	Columns []string `json:"columns,omitempty"`
}

// VerifyReport is the outcome of a verify.
type VerifyReport struct {
	Projection string
	// Version and Generation are the active generation's, the one
	// compared; Position is where both it and the replay stood (of a
	// segmented one, each segment where its own checkpoint stood; Position
	// is the lowest of them).
	Version    int
	Generation int
	Position   eventstore.Position
	// Rows counts the rows of each table in the read model.
	Rows map[string]int64
	// Drifted counts the rows that differ; Drift lists the first of them,
	// rows missing or extra first, then rows whose values differ.
	Drifted int64
	Drift   []Drift
	Took    time.Duration
}

// Verify replays the store from the start into a scratch copy of p's
// tables and compares it with the read model, row by row by primary key:
// drift is what a read model has come to hold that a clean replay does not
// (a hand edit, a handler bug fixed since, a lost write). Both sides are
// compared at the same position: the replay catches up with the read
// model's checkpoint, then the read model's batches wait for a moment
// while the replay applies the last few events and the comparison takes
// its snapshot. The scratch copy is dropped at the end. limit bounds the
// rows listed (not those counted); cfg's batch sizes and logger apply.
//
// Every verify of a registered projection is recorded (recordVerify), for
// LastVerify to read: its report, drift or not, or the error that stopped
// it, unless that came of ctx ending. A verify that could not be recorded
// is logged and reported all the same.
func Verify(ctx context.Context, pool *pgxpool.Pool, store eventstore.Store, p Projection, limit int, cfg Config) (VerifyReport, error) {
	if err := validate(p); err != nil {
		return VerifyReport{}, err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return VerifyReport{}, err
	}
	if limit <= 0 {
		limit = VerifyLimitDefault
	}
	start := time.Now()
	report := VerifyReport{Projection: p.Name(), Rows: map[string]int64{}}
	err := verify(ctx, pool, store, p, limit, cfg, &report)
	report.Took = time.Since(start)
	// A generation is set once the projection's registration is read:
	// before, there is nothing to record a verify of.
	if report.Generation > 0 && (err == nil || ctx.Err() == nil) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), verifyRecordTimeout)
		defer cancel()
		if rerr := recordVerify(rctx, pool, verifyRecord(report, start, err), verifyHistory); rerr != nil {
			cfg.Logger.Warn("verify not recorded", "projection", report.Projection, "error", rerr)
		}
	}
	if err != nil {
		return VerifyReport{}, err
	}
	return report, nil
}

// verify is Verify, which it fills report for as it goes.
func verify(ctx context.Context, pool *pgxpool.Pool, store eventstore.Store, p Projection, limit int, cfg Config, report *VerifyReport) error {
	name := p.Name()
	var active, version int
	err := pool.QueryRow(ctx, `SELECT generation, version FROM sightline.projections WHERE name = $1`, name).Scan(&active, &version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("%w: %s", ErrNotRegistered, name)
	case err != nil:
		return err
	}
	report.Generation, report.Version = active, version
	if version != p.Version() {
		return fmt.Errorf("%w: the active generation of %s has version %d and the code %d; verify compares like with like",
			ErrVersionChanged, name, version, p.Version())
	}

	scratch, lock, err := createScratch(ctx, pool, p)
	if err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := dropGeneration(dctx, pool, name, scratch.generation); err != nil {
			cfg.Logger.Warn("scratch copy left behind; a running projector drops it", "projection", name, "generation", scratch.generation, "error", err)
		}
		lock.Close(dctx) // releases the scratch lock
	}()
	// The replay is of one segment, whatever the projection's: it stops
	// each segment's streams where the read model's segment stands.
	b := newBuilder(pool, store, p, cfg, scratch, &buildState{}, 0)
	b.segments = 1
	defer b.wg.Wait() // an ANALYZE in the background, ended by softCancel
	b.soft, b.softCancel = context.WithCancel(ctx)
	b.hard, b.hardCancel = b.soft, b.softCancel
	defer b.softCancel()

	// Catch up with the read model as it moves, without holding it back,
	// until a pass is short: what is left to apply while it waits is little.
	var commit, prepare int64
	for pass := 1; ; pass++ {
		if err := pool.QueryRow(ctx, `SELECT commit_position, prepare_position FROM sightline.checkpoints WHERE projection = $1 AND generation = $2
			ORDER BY commit_position, prepare_position LIMIT 1`, name, active).Scan(&commit, &prepare); err != nil {
			return err
		}
		began := time.Now()
		if err := b.replayTo(ctx, eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}); err != nil {
			return err
		}
		if time.Since(began) < verifyShortPass || pass == verifyMaxPasses {
			break
		}
	}
	if err := lock.Ping(ctx); err != nil {
		return fmt.Errorf("lost the connection holding the scratch copy: %w", err)
	}

	// Hold the read model's batches, apply the few events it got since,
	// and take the snapshot both are compared in. The hold has a deadline:
	// past it, verify fails rather than hold the projection back.
	hold, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer hold.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	if _, err := hold.Exec(ctx, `SET LOCAL idle_in_transaction_session_timeout = '`+verifyHold.String()+`'`); err != nil {
		return err
	}
	rows, err := hold.Query(ctx, `SELECT commit_position, prepare_position, superseded FROM sightline.checkpoints
		WHERE projection = $1 AND generation = $2 ORDER BY segment FOR SHARE`, name, active)
	if err != nil {
		return err
	}
	var segments []eventstore.Position // where each segment of the read model stands
	var superseded bool
	if _, err := pgx.ForEachRow(rows, []any{&commit, &prepare, &superseded}, func() error {
		if superseded {
			return fmt.Errorf("generation %d of %s was replaced by a rebuild while verifying; verify again", active, name)
		}
		segments = append(segments, eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)})
		return nil
	}); err != nil {
		return err
	}
	if len(segments) == 0 {
		return fmt.Errorf("generation %d of %s has no checkpoint", active, name)
	}
	at, until := slices.MinFunc(segments, eventstore.Position.Compare), slices.MaxFunc(segments, eventstore.Position.Compare)
	if len(segments) > 1 {
		b.build.segmentUntil = segments
	}
	held, cancelHold := context.WithTimeout(ctx, verifyHold-time.Second)
	err = b.replayTo(held, until)
	cancelHold()
	if err != nil {
		return fmt.Errorf("apply the last events while the read model waits: %w", err)
	}
	snap, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer snap.Rollback(context.WithoutCancel(ctx))       //nolint:errcheck // read only
	if _, err := snap.Exec(ctx, `SELECT 1`); err != nil { // the snapshot is taken here
		return err
	}
	if err := hold.Commit(ctx); err != nil {
		return err
	}

	report.Position = at
	for _, table := range p.Tables() {
		if err := compareTable(ctx, snap, schemaName(name, active), scratch.schema, table, limit, report); err != nil {
			return err
		}
	}
	// Keys first across the tables, then values.
	slices.SortStableFunc(report.Drift, func(a, b Drift) int {
		return cmp.Compare(boolInt(a.Kind == DriftDiffers), boolInt(b.Kind == DriftDiffers))
	})
	if len(report.Drift) > limit {
		report.Drift = report.Drift[:limit]
	}
	return nil
}

// createScratch creates a scratch generation of p to replay into, and holds
// its lock on a connection of its own until the caller closes it.
func createScratch(ctx context.Context, pool *pgxpool.Pool, p Projection) (registration, *pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		return registration{}, nil, err
	}
	reg, err := func() (registration, error) {
		tx, err := beginLocked(ctx, conn, p.Name())
		if err != nil {
			return registration{}, err
		}
		defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
		var gen int
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(generation), 0) + 1 FROM sightline.generations WHERE projection = $1`,
			p.Name()).Scan(&gen); err != nil {
			return registration{}, err
		}
		// A session lock: it outlives this transaction, and tells sweeps
		// that the copy is in use.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_lock(`+scratchKey("$1::text", "$2::int")+`)`,
			p.Name(), gen); err != nil {
			return registration{}, err
		}
		if err := createGeneration(ctx, tx, p, gen, genScratch, reasonVerify); err != nil {
			return registration{}, err
		}
		return registration{generation: gen, version: p.Version(), schema: schemaName(p.Name(), gen)}, tx.Commit(ctx)
	}()
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return registration{}, nil, err
	}
	return reg, conn, nil
}

// Bounds of verify's passes and of its hold on the read model.
const (
	verifyShortPass = 2 * time.Second
	verifyMaxPasses = 5
	verifyHold      = 30 * time.Second
)

// replayTo applies the scratch copy up to until exactly.
func (b *Runner) replayTo(ctx context.Context, until eventstore.Position) error {
	b.build.until = &until
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	for {
		if b.reached(until) {
			return nil
		}
		err := b.pipeline(ctx)
		switch {
		case errors.Is(err, errReachedUntil):
			continue
		case errors.Is(err, errSuperseded):
			return fmt.Errorf("the scratch copy was dropped: %w", err)
		case ctx.Err() != nil:
			return ctx.Err()
		}
		if b.reached(until) {
			return nil
		}
		d := retry.NextBackOff()
		b.log.Warn("replay restarting from its checkpoint", "error", err, "in", d)
		sleep(ctx, d)
	}
}

// compareTable compares one table of the live and scratch schemas by
// primary key, in the snapshot of tx.
func compareTable(ctx context.Context, tx pgx.Tx, liveSchema, scratchSchema, table string, limit int, report *VerifyReport) error {
	live, replay := pgx.Identifier{liveSchema, table}.Sanitize(), pgx.Identifier{scratchSchema, table}.Sanitize()
	rows, err := tx.Query(ctx, `SELECT a.attname FROM pg_index i
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
		WHERE i.indrelid = $1::regclass AND i.indisprimary
		ORDER BY array_position(i.indkey::int2[], a.attnum)`, replay)
	if err != nil {
		return err
	}
	key, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if len(key) == 0 {
		return fmt.Errorf("table %s has no primary key: verify compares rows by primary key", table)
	}
	var on, order []string
	for _, k := range key {
		col := pgx.Identifier{k}.Sanitize()
		on = append(on, "l."+col+" = s."+col)
		order = append(order, "coalesce(l."+col+", s."+col+")")
	}
	var n int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM `+live).Scan(&n); err != nil {
		return err
	}
	report.Rows[table] = n
	rows, err = tx.Query(ctx, `SELECT to_jsonb(l), to_jsonb(s), count(*) OVER ()
		FROM `+live+` l FULL JOIN `+replay+` s ON `+strings.Join(on, " AND ")+`
		WHERE to_jsonb(l) IS DISTINCT FROM to_jsonb(s)
		ORDER BY (l IS NULL OR s IS NULL) DESC, `+strings.Join(order, ", ")+`
		LIMIT $1`, limit)
	if err != nil {
		return fmt.Errorf("compare %s: %w", table, err)
	}
	var liveRow, replayRow []byte
	var total int64
	_, err = pgx.ForEachRow(rows, []any{&liveRow, &replayRow, &total}, func() error {
		d := Drift{Table: table, Key: map[string]any{}}
		if err := unmarshalRow(liveRow, &d.Live); err != nil {
			return err
		}
		if err := unmarshalRow(replayRow, &d.Replay); err != nil {
			return err
		}
		side := d.Live
		switch {
		case d.Live == nil:
			d.Kind, side = DriftMissing, d.Replay
		case d.Replay == nil:
			d.Kind = DriftExtra
		default:
			d.Kind, d.Columns = DriftDiffers, differing(d.Live, d.Replay)
		}
		for _, k := range key {
			d.Key[k] = side[k]
		}
		report.Drift = append(report.Drift, d)
		return nil
	})
	if err != nil {
		return fmt.Errorf("compare %s: %w", table, err)
	}
	report.Drifted += total
	return nil
}

func unmarshalRow(b []byte, into *map[string]any) error {
	if b == nil {
		return nil
	}
	return json.Unmarshal(b, into)
}

// differing lists the columns whose values differ, in name order.
func differing(a, b map[string]any) []string {
	var cols []string
	for k, va := range a {
		ja, _ := json.Marshal(va)
		jb, _ := json.Marshal(b[k])
		if string(ja) != string(jb) {
			cols = append(cols, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			cols = append(cols, k)
		}
	}
	slices.Sort(cols)
	return cols
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
