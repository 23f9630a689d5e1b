package pgstore

import (
	"context"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// sequencer gives committed events their positions. Appenders commit their
// rows without a position, then kick the sequencer and wait for it; one run
// positions everything committed so far, so concurrent appenders share runs
// the way concurrent commits share a WAL flush. Across processes, the
// advisory lock inside sightline.position_events makes sequencers take turns.
//
// Appenders wait for their last event's ID, not its row id: an append lost in
// a database crash before its acknowledgement may see its row id reused
// after recovery, never its event ID.
type sequencer struct {
	pool   *pgxpool.Pool
	cfg    Config
	hub    *hub
	tail   *tail           // where a run leaves the rows it positioned, for live subscribers
	closed <-chan struct{} // closed by Store.Close

	wake chan struct{}

	// Touched only by run.
	head uint64 // the highest position seen, for analyzeIfGrown

	positioned           atomic.Int64    // events positioned since the last vacuum, by runs and groups
	runs                 atomic.Int64    // the sequencer's own runs that positioned events (Store.SequencerRuns)
	wg                   *sync.WaitGroup // Store.Close waits for background work
	analyzing, vacuuming atomic.Bool
	vacuumAfter          atomic.Value // time.Time: no vacuum before

	mu       sync.Mutex
	waiters  map[uuid.UUID][]chan placing // event ID → appenders waiting for its position
	inFlight int                          // runs under way: the sequencer's, and groups that may position their own
	running  chan struct{}                // closed once no run is under way, the last having kept its rows and published; nil between runs
}

// placing is what an appender waiting for its event learns.
type placing struct {
	pos uint64
	err error // eventstore.ErrAppendLost when the event is gone
}

func newSequencer(pool *pgxpool.Pool, cfg Config, h *hub, t *tail, closed <-chan struct{}, wg *sync.WaitGroup) *sequencer {
	q := &sequencer{pool: pool, cfg: cfg, hub: h, tail: t, closed: closed, wg: wg, wake: make(chan struct{}, 1), waiters: map[uuid.UUID][]chan placing{}}
	q.vacuumAfter.Store(time.Time{})
	return q
}

// kick asks for a run without waiting for it.
func (q *sequencer) kick() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// wait returns the position of the committed event id.
func (q *sequencer) wait(ctx context.Context, id uuid.UUID) (uint64, error) {
	ch := make(chan placing, 1)
	q.mu.Lock()
	q.waiters[id] = append(q.waiters[id], ch)
	q.mu.Unlock()
	q.kick()
	var err error
	select {
	case p := <-ch:
		return p.pos, p.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-q.closed:
		err = eventstore.ErrClosed
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	chans := q.waiters[id]
	for i, c := range chans {
		if c == ch {
			q.waiters[id] = append(chans[:i], chans[i+1:]...)
			break
		}
	}
	if len(q.waiters[id]) == 0 {
		delete(q.waiters, id)
	}
	return 0, err
}

func (q *sequencer) run(ctx context.Context) {
	sweep := time.NewTicker(q.cfg.SweepInterval)
	defer sweep.Stop()
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(10*time.Millisecond), backoff.WithMaxInterval(2*time.Second), backoff.WithMaxElapsedTime(0))
	q.analyzeIfNever(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		case <-sweep.C:
			if head, _, _ := q.hub.known(); head > 0 {
				q.analyzeIfGrown(ctx, head) // positioned by groups, which do not analyze
			}
			q.vacuum(ctx)
		}
		for {
			err := q.runOnce(ctx)
			if err == nil {
				retry.Reset()
				break
			}
			if ctx.Err() != nil {
				return
			}
			d := retry.NextBackOff()
			q.cfg.Logger.Warn("sequencer run failed; retrying", "error", err, "in", d)
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
	}
}

// vacuumAfter is how many events this sequencer positions before it vacuums
// sightline.unsequenced at its next sweep.
const vacuumAfter = 1000

// vacuum keeps sightline.unsequenced small. Every event passes through it,
// so it is a queue: each run deletes what it positions and the next run's
// index scan, from the lowest id, walks over the dead entries the deletes
// left. Autovacuum comes round once a minute at best; by then a run at
// 2 000 events/s was taking over a millisecond, most of it in those entries.
//
// It runs in the background, because a vacuum of a queue that a bulk load
// has filled takes a second or more, and without truncating the table,
// which would take a lock that every append waits for.
//
// A vacuum that takes long (a queue a bulk load filled, or a transaction
// left open elsewhere that keeps the dead rows from being removed) puts the
// next one off by ten times as long, so that vacuuming never takes more
// than a tenth of a core.
func (q *sequencer) vacuum(ctx context.Context) {
	if q.positioned.Load() < vacuumAfter || time.Now().Before(q.vacuumAfter.Load().(time.Time)) {
		return
	}
	started := q.background(ctx, &q.vacuuming, func() {
		start := time.Now()
		if _, err := q.pool.Exec(ctx, `VACUUM (SKIP_LOCKED, TRUNCATE false) sightline.unsequenced`); err != nil && ctx.Err() == nil {
			q.cfg.Logger.Warn("could not vacuum sightline.unsequenced; sequencer runs slow down until autovacuum does", "error", err)
		}
		q.vacuumAfter.Store(time.Now().Add(10 * time.Since(start)))
	})
	if started {
		q.positioned.Store(0)
	}
}

// background runs work in a goroutine that Store.Close waits for, unless
// the previous work flagged by busy is still under way; it reports whether
// it started it.
func (q *sequencer) background(ctx context.Context, busy *atomic.Bool, work func()) bool {
	if !busy.CompareAndSwap(false, true) {
		return false
	}
	q.wg.Add(1) // run's own count keeps the group above zero: Close waits for this
	go func() {
		defer q.wg.Done()
		defer busy.Store(false)
		work()
	}()
	return true
}

// The store's tables are analyzed by the sequencer while they are young,
// each time the head crosses a power of two from analyzeFrom to
// analyzeUntil; autovacuum's thresholds keep up after that. Subscribers
// read through prepared statements whose generic plans were made when the
// tables were empty: a sequential scan of the whole event log for every
// read, which stays cached until something analyzes the tables. Autovacuum
// comes round after a minute at best; on a new store at 2 000 events/s,
// reads were taking 30 ms by then, and growing.
const (
	analyzeFrom  = 1 << 10
	analyzeUntil = 1 << 24
)

func (q *sequencer) analyzeIfGrown(ctx context.Context, head uint64) {
	prev := q.head
	if head <= prev {
		return
	}
	q.head = head
	if prev == 0 || head < analyzeFrom || prev >= analyzeUntil || bits.Len64(prev) == bits.Len64(head) {
		return // the first run (see analyzeIfNever), too small, old enough, or no power of two crossed
	}
	q.analyze(ctx)
}

// analyzeIfNever analyzes the store's tables when they hold events but were
// never analyzed, as after a restore, and notes the head for
// analyzeIfGrown.
func (q *sequencer) analyzeIfNever(ctx context.Context) {
	var head int64
	var never bool
	if err := q.pool.QueryRow(ctx, `SELECT s.head, t.last_analyze IS NULL AND t.last_autoanalyze IS NULL
		FROM sightline.sequencer s, pg_stat_user_tables t
		WHERE t.relid = 'sightline.positions'::regclass`).Scan(&head, &never); err != nil {
		return // the database is not there yet: analyzeIfGrown starts from the first run
	}
	q.head = uint64(head)
	if never && head >= analyzeFrom {
		q.analyze(ctx)
	}
}

// analyze runs ANALYZE on the tables subscribers read, in the background so
// that sequencing goes on meanwhile.
func (q *sequencer) analyze(ctx context.Context) {
	_ = q.background(ctx, &q.analyzing, func() {
		for _, table := range []string{"sightline.positions", "sightline.event_log"} {
			if _, err := q.pool.Exec(ctx, `ANALYZE (SKIP_LOCKED) `+table); err != nil {
				if ctx.Err() == nil {
					q.cfg.Logger.Warn("could not analyze the event store's tables; reads may be slow until autovacuum does", "table", table, "error", err)
				}
				return
			}
		}
	})
}

// runOnce positions every event committed before it started, in runs of at
// most SequenceBatch, then answers the appenders waiting for them.
func (q *sequencer) runOnce(ctx context.Context) error {
	q.mu.Lock()
	waiting := make([]uuid.UUID, 0, len(q.waiters))
	for id := range q.waiters {
		waiting = append(waiting, id)
	}
	q.mu.Unlock()

	for {
		n, head, err := q.sequence(ctx)
		if err != nil {
			return err
		}
		if head > 0 {
			q.analyzeIfGrown(ctx, head)
		}
		if n < q.cfg.SequenceBatch {
			break
		}
	}
	// Every event awaited before this run was committed before it began, so
	// it has a position now, given by this run or by another process's; or
	// the database lost it in a crash, before its append was acknowledged.
	q.mu.Lock()
	var left []uuid.UUID
	for _, id := range waiting {
		if _, ok := q.waiters[id]; ok {
			left = append(left, id)
		}
	}
	q.mu.Unlock()
	if len(left) == 0 {
		return nil
	}
	rows, err := q.pool.Query(ctx, `SELECT w.id, e.id IS NOT NULL, p.position
		FROM unnest($1::uuid[]) AS w(id)
		LEFT JOIN sightline.event_log e ON e.event_id = w.id
		LEFT JOIN sightline.positions p ON p.event_row = e.id`, left)
	if err != nil {
		return err
	}
	type found struct {
		ID     uuid.UUID
		Exists bool
		Pos    *int64
	}
	events, err := pgx.CollectRows(rows, pgx.RowToStructByPos[found])
	if err != nil {
		return err
	}
	var highest int64
	for _, e := range events {
		if e.Pos != nil {
			highest = max(highest, *e.Pos)
		}
	}
	if highest > 0 {
		q.hub.publish(uint64(highest), time.Now()) // as sequence does, before the appenders hear
	}
	var unplaced error
	for _, e := range events {
		switch {
		case !e.Exists:
			q.resolve(e.ID, placing{err: eventstore.ErrAppendLost})
		case e.Pos != nil:
			q.resolve(e.ID, placing{pos: uint64(*e.Pos)})
		default:
			unplaced = fmt.Errorf("event %s has no position after a sequencer run", e.ID)
		}
	}
	return unplaced
}

// sequence runs sightline.position_events_rows once and returns how many
// events it positioned and the highest position it gave. Appenders learn their
// positions only once the run has committed: rows arrive before the commit,
// and a run that fails after them gives its positions out again.
//
// The run's commit must reach the disk before anyone is told a position:
// appends are acknowledged on it (see unflushed). So it is synchronous even
// where the database, role or connection turned synchronous_commit off; any
// other setting (on, local, remote_write, remote_apply) already waits for
// the local flush and is kept.
func (q *sequencer) sequence(ctx context.Context) (int, uint64, error) {
	defer q.beginRun()()
	b := &pgx.Batch{} // one round trip and one implicit transaction
	b.Queue(`SELECT set_config('synchronous_commit', 'local', true) WHERE current_setting('synchronous_commit') = 'off'`)
	var done []positioned
	b.Queue(`SELECT event_id, position, stream_id, revision, type, data, metadata, created_at
		FROM sightline.position_events_rows($1, $2)`, q.cfg.SequenceBatch, q.maxRows()).Query(func(rows pgx.Rows) (err error) {
		done, err = scanPositioned(rows)
		return err
	})
	if err := q.pool.SendBatch(ctx, b).Close(); err != nil { // the commit's outcome
		return 0, 0, err
	}
	if len(done) > 0 {
		q.runs.Add(1)
	}
	return len(done), q.publish(done), nil
}

// maxRows is how many rows a run returns for this process's subscribers:
// none when it has none.
func (q *sequencer) maxRows() int {
	if q.tail.open.Load() > 0 {
		return q.cfg.ReadBatch
	}
	return 0
}

// positioned is a row of sightline.position_events_rows, in value types,
// as readAfter scans: no allocation per column.
type positioned struct {
	ID       uuid.UUID
	Pos      int64
	Stream   pgtype.Text
	Revision pgtype.Int8
	Type     pgtype.Text
	Data     []byte
	Metadata []byte
	Created  pgtype.Timestamptz
}

func scanPositioned(rows pgx.Rows) ([]positioned, error) {
	return pgx.CollectRows(rows, pgx.RowToStructByPos[positioned])
}

// publish hands what a committed run positioned, in position order, to
// the live subscribers (the tail, when the run returned its rows, and the
// hub) and then to the appenders waiting for it; it returns the run's
// head, 0 if it positioned nothing. Runs end in any order: the tail keeps
// the latest and the hub the highest head.
func (q *sequencer) publish(done []positioned) uint64 {
	if len(done) == 0 {
		return 0
	}
	q.positioned.Add(int64(len(done)))
	head := uint64(done[len(done)-1].Pos)
	// The run's positions follow the head it found: its rows, when it
	// returned them, are everything from there to its head.
	r := tailRead{from: uint64(done[0].Pos) - 1, head: head, scanned: head, events: make([]eventstore.RecordedEvent, 0, len(done))}
	for _, p := range done {
		if !p.Stream.Valid || !p.Revision.Valid || !p.Type.Valid || !p.Created.Valid {
			break // a bulk run, without its rows
		}
		r.events = append(r.events, eventstore.RecordedEvent{
			StreamID: p.Stream.String, Revision: uint64(p.Revision.Int64), Position: eventstore.At(uint64(p.Pos)),
			EventID: p.ID.String(), Type: p.Type.String, Data: p.Data, Metadata: p.Metadata, CreatedAt: p.Created.Time,
		})
	}
	at := time.Now()
	if len(r.events) == len(done) {
		q.tail.keep(r)
		at = r.events[len(r.events)-1].CreatedAt
	}
	// Before the appenders hear: a caller that reads KnownHead once its
	// append has returned sees the append's position.
	q.hub.publish(head, at)
	for _, p := range done {
		q.resolve(p.ID, placing{pos: uint64(p.Pos)})
	}
	return head
}

// beginRun marks a run under way, for inRun, until the returned func is
// called.
func (q *sequencer) beginRun() (end func()) {
	q.mu.Lock()
	if q.inFlight == 0 {
		q.running = make(chan struct{})
	}
	q.inFlight++
	q.mu.Unlock()
	return func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if q.inFlight--; q.inFlight == 0 {
			close(q.running)
			q.running = nil
		}
	}
}

// inRun returns a channel closed once the runs under way, if any, have
// kept their rows in the tail and published their heads; nil between
// runs.
func (q *sequencer) inRun() <-chan struct{} {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.running
}

func (q *sequencer) resolve(id uuid.UUID, p placing) {
	q.mu.Lock()
	chans, ok := q.waiters[id]
	if ok {
		delete(q.waiters, id)
	}
	q.mu.Unlock()
	for _, ch := range chans {
		ch <- p
	}
}
