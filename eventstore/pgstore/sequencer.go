package pgstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
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
	closed <-chan struct{} // closed by Store.Close

	wake chan struct{}

	mu      sync.Mutex
	waiters map[uuid.UUID][]chan placing // event ID → appenders waiting for its position
}

// placing is what an appender waiting for its event learns.
type placing struct {
	pos uint64
	err error // eventstore.ErrAppendLost when the event is gone
}

func newSequencer(pool *pgxpool.Pool, cfg Config, h *hub, closed <-chan struct{}) *sequencer {
	return &sequencer{pool: pool, cfg: cfg, hub: h, closed: closed, wake: make(chan struct{}, 1), waiters: map[uuid.UUID][]chan placing{}}
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-q.wake:
		case <-sweep.C:
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
			q.hub.publish(head)
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

// sequence runs sightline.position_events once and returns how many events
// it positioned and the highest position it gave. Appenders learn their
// positions only once the run has committed: rows arrive before the commit,
// and a run that fails after them gives its positions out again.
func (q *sequencer) sequence(ctx context.Context) (int, uint64, error) {
	rows, err := q.pool.Query(ctx, `SELECT event_id, position FROM sightline.position_events($1)`, q.cfg.SequenceBatch)
	if err != nil {
		return 0, 0, err
	}
	type placed struct {
		ID  uuid.UUID
		Pos int64
	}
	done, err := pgx.CollectRows(rows, pgx.RowToStructByPos[placed]) // closes rows: the commit's outcome
	if err != nil {
		return 0, 0, err
	}
	head := uint64(0)
	for _, p := range done {
		head = max(head, uint64(p.Pos))
		q.resolve(p.ID, placing{pos: uint64(p.Pos)})
	}
	return len(done), head, nil
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
