package pgstore

import (
	"cmp"
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// hub holds one LISTEN connection per Store and tells waiting subscribers
// that the head has moved ('sightline_events', sent by every sequencer run
// that positioned events) and the local sequencer that another process
// committed an outbox append ('sightline_append').
type hub struct {
	pool     *pgxpool.Pool
	logger   *slog.Logger
	onAppend func()
	up       atomic.Bool

	mu      sync.Mutex
	head    uint64
	seen    time.Time     // when head's event was written, or when head was learned
	changed chan struct{} // closed when head moves
}

func newHub(pool *pgxpool.Pool, logger *slog.Logger) *hub {
	return &hub{pool: pool, logger: logger, changed: make(chan struct{})}
}

func (h *hub) connected() bool { return h.up.Load() }

// publish records that positions up to head exist, the newest written at
// (or, when that is not known, learned at) at.
func (h *hub) publish(head uint64, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if head <= h.head {
		return
	}
	h.head, h.seen = head, at
	close(h.changed)
	h.changed = make(chan struct{})
}

// known returns the newest head published and its time, and whether
// notifications are being received, without which it may be behind.
func (h *hub) known() (head uint64, seen time.Time, ok bool) {
	ok = h.connected()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.head, h.seen, ok && !h.seen.IsZero()
}

// waitBeyond returns once the head is beyond after, or ctx ends, or stop
// or closed is closed (with eventstore.ErrClosed).
func (h *hub) waitBeyond(ctx context.Context, after uint64, stop, closed <-chan struct{}) error {
	for {
		h.mu.Lock()
		head, ch := h.head, h.changed
		h.mu.Unlock()
		if head > after {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return eventstore.ErrClosed
		case <-closed:
			return eventstore.ErrClosed
		}
	}
}

func (h *hub) run(ctx context.Context) {
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		err := h.listen(ctx, retry)
		h.up.Store(false)
		if ctx.Err() != nil {
			return
		}
		d := retry.NextBackOff()
		h.logger.Warn("event notifications lost; reconnecting", "error", err, "in", d)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

func (h *hub) listen(ctx context.Context, retry backoff.BackOff) error {
	conn, err := pgx.ConnectConfig(ctx, h.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `LISTEN sightline_events; LISTEN sightline_append`); err != nil {
		return err
	}
	// Whatever was notified while we were not listening shows in the head.
	head, err := readHead(ctx, conn)
	if err != nil {
		return err
	}
	h.publish(head.Position.Commit, cmp.Or(head.Time, time.Now()))
	if h.onAppend != nil {
		h.onAppend() // and in appends committed meanwhile
	}
	h.up.Store(true)
	retry.Reset()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		switch n.Channel {
		case "sightline_events":
			if v, err := strconv.ParseUint(n.Payload, 10, 64); err == nil {
				h.publish(v, time.Now()) // a little after the event was written
			}
		case "sightline_append":
			if h.onAppend != nil {
				h.onAppend()
			}
		}
	}
}
