package projections

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// LeaseDefault is how long a process holds a projection without renewing
// it: a process killed outright loses its projections this long after its
// last renewal, and another takes them up within a tick after that.
const LeaseDefault = 3 * time.Second

// NewProcessID is a fresh process id: the host name and a random suffix.
func NewProcessID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	return cmp.Or(host, "sightline") + "-" + hex.EncodeToString(b[:])
}

// ApplicationName is the PostgreSQL application_name of a process's
// connections, by which a process that takes over from one that stopped
// answering ends that one's sessions (and with them its open batches).
// It is short, since PostgreSQL keeps 63 bytes of it: a hash of the id.
func ApplicationName(processID string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(processID))
	return fmt.Sprintf("sightline %016x", h.Sum64())
}

// owners shares a Daemon's projections with the other processes on the
// database, through sightline.processes and sightline.owners: every tick
// it beats the process's heart, which renews the lease of everything it
// holds (a row no batch locks, so that a long batch cannot let it lapse),
// notes what another process took over, and works out with the others
// who is to apply each projection (each segment of it: see assign), a fair
// share of those each runs; it gives up what is another's, and claims
// what is its own once nobody holds it: never held, given up, or held by a
// process whose heart stopped for a lease.
type owners struct {
	pool    *pgxpool.Pool
	id      string
	host    string
	pid     int
	lease   time.Duration
	tick    time.Duration
	serves  bool // ServeOnly: it claims nothing
	runners []*Runner
	log     *slog.Logger

	mu   sync.Mutex
	held map[unit]int64 // the epoch this process holds each at

	cancel context.CancelFunc // ends the rounds
	done   chan struct{}
	// The heartbeat has a ticker of its own, so that a slow round (a
	// claim waiting for a batch) never lets the lease lapse.
	beatCancel context.CancelFunc
	beatDone   chan struct{}
}

func newOwners(pool *pgxpool.Pool, runners []*Runner, cfg Config) *owners {
	host, _ := os.Hostname()
	o := &owners{pool: pool, id: cfg.ProcessID, host: host, pid: os.Getpid(), lease: cfg.Lease, serves: cfg.ServeOnly,
		tick: min(max(cfg.Lease/6, 20*time.Millisecond), time.Second), runners: runners, log: cfg.Logger,
		held: map[unit]int64{}, done: make(chan struct{}), beatDone: make(chan struct{})}
	for _, r := range runners {
		r.mu.Lock()
		r.lease.fenced, r.lease.owner = true, o.id
		r.mu.Unlock()
	}
	return o
}

// start takes a first share at once, then keeps it up in the background.
func (o *owners) start(ctx context.Context) error {
	// The first beat may wait for a busy server longer than a renewal:
	// nothing is held yet.
	if err := o.beatWithin(ctx, 10*time.Second); err != nil {
		return fmt.Errorf("projections: share the projections: %w", err)
	}
	if err := o.round(ctx); err != nil {
		return fmt.Errorf("projections: share the projections: %w", err)
	}
	beatCtx, beatCancel := context.WithCancel(context.WithoutCancel(ctx))
	o.beatCancel = beatCancel
	go func() {
		defer close(o.beatDone)
		t := time.NewTicker(o.tick)
		defer t.Stop()
		for {
			select {
			case <-beatCtx.Done():
				return
			case <-t.C:
			}
			if err := o.beat(beatCtx); err != nil && beatCtx.Err() == nil {
				o.log.Warn("could not beat the process's heart; trying again", "error", err)
			}
		}
	}()
	ctx, o.cancel = context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(o.done)
		t := time.NewTicker(o.tick)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := o.round(ctx); err != nil && ctx.Err() == nil {
				o.log.Warn("could not renew or claim projections; trying again", "error", err)
			}
		}
	}()
	return nil
}

// beat renews the lease of everything the process holds.
func (o *owners) beat(ctx context.Context) error {
	return o.beatWithin(ctx, max(o.lease/2, 500*time.Millisecond))
}

func (o *owners) beatWithin(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := o.pool.Exec(ctx, `INSERT INTO sightline.processes (id, host, pid, projects, runs) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), runs = excluded.runs`, o.id, o.host, o.pid, !o.serves, o.runs())
	return err
}

// stop ends the rounds (no more claims); the heartbeat goes on until
// release.
func (o *owners) stop() {
	if o.cancel != nil {
		o.cancel()
		<-o.done
		o.cancel = nil
	}
}

// release gives up every projection this process holds, at once, so that
// the others take them up at their next tick (their claims wait for the
// batches in flight here).
func (o *owners) release(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	// The runners go on until they stop: their batches are fenced off
	// once another process has taken a projection up.
	_, err := o.pool.Exec(ctx, `UPDATE sightline.owners SET released = true WHERE owner = $1`, o.id)
	return err
}

// leave stops the heartbeat and removes the process.
func (o *owners) leave(ctx context.Context) error {
	if o.beatCancel != nil {
		o.beatCancel()
		<-o.beatDone
		o.beatCancel = nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, err := o.pool.Exec(ctx, `DELETE FROM sightline.processes WHERE id = $1`, o.id)
	return err
}

// unit is what a process holds: a segment of a projection (segment 0 of
// one that is not segmented).
type unit struct {
	projection string
	segment    int
}

func unitOf(r *Runner) unit { return unit{r.p.Name(), r.segment} }

func compareUnits(a, b unit) int {
	return cmp.Or(cmp.Compare(a.projection, b.projection), cmp.Compare(a.segment, b.segment))
}

// holding is a row of sightline.owners with its holder's process.
type holding struct {
	unit
	owner    string
	epoch    int64
	since    time.Time
	expired  bool // its lease ran out or was given up
	released bool // given up, not run out
	stale    bool // its holder's heart stopped beating
	host     string
	pid      int
}

// round is one tick: heartbeat, renew, read, give up, claim.
func (o *owners) round(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(o.lease, time.Second))
	defer cancel()
	lease := o.lease.String()
	// What the round reads goes in one round trip (and one implicit
	// transaction: at rest, the rounds are most of what the projector
	// commits).
	b := &pgx.Batch{}
	// The heartbeat renewed every lease: what is still this process's is
	// what nobody took over meanwhile (a read, which no batch blocks).
	renewed := map[unit]int64{}
	b.Queue(`SELECT projection, segment, epoch FROM sightline.owners WHERE owner = $1 AND NOT released`, o.id).Query(func(rows pgx.Rows) error {
		var u unit
		var epoch int64
		_, err := pgx.ForEachRow(rows, []any{&u.projection, &u.segment, &epoch}, func() error { renewed[u] = epoch; return nil })
		return err
	})
	// Processes silent for ten leases that hold nothing are gone for good.
	b.Queue(`DELETE FROM sightline.processes p WHERE heartbeat_at < now() - 10 * $1::interval
		AND NOT EXISTS (SELECT FROM sightline.owners o WHERE o.owner = p.id AND NOT o.released)`, lease)
	// The live processes: those that apply projections, with what they
	// run, and all of them (those that serve only too).
	var members []member
	var all int
	b.Queue(`SELECT id, projects, runs FROM sightline.processes WHERE heartbeat_at > now() - $1::interval`, lease).Query(func(rows pgx.Rows) error {
		var id string
		var projects bool
		var runs []string
		_, err := pgx.ForEachRow(rows, []any{&id, &projects, &runs}, func() error {
			all++
			if projects {
				members = append(members, member{id: id, runs: o.parseRuns(runs)})
			}
			return nil
		})
		return err
	})
	var table map[unit]holding
	o.queueRead(b).Query(func(rows pgx.Rows) (err error) {
		table, err = scanHoldings(rows)
		return err
	})
	if err := o.pool.SendBatch(ctx, b).Close(); err != nil {
		return err
	}
	for _, r := range o.runners {
		r.mu.Lock()
		r.lease.watched = all > 1
		r.mu.Unlock()
	}

	o.mu.Lock()
	defer o.mu.Unlock()
	for u := range o.held {
		if _, ok := renewed[u]; !ok {
			delete(o.held, u)
			r := o.runner(u)
			r.revoke()
			r.m.owned.Set(0)
			r.log.Warn("lost a projection's lease")
		}
	}
	for u, epoch := range renewed {
		r := o.runner(u)
		if r == nil {
			continue // not one this process runs
		}
		o.held[u] = epoch
		r.grant(epoch) // again, should the runner have let it go on a failed fence
		r.m.owned.Set(1)
	}
	holders := map[unit]string{}
	for u, h := range table {
		if !h.expired {
			holders[u] = h.owner
		}
	}
	for _, r := range o.runners {
		if h, ok := table[unitOf(r)]; ok && !h.expired {
			r.setHolder(&Owner{ID: h.owner, Host: h.host, PID: h.pid, Since: h.since})
		} else {
			r.setHolder(nil)
		}
	}
	// What is this process's (see assign); nothing when it serves only.
	target := assign(members, holders)
	share := 0
	for _, to := range target {
		if to == o.id {
			share++
		}
	}
	// Give up what another process is to apply, and what a runner that
	// stopped for good (a newer version took over) no longer applies.
	var giveUp []unit
	for u := range o.held {
		if target[u] != o.id || o.runner(u).stopped() {
			giveUp = append(giveUp, u)
		}
	}
	slices.SortFunc(giveUp, compareUnits)
	for _, u := range giveUp {
		r := o.runner(u)
		r.revoke()
		if _, err := o.pool.Exec(ctx, `UPDATE sightline.owners SET released = true WHERE projection = $1 AND segment = $2 AND owner = $3`,
			u.projection, u.segment, o.id); err != nil {
			return err
		}
		delete(o.held, u)
		r.m.owned.Set(0)
		r.log.Info("gave up a projection for another process's share", "to", target[u], "share", share)
	}
	for _, r := range o.runners {
		u := unitOf(r)
		if _, mine := o.held[u]; mine || target[u] != o.id || r.stopped() {
			continue
		}
		h, known := table[u]
		if known && !h.expired {
			continue
		}
		epoch, ok, err := o.claim(ctx, u, h, known)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		o.held[u] = epoch
		r.m.owned.Set(1)
		r.m.ownershipChanges.Inc()
		r.grant(epoch)
		r.setHolder(&Owner{ID: o.id, Host: o.host, PID: o.pid, Since: time.Now()})
		if known && h.owner != o.id {
			r.log.Info("took a projection over", "from", h.owner, "epoch", epoch)
		} else {
			r.log.Info("holds a projection", "epoch", epoch)
		}
	}
	return nil
}

// queueRead queues the read of who holds what on b, for scanHoldings.
func (o *owners) queueRead(b *pgx.Batch) *pgx.QueuedQuery {
	return b.Queue(`SELECT o.projection, o.segment, o.owner, o.epoch, o.since,
			o.released OR coalesce(p.heartbeat_at <= now() - $1::interval, true), o.released,
			coalesce(p.heartbeat_at <= now() - $1::interval, true), coalesce(p.host, ''), coalesce(p.pid, 0)
		FROM sightline.owners o LEFT JOIN sightline.processes p ON p.id = o.owner`, o.lease.String())
}

func scanHoldings(rows pgx.Rows) (map[unit]holding, error) {
	table := map[unit]holding{}
	var h holding
	_, err := pgx.ForEachRow(rows, []any{&h.projection, &h.segment, &h.owner, &h.epoch, &h.since, &h.expired, &h.released, &h.stale, &h.host, &h.pid}, func() error {
		table[h.unit] = h
		return nil
	})
	return table, err
}

// claim takes the projection: a new row, or the expired one at the next
// epoch. When its holder's heart stopped too (killed, paused, cut off), its
// sessions are ended first: a batch it left open would otherwise keep the
// owners row, and a paused process's connections could not commit later
// anyway, the fence refusing them.
func (o *owners) claim(ctx context.Context, u unit, h holding, known bool) (int64, bool, error) {
	var epoch int64
	if !known {
		err := o.pool.QueryRow(ctx, `INSERT INTO sightline.owners (projection, segment, owner, epoch)
			VALUES ($1, $2, $3, 1) ON CONFLICT DO NOTHING RETURNING epoch`, u.projection, u.segment, o.id).Scan(&epoch)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, false, nil // another process was first
		}
		return epoch, err == nil, err
	}
	if h.stale && !h.released && h.owner != o.id {
		// Only while its heart is still silent, checked in the same statement.
		if _, err := o.pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1 AND pid <> pg_backend_pid()
				AND NOT EXISTS (SELECT FROM sightline.processes WHERE id = $2 AND heartbeat_at > now() - $3::interval)`,
			ApplicationName(h.owner), h.owner, o.lease.String()); err != nil {
			o.log.Warn("could not end the sessions of a silent process; taking over when its batches end", "process", h.owner, "error", err)
		}
	}
	tx, err := o.pool.Begin(ctx)
	if err != nil {
		return 0, false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	// A batch of the holder keeps the row (FOR KEY SHARE): wait for it a
	// little, and try again next tick rather than hold the round.
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '200ms'`); err != nil {
		return 0, false, err
	}
	if _, err := tx.Exec(ctx, `SELECT FROM sightline.owners WHERE projection = $1 AND segment = $2 FOR UPDATE`, u.projection, u.segment); err != nil {
		if IsTransient(err) {
			return 0, false, nil
		}
		return 0, false, err
	}
	err = tx.QueryRow(ctx, `UPDATE sightline.owners o SET owner = $2, epoch = epoch + 1, since = now(), released = false
		WHERE projection = $1 AND segment = $5 AND epoch = $3
			AND (released OR NOT EXISTS (SELECT FROM sightline.processes p WHERE p.id = o.owner AND p.heartbeat_at > now() - $4::interval))
		RETURNING epoch`, u.projection, o.id, h.epoch, o.lease.String(), u.segment).Scan(&epoch)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		if IsTransient(err) { // lock_timeout included
			return 0, false, nil // a batch of the holder still runs: next tick
		}
		return 0, false, err
	}
	return epoch, true, tx.Commit(ctx)
}

// runs lists the units this process runs, for sightline.processes.
func (o *owners) runs() []string {
	out := make([]string, 0, len(o.runners))
	for _, r := range o.runners {
		if !r.stopped() {
			out = append(out, unitName(unitOf(r)))
		}
	}
	return out
}

// parseRuns reads what a process runs; a process that does not say (one
// that knows no segments) is taken to run segment 0 of what this one runs.
func (o *owners) parseRuns(runs []string) []unit {
	if runs == nil {
		for _, r := range o.runners {
			if r.segment == 0 && !r.stopped() {
				runs = append(runs, unitName(unitOf(r)))
			}
		}
	}
	out := make([]unit, 0, len(runs))
	for _, s := range runs {
		if u, ok := parseUnit(s); ok {
			out = append(out, u)
		}
	}
	return out
}

// runner is the runner of u; nil when this process does not run it.
func (o *owners) runner(u unit) *Runner {
	for _, r := range o.runners {
		if unitOf(r) == u {
			return r
		}
	}
	return nil
}

// setHolder records who holds the projection.
func (r *Runner) setHolder(h *Owner) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lease.holder = h
}
