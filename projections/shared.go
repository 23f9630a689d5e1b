package projections

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
)

// sharedCommits lets the live batches of a Daemon's projections commit
// together: each projection has its own subscription and its own batches,
// but an event that several projections read reaches them all at once,
// and each would otherwise commit a transaction of its own for it. At a
// few hundred events a second, when every batch holds one event, those
// commits were most of what the projector cost the database.
//
// A batch that can go to the server in one round trip (see oneTrip: its
// checks, the projection's writes, its bookkeeping) joins the group being
// formed, or forms one and leads it. The leader waits, up to wait, for
// the batches of the other projections that have messages in hand, then
// sends every member's statements between one BEGIN and one COMMIT on its
// own connection, so that a group needs no connection more than its
// members hold. Each member's checks lock its own checkpoint row and
// compare its own streams, as they would alone; whatever fails in the
// shared transaction rolls it back whole, and every member then commits
// alone, where its failure is its own and is handled as it always is.
type sharedCommits struct {
	wait time.Duration

	mu      sync.Mutex
	members []*Runner
	forming *commitGroup
	sending map[*Runner]bool      // members whose batch is in a group being committed
	solo    map[*Runner]time.Time // members that commit alone until then
}

// A shared transaction waits for no lock longer than sharedLockTimeout:
// a member held back by a lock (a transaction left open on its
// checkpoint, its rows locked by a client) would hold every other member
// back with it. The transaction rolls back, every member commits alone,
// and the member whose statement failed commits alone for
// soloAfterFailure, so that it holds nobody back again meanwhile.
const (
	sharedLockTimeout = 100 * time.Millisecond
	soloAfterFailure  = 5 * time.Second
)

func (s *sharedCommits) soloFor(r *Runner, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.solo[r] = time.Now().Add(d)
}

func (s *sharedCommits) isSolo(r *Runner) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.soloLocked(r)
}

func (s *sharedCommits) soloLocked(r *Runner) bool {
	until, ok := s.solo[r]
	if ok && !time.Now().Before(until) {
		delete(s.solo, r)
		return false
	}
	return ok
}

// commitGroup is the batches committed in one transaction.
type commitGroup struct {
	parts  []*commitPart
	upto   eventstore.Position // the furthest checkpoint of the parts
	joined chan struct{}       // signalled when a part joins, for the leader
}

// commitPart is one member's batch in a group.
type commitPart struct {
	r     *Runner
	stmts []*pgx.QueuedQuery // the batch's statements, without its BEGIN
	done  chan error         // nil once committed, errCommitAlone if not
}

// errCommitAlone says that the shared transaction did not commit: the
// member commits its batch alone.
var errCommitAlone = errors.New("shared commit rolled back; committing alone")

func newSharedCommits(wait time.Duration, members []*Runner) *sharedCommits {
	s := &sharedCommits{wait: wait, members: members, sending: map[*Runner]bool{}, solo: map[*Runner]time.Time{}}
	for _, r := range members {
		r.shared = s
	}
	return s
}

// commit commits the batch of tx and queue (see commitWith) with those of
// the other members that are ready about the same time. It returns nil
// once the batch has committed, errCommitAlone if the shared transaction
// rolled back, and otherwise what made the leader give up before sending.
// A member waits for its group's outcome even if ctx ends: its batch may
// have committed, and the runner must know.
func (s *sharedCommits) commit(ctx context.Context, r *Runner, tx *batchTx, queue *pgx.Batch, checkpoint eventstore.Position) error {
	if s.isSolo(r) {
		return errCommitAlone
	}
	part := &commitPart{r: r, done: make(chan error, 1)}
	for _, q := range slices.Concat(tx.unsent.QueuedQueries[1:], queue.QueuedQueries) {
		// Copies: pgx keeps a statement's description on the queued query
		// once sent, and it names a statement prepared on the connection it
		// was sent on, which the member's own is not.
		part.stmts = append(part.stmts, &pgx.QueuedQuery{SQL: q.SQL, Arguments: q.Arguments})
	}
	s.mu.Lock()
	g := s.forming
	if g != nil {
		g.parts = append(g.parts, part)
		if g.upto.Before(checkpoint) {
			g.upto = checkpoint
		}
		select {
		case g.joined <- struct{}{}:
		default:
		}
		s.mu.Unlock()
		return <-part.done
	}
	g = &commitGroup{parts: []*commitPart{part}, upto: checkpoint, joined: make(chan struct{}, 1)}
	s.forming = g
	s.mu.Unlock()

	s.gather(ctx, g)
	if len(g.parts) == 1 {
		s.done(g)
		return errCommitAlone // nobody came: the usual round trip, on the usual path
	}
	err := s.send(ctx, tx, g)
	s.done(g)
	if err == nil {
		r.m.sharedCommits.Inc()
	}
	for _, p := range g.parts {
		if err == nil {
			p.r.m.batchesShared.Inc()
		}
		if p != part {
			p.done <- err
		}
	}
	return err
}

// gather waits until no other member is about to offer a batch, or for
// s.wait, and closes g to newcomers. A member with messages in hand is
// waited for; so, for the first half of the wait, is a live one behind
// g's checkpoint, whose subscription may not have handed it the events
// that g's members already have.
func (s *sharedCommits) gather(ctx context.Context, g *commitGroup) {
	timer := time.NewTimer(s.wait)
	defer timer.Stop()
	grace := time.NewTimer(s.wait / 2)
	defer grace.Stop()
	graceC := grace.C // nil once the grace is over
	s.mu.Lock()
	for s.expectingLocked(g, graceC != nil) {
		s.mu.Unlock()
		expired := false
		select {
		case <-g.joined: // a part joined, or a member has nothing more to offer
		case <-graceC:
			graceC = nil
		case <-timer.C:
			expired = true
		case <-ctx.Done():
			expired = true
		}
		s.mu.Lock()
		if expired {
			break
		}
	}
	s.forming = nil
	for _, p := range g.parts {
		s.sending[p.r] = true
	}
	s.mu.Unlock()
}

// expectingLocked says whether a member outside g and not committing a
// batch has messages in hand, or, with behind, is live and behind g's
// checkpoint: its batch is, or may be, on its way.
func (s *sharedCommits) expectingLocked(g *commitGroup, behind bool) bool {
	for _, m := range s.members {
		if s.sending[m] || g.has(m) || s.soloLocked(m) {
			continue
		}
		m.mu.Lock()
		expected := m.build == nil && (m.state.pending > 0 || behind && m.state.caughtUp && m.position.Before(g.upto))
		m.mu.Unlock()
		if expected {
			return true
		}
	}
	return false
}

func (g *commitGroup) has(r *Runner) bool {
	for _, p := range g.parts {
		if p.r == r {
			return true
		}
	}
	return false
}

// poke has the leader of the group being formed look again at what the
// members hold.
func (s *sharedCommits) poke() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.forming != nil {
		select {
		case s.forming.joined <- struct{}{}:
		default:
		}
	}
}

// alone marks r as committing a batch on its own, which no group waits
// for, until free.
func (s *sharedCommits) alone(r *Runner) {
	s.mu.Lock()
	s.sending[r] = true
	s.mu.Unlock()
	s.poke()
}

// free ends what alone began.
func (s *sharedCommits) free(r *Runner) {
	s.mu.Lock()
	delete(s.sending, r)
	s.mu.Unlock()
}

// done marks g's members as free to be waited for again.
func (s *sharedCommits) done(g *commitGroup) {
	s.mu.Lock()
	for _, p := range g.parts {
		delete(s.sending, p.r)
	}
	s.mu.Unlock()
}

// send commits g's batches in one transaction on the leader's connection,
// tx's, whose own BEGIN it takes the place of. It returns nil once the
// COMMIT succeeded; errCommitAlone when a statement failed or the server
// rolled back, after rolling back so that the leader's connection may
// commit its own batch alone; the connection's error otherwise.
func (s *sharedCommits) send(ctx context.Context, tx *batchTx, g *commitGroup) error {
	all := &pgx.Batch{}
	all.Queue(`BEGIN`)
	all.Queue(`SET LOCAL lock_timeout = ` + strconv.Itoa(int(sharedLockTimeout.Milliseconds())))
	var owner []*commitPart // of each statement of all: the member's, or nil
	for i, p := range g.parts {
		if i > 0 {
			// What the last member set for its transaction, the search
			// path of a declarative projection, is not the next one's.
			all.Queue(`RESET search_path`)
		}
		owner = append(owner, make([]*commitPart, all.Len()-len(owner))...)
		all.QueuedQueries = append(all.QueuedQueries, p.stmts...)
		for range p.stmts {
			owner = append(owner, p)
		}
	}
	all.Queue(`COMMIT`)
	owner = append(owner, nil)
	res := tx.conn.SendBatch(ctx, all)
	var failed error
	for i := range all.Len() {
		tag, err := res.Exec()
		if err == nil && i == all.Len()-1 && tag.String() != "COMMIT" {
			err = fmt.Errorf("the server rolled the transaction back (%s)", tag)
		}
		if err != nil {
			var pre pgx.ErrPreprocessingBatch
			if errors.As(err, &pre) { // reported on the first statement, whichever failed to prepare
				i = slices.IndexFunc(all.QueuedQueries, func(q *pgx.QueuedQuery) bool { return q.SQL == pre.SQL() })
			}
			if i >= 0 && owner[i] != nil {
				s.soloFor(owner[i].r, soloAfterFailure)
			}
			failed = err
			break
		}
	}
	if err := res.Close(); failed == nil && err != nil {
		failed = err
	}
	if failed == nil {
		return nil
	}
	if tx.conn.IsClosed() {
		// Lost with the COMMIT perhaps sent: each member's next attempt
		// finds its checkpoint where the outcome left it.
		return fmt.Errorf("shared commit: %w", failed)
	}
	if _, err := tx.conn.Exec(context.WithoutCancel(ctx), `ROLLBACK`); err != nil {
		return fmt.Errorf("shared commit: %w; rolling back: %w", failed, err)
	}
	return errCommitAlone
}

// commit commits a batch, with the batches of the Daemon's other
// projections when it can (see sharedCommits), otherwise alone.
func (r *Runner) commit(ctx context.Context, tx *batchTx, queue *pgx.Batch, fromProjection int, checkpoint eventstore.Position) error {
	if r.shared != nil && r.build == nil && tx.unsent != nil {
		err := r.shared.commit(ctx, r, tx, queue, checkpoint)
		if err == nil {
			tx.unsent, tx.closed = nil, true
			return nil
		}
		if !errors.Is(err, errCommitAlone) {
			return err
		}
	}
	if r.shared != nil {
		r.shared.alone(r)
		defer r.shared.free(r)
	}
	return commitWith(ctx, tx, queue, fromProjection)
}
