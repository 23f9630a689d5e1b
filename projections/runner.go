package projections

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// Projection statuses, as the API and readmodel.projection_status show
// them. A failed, degraded or stalled projection says why in its reason.
const (
	StatusLive       = "live"
	StatusCatchingUp = "catching-up"
	StatusRebuilding = "rebuilding"
	// StatusStalled: behind, and no batch committed for StallAfter, or
	// its batches failing for less than FailAfter.
	StatusStalled = "stalled"
	// StatusFailed: its batches have kept failing for FailAfter or more;
	// it keeps retrying, but needs a look.
	StatusFailed = "failed"
	// StatusDegraded: its event source is unreachable; it serves what it
	// has applied and subscribes again.
	StatusDegraded = "degraded"
	StatusStopped  = "stopped"
)

// Statuses lists every status, for metrics that have one series each.
var Statuses = []string{StatusLive, StatusCatchingUp, StatusRebuilding, StatusStalled, StatusFailed, StatusDegraded, StatusStopped}

// Status is a snapshot of a running projection.
type Status struct {
	Name            string
	Version         int
	Status          string
	Position        eventstore.Position
	Head            eventstore.Position
	Lag             time.Duration
	EventsPerSecond float64
	// Parked counts the events parked or held behind them.
	Parked int
	// Reason says why the status is failed, degraded or stalled.
	Reason string
	// Owner is the process that applies the projection, when one does;
	// Owned says whether it is this one.
	Owner     *Owner
	Owned     bool
	LastError string
	UpdatedAt time.Time
	// Rebuild is the rebuild under way, if any.
	Rebuild *RebuildStatus
	// Segments are the segments of a segmented projection, in order; nil
	// for one of one segment. The projection's position is the lowest of
	// theirs, its head and lag the highest, its status the worst.
	Segments []SegmentStatus
}

// Runner keeps one projection up to date: it subscribes from the
// projection's checkpoint, applies what arrives in batches, and commits each
// batch with the checkpoint. Start it once; Stop it to end.
//
// A segmented projection (Segmenter) has a Runner per segment, each with
// its own subscription, checkpoint and lease; the one of segment 0 leads
// them: it is the Runner NewRunner returns, and its methods speak for the
// projection as a whole (segments.go).
type Runner struct {
	pool  *pgxpool.Pool
	store eventstore.Store
	p     Projection
	cfg   Config
	m     projectionMetrics
	log   *slog.Logger

	segment, segments int       // the segment applied, of how many (1 when not segmented)
	parts             []*Runner // on the lead of a segmented projection: every segment's runner, its own first
	lead              *Runner   // on the others: the lead

	shared *sharedCommits // set by a Daemon before Start; nil: every batch commits alone

	build      *buildState    // set on the runners that build a generation beside the active one
	inFlight   *inFlightBatch // a builder's batch sent and not yet answered; the applying goroutine's
	oneAtATime bool           // no batch is left in flight: one that failed there is applied again
	wg         sync.WaitGroup // the builder goroutine, and a background ANALYZE
	analyzing  atomic.Bool    // a background ANALYZE is under way

	soft, hard             context.Context // soft: stop taking batches; hard: abandon the one in flight
	softCancel, hardCancel context.CancelFunc
	done                   chan struct{}
	startOnce, stopOnce    sync.Once

	parkedMu sync.Mutex // serializes refreshParked

	// sinceAttach counts the events applied since the runner attached to
	// its generation; nextAnalyze is the count at which its tables are
	// analyzed next. Both belong to the goroutine that applies batches.
	sinceAttach, nextAnalyze int
	// ticks counts the lead's status ticks; it belongs to reportStatus.
	ticks int

	mu          sync.Mutex
	reg         registration               // the generation applied, or while not serving, the active one
	serving     bool                       // the code's version is the active one's: this runner applies it
	pipeCancel  context.CancelCauseFunc    // ends the current attachment to a generation
	builder     *Runner                    // the rebuild running in this process, if any
	buildFailed *buildFailure              // a rebuild that cannot take over: not taken up again unless asked
	rebuild     *RebuildStatus             // the rebuild under way, as last read
	position    eventstore.Position        // the committed checkpoint
	advanced    chan struct{}              // closed, and replaced, whenever position moves
	streamWaits map[string][]chan struct{} // WatchStream's watchers, by stream
	lease       lease                      // whether this process holds the projection
	state       runState
}

type runState struct {
	stopped      bool                // the runner has ended; every other status is derived
	oldest       time.Time           // write time of the oldest event being applied
	behind       []sighting          // heads seen beyond the position, oldest first
	live         bool                // the last message forwarded said the source is live
	caughtUp     bool                // the last message forwarded had reached the head, or was live
	caughtUpAt   eventstore.Position // that message's checkpoint
	pending      int                 // messages forwarded and not yet committed
	head         eventstore.Head
	lastProgress time.Time
	failing      bool      // batches fail on what no event is to blame for
	failingSince time.Time // since when they have
	lastError    string
	sourceErr    string    // the subscription's failure, while it lasts
	sourceSince  time.Time // since when it has failed
	// disconnected: the store says it is not connected (a client that
	// keeps trying to reach its server rather than failing the
	// subscription); since when.
	disconnected      bool
	disconnectedSince time.Time
	parked            int
	applied           uint64
	rate              float64
	updatedAt         time.Time
}

// sighting is a head seen beyond the position at a time: until the
// position reaches it, the oldest event not applied is at least that old.
type sighting struct {
	head eventstore.Position
	at   time.Time
}

// maxSightings bounds the sightings kept; the oldest, which bound the lag,
// are kept.
const maxSightings = 256

// NewRunner returns a Runner for p.
func NewRunner(pool *pgxpool.Pool, store eventstore.Store, p Projection, cfg Config) (*Runner, error) {
	if err := validate(p); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := SegmentsOf(p)
	lead := newSegment(pool, store, p, cfg, 0, n)
	if n > 1 {
		lead.parts = []*Runner{lead}
		for seg := 1; seg < n; seg++ {
			part := newSegment(pool, store, p, cfg, seg, n)
			part.lead = lead
			lead.parts = append(lead.parts, part)
		}
	}
	return lead, nil
}

// newSegment returns the runner of one segment of p.
func newSegment(pool *pgxpool.Pool, store eventstore.Store, p Projection, cfg Config, segment, segments int) *Runner {
	log := cfg.Logger.With("projection", p.Name())
	if segments > 1 {
		log = log.With("segment", segment)
	}
	return &Runner{
		pool: pool, store: store, p: p, cfg: cfg,
		m:       cfg.Metrics.forProjection(p.Name(), cfg.Source, segment),
		log:     log,
		done:    make(chan struct{}),
		segment: segment, segments: segments,

		advanced: make(chan struct{}),
		lease:    lease{changed: make(chan struct{})},
	}
}

// Name is the projection's name.
func (r *Runner) Name() string { return r.p.Name() }

// Start registers the projection (creating its tables on first run) and
// starts projecting in the background, every segment of it.
func (r *Runner) Start(ctx context.Context) error {
	for i, part := range r.segmentRunners() {
		if err := part.startSegment(ctx); err != nil {
			for _, started := range r.segmentRunners()[:i] {
				_ = started.stopSegment(ctx)
			}
			return err
		}
	}
	return nil
}

func (r *Runner) startSegment(ctx context.Context) error {
	err := errors.New("projections: runner already started or stopped")
	r.startOnce.Do(func() {
		err = nil
		var reg registration
		if reg, err = register(ctx, r.pool, r.p, r.segment); err != nil {
			close(r.done)
			return
		}
		// Under the lock: the ownership rounds and the notifications of
		// other processes' checkpoints may reach the runner already.
		r.mu.Lock()
		r.reg, r.serving = reg, reg.version == r.p.Version()
		if r.position.Before(reg.checkpoint) { // a notification may have brought a later one
			r.setPositionLocked(reg.checkpoint)
		}
		r.state.lastProgress = time.Now()
		r.soft, r.softCancel = context.WithCancel(context.WithoutCancel(ctx))
		r.mu.Unlock()
		r.hard, r.hardCancel = context.WithCancel(context.WithoutCancel(ctx))
		go r.run()
	})
	return err
}

// Stop stops taking new batches and waits for the batch in flight to
// commit, in every segment; when ctx ends first, it abandons that batch,
// which rolls back whole. Safe to call twice and before Start.
func (r *Runner) Stop(ctx context.Context) error {
	return inParallel(r.segmentRunners(), func(part *Runner) error { return part.stopSegment(ctx) })
}

func (r *Runner) stopSegment(ctx context.Context) error {
	r.stopOnce.Do(func() {
		r.startOnce.Do(func() { close(r.done) }) // never started: nothing to stop, and no Start after this
		if r.softCancel != nil {
			r.softCancel()
		}
	})
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		if r.hardCancel != nil {
			r.hardCancel()
		}
		<-r.done
		return ctx.Err()
	}
}

// reachedSegment reports whether the runner's segment has applied pos.
func (r *Runner) reachedSegment(pos eventstore.Position) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.position.Before(pos)
}

// waitSegment returns once the runner's segment has applied everything up
// to pos, or ctx ends. It waits on the runner's commits, not on the
// database.
func (r *Runner) waitSegment(ctx context.Context, pos eventstore.Position) error {
	for {
		r.mu.Lock()
		reached, ch := !r.position.Before(pos), r.advanced
		r.mu.Unlock()
		if reached {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-r.done:
			return errors.New("projections: runner stopped")
		}
	}
}

// seeHead records the store's head as of now.
func (r *Runner) seeHead(head eventstore.Head) {
	r.mu.Lock()
	r.seeHeadLocked(head)
	r.sightLocked(head.Position, time.Now())
	r.mu.Unlock()
}

// seeHeadLocked records head if it is newer than the one known, or the
// same with an earlier time: heads learned from notifications carry the
// time they arrived, which the store's own word on the head corrects.
func (r *Runner) seeHeadLocked(head eventstore.Head) {
	known := r.state.head
	switch {
	case known.Position.Before(head.Position), known.Time.IsZero() && !head.Position.Before(known.Position):
		r.state.head = head
	case known.Position == head.Position && !head.Time.IsZero() && head.Time.Before(known.Time):
		r.state.head.Time = head.Time
	}
}

// Done is closed when the runner has stopped (its lead, for a segmented
// projection: Stop stops them all).
func (r *Runner) Done() <-chan struct{} { return r.done }

// segmentStatus returns the status of the runner's segment.
func (r *Runner) segmentStatus() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	head := r.state.head.Position
	if head.Before(r.position) {
		head = r.position // the head was read before the events we have applied
	}
	st := Status{
		Name: r.p.Name(), Version: cmp.Or(r.reg.version, r.p.Version()), Status: r.statusLocked(now),
		Position: r.position, Head: head, Lag: r.lagLocked(now), Reason: r.reasonLocked(now), Owned: r.ownedLocked(),
		EventsPerSecond: r.state.rate, Parked: r.state.parked, LastError: r.state.lastError, UpdatedAt: r.state.updatedAt,
	}
	if r.lease.holder != nil {
		h := *r.lease.holder
		st.Owner = &h
	}
	if r.rebuild != nil {
		rb := *r.rebuild
		st.Rebuild = &rb
	}
	return st
}

func (r *Runner) run() {
	defer close(r.done)
	defer r.hardCancel()
	statusDone := make(chan struct{})
	go func() { defer close(statusDone); r.reportStatus() }()

	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	for r.soft.Err() == nil {
		if !r.waitOwned() {
			break
		}
		err := r.serve()
		if r.soft.Err() != nil {
			break
		}
		if errors.Is(err, errNotOwner) {
			r.log.Info("another process applies the projection now")
			r.revoke() // until the lease is ours again
			retry.Reset()
			continue
		}
		if errors.Is(err, errSuperseded) {
			retry.Reset()
			continue // attach to the generation that took over
		}
		if errors.Is(err, ErrVersionChanged) || errors.Is(err, ErrSegmentsChanged) {
			r.log.Error("the projection in the database is not this code's any more; this process stops projecting it", "error", err)
			r.mu.Lock()
			r.state.lastError = err.Error()
			r.mu.Unlock()
			break
		}
		if !errors.Is(err, errCheckpointMoved) { // another process moved it: no failure of ours
			r.mu.Lock()
			r.failingLocked(err)
			r.mu.Unlock()
		}
		d := retry.NextBackOff()
		r.log.Warn("projector restarting from its checkpoint", "error", err, "in", d)
		sleep(r.soft, d)
	}
	r.mu.Lock()
	r.state.stopped = true
	r.wakeAllStreamsLocked()
	r.mu.Unlock()
	r.softCancel() // ends the status loop and a builder, also when the loop ended by itself
	<-statusDone
	r.wg.Wait()
	if r.segment == 0 {
		r.writeStatus(context.Background()) // the final "stopped"
		r.m.setStatus(StatusStopped)
	}
}

// errCheckpointMoved says the checkpoint in the database is not the one this
// runner committed: another process applied batches. The pipeline restarts
// from the database's checkpoint.
var errCheckpointMoved = errors.New("checkpoint moved under the projector")

// errSuperseded says the generation a projector applies has been replaced
// (or a build cancelled): it attaches to the active one again.
var errSuperseded = errors.New("generation superseded")

// serve attaches to the active generation and applies it; while the code's
// version is newer than the active one's, it waits instead for the
// generation being built (here or elsewhere) to take over. It returns
// errSuperseded when a swap ends the attachment.
func (r *Runner) serve() error {
	ctx, cancel := context.WithCancelCause(r.soft)
	defer cancel(nil)
	reg, err := register(ctx, r.pool, r.p, r.segment)
	if err != nil {
		return err
	}
	serving := reg.version == r.p.Version()
	r.mu.Lock()
	if reg.generation != r.reg.generation {
		r.log.Info("attached to a new generation", "generation", reg.generation, "version", reg.version, "position", reg.checkpoint.String())
		r.wakeAllStreamsLocked() // their state is the new generation's now
	}
	r.reg, r.serving, r.pipeCancel = reg, serving, cancel
	if !r.ownedLocked() { // revoked while registering
		cancel(errNotOwner)
	}
	r.state.failing, r.state.lastError = false, "" // attached: what failed before is behind it
	r.setPositionLocked(reg.checkpoint)
	r.sinceAttach, r.nextAnalyze = 0, analyzeFirst
	r.mu.Unlock()
	if !serving {
		r.log.Info("the active version is older than the code's; serving it while the new version is built",
			"active_version", reg.version, "version", r.p.Version())
		r.maybeBuild()
		<-ctx.Done() // a swap, seen by the status loop or the builder, ends the wait
		return context.Cause(ctx)
	}
	err = r.pipeline(ctx)
	if cause := context.Cause(ctx); errors.Is(cause, errSuperseded) || errors.Is(cause, errNotOwner) {
		return cause
	}
	return err
}

// supersede ends the current attachment, so that the runner attaches to
// the generation that took over.
func (r *Runner) supersede() {
	r.mu.Lock()
	cancel := r.pipeCancel
	r.mu.Unlock()
	if cancel != nil {
		cancel(errSuperseded)
	}
}

// registration is the generation the runner attaches to.
func (r *Runner) registration() registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reg
}

// pipeline reads from the committed checkpoint and applies batches until
// parent ends or a batch cannot be applied from where the reader is.
func (r *Runner) pipeline(parent context.Context) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	msgs := make(chan eventstore.Message, r.readAhead()) // bounds memory
	r.mu.Lock()
	from := r.position
	r.state.live, r.state.caughtUp, r.state.pending = false, false, 0
	r.state.oldest = time.Time{} // a batch abandoned by the last pipeline is read again
	r.mu.Unlock()
	go r.read(ctx, from, msgs)
	defer r.abandon()

	var rest eventstore.Message // what a batch left of a message larger than BatchSize
	for {
		if ctx.Err() != nil { // stopping: take no more batches, even if some have arrived
			return ctx.Err()
		}
		var first eventstore.Message
		if len(rest.Events) > 0 {
			first = rest
		} else {
			select {
			case first = <-msgs:
			default:
				// Nothing to prepare meanwhile: the batch in flight
				// commits before this waits for more.
				if err := r.settle(ctx); err != nil {
					return err
				}
				select {
				case first = <-msgs:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		events, checkpoint, taken, more := collect(first, msgs, r.cfg.BatchSize)
		rest = more
		reached := false
		if r.build != nil && r.build.until != nil {
			events, checkpoint, reached = r.build.truncate(events, checkpoint)
		}
		if err := r.applyInOrder(ctx, events, checkpoint); err != nil {
			return err
		}
		r.mu.Lock()
		r.state.pending -= taken
		r.mu.Unlock()
		if r.shared != nil {
			r.shared.poke() // a group being formed may have been waiting for this batch
		}
		if reached {
			if err := r.settle(ctx); err != nil {
				return err
			}
			return errReachedUntil
		}
	}
}

// readAhead is how many messages the reader may fetch ahead of the batch
// being applied: a few for a live projection, whose batches are small; for
// a rebuild, enough that reading the next batch overlaps with writing this
// one (the embedded store's messages hold up to 1 000 events: two default
// rebuild batches and some).
func (r *Runner) readAhead() int {
	if r.build == nil {
		return 4
	}
	return 24
}

// read subscribes from from and forwards messages until ctx ends. When the
// subscription fails it subscribes again from the last message forwarded.
func (r *Runner) read(ctx context.Context, from eventstore.Position, out chan<- eventstore.Message) {
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	pos := from
	for ctx.Err() == nil {
		err := r.forward(ctx, &pos, out, retry)
		if ctx.Err() != nil {
			return
		}
		r.m.reconnects.Inc()
		r.mu.Lock()
		if r.state.sourceErr == "" {
			r.state.sourceSince = time.Now()
		}
		r.state.sourceErr = err.Error()
		r.mu.Unlock()
		d := retry.NextBackOff()
		r.log.Warn("subscription lost; subscribing again", "from", pos.String(), "error", err, "in", d)
		sleep(ctx, d)
	}
}

func (r *Runner) forward(ctx context.Context, pos *eventstore.Position, out chan<- eventstore.Message, retry backoff.BackOff) error {
	sub, err := r.store.Subscribe(ctx, *pos, r.p.Filter())
	if err != nil {
		return err
	}
	defer sub.Close()
	for {
		msg, err := sub.Recv(ctx)
		if err != nil {
			return err
		}
		retry.Reset()
		r.mu.Lock()
		r.state.sourceErr = "" // the source answered: reachable
		r.mu.Unlock()
		if msg.DeletedLinks > 0 {
			r.m.deletedLink.Add(float64(msg.DeletedLinks))
			r.log.Warn("links to deleted events passed over", "count", msg.DeletedLinks)
		}
		r.mu.Lock()
		r.state.pending++
		r.state.live = msg.Live
		r.state.caughtUp = msg.CaughtUp || msg.Live
		if r.state.caughtUp {
			r.state.caughtUpAt = msg.Checkpoint
		}
		r.mu.Unlock()
		select {
		case out <- msg:
			if pos.Before(msg.Checkpoint) {
				*pos = msg.Checkpoint
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// collect takes first and whatever else has already arrived, without
// waiting, up to limit events. Of a message that would take it past limit
// it takes the first events and returns the rest, to begin the next batch:
// a store's message may hold more events than a batch may (the embedded
// store's hold up to a thousand). It returns how many messages it took
// whole.
func collect(first eventstore.Message, msgs <-chan eventstore.Message, limit int) (events []eventstore.RecordedEvent, checkpoint eventstore.Position, taken int, rest eventstore.Message) {
	copied := false
	for m := first; ; {
		head, rest := split(m, limit-len(events))
		switch {
		case events == nil:
			events = head.Events
		case len(head.Events) > 0:
			if !copied { // copy before appending to the reader's slice, with room for what waits
				size := min(limit, len(events)+len(head.Events)*(1+len(msgs)))
				events = append(make([]eventstore.RecordedEvent, 0, max(size, len(events)+len(head.Events))), events...)
				copied = true
			}
			events = append(events, head.Events...)
		}
		if checkpoint.Before(head.Checkpoint) {
			checkpoint = head.Checkpoint
		}
		if len(rest.Events) > 0 {
			return events, checkpoint, taken, rest
		}
		taken++
		if len(events) >= limit {
			return events, checkpoint, taken, eventstore.Message{}
		}
		select {
		case m = <-msgs:
		default:
			return events, checkpoint, taken, eventstore.Message{}
		}
	}
}

// split cuts a message of more than limit events after the first limit:
// the first part checkpoints at its furthest event, or at the message's
// checkpoint if that is before it, the rest at the message's checkpoint.
// A source promises that nothing up to a message's checkpoint is left to
// deliver once the message is; within one, its events may be out of
// position order (one held back from an earlier message, or one swapped
// with its stream's next), and a source holding an event back keeps its
// checkpoint before it. So the first part's checkpoint must be before
// every event of the rest, or a restart from it would lose one; a message
// that cannot be cut so is not cut.
func split(m eventstore.Message, limit int) (head, rest eventstore.Message) {
	if len(m.Events) <= limit {
		return m, eventstore.Message{}
	}
	cut := m.Events[0].Position
	for _, e := range m.Events[1:limit] {
		if cut.Before(e.Position) {
			cut = e.Position
		}
	}
	if m.Checkpoint.Before(cut) {
		cut = m.Checkpoint
	}
	for _, e := range m.Events[limit:] {
		if !cut.Before(e.Position) {
			return m, eventstore.Message{}
		}
	}
	head = eventstore.Message{Events: m.Events[:limit:limit], Checkpoint: cut}
	m.Events = m.Events[limit:]
	return head, m
}

// applyWithRetry applies a batch, retrying with backoff while it fails on
// the infrastructure (or on anything no event caused): each attempt is a
// fresh transaction that re-reads the checkpoint and the revisions (a
// builder loads its memory of them again after such a failure), so a
// retry can never apply anything twice. When the events cause the failure,
// the batch is applied again at once, isolating the failing events to park
// them.
func (r *Runner) applyWithRetry(ctx context.Context, events []eventstore.RecordedEvent, checkpoint eventstore.Position) error {
	r.mu.Lock()
	if len(events) > 0 {
		r.state.oldest = events[0].CreatedAt
		for _, e := range events[1:] {
			if e.CreatedAt.Before(r.state.oldest) {
				r.state.oldest = e.CreatedAt
			}
		}
	}
	r.mu.Unlock()
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	var iso *isolation // set once the batch has failed on its events
	var eventRetry backoff.BackOff
	for {
		err := r.apply(r.hard, events, checkpoint, iso)
		if prev := (*previousFailed)(nil); errors.As(err, &prev) {
			return err // this batch was not sent: applyInOrder applies that one again first
		}
		if herr := (*handlerError)(nil); iso == nil && errors.As(err, &herr) {
			r.log.Warn("batch failed on its events; finding the failing ones", "events", len(events), "error", err)
			iso = newIsolation()
			eventRetry = backoff.NewExponentialBackOff(backoff.WithInitialInterval(r.cfg.RetryInitialInterval),
				backoff.WithMaxInterval(r.cfg.RetryMaxInterval), backoff.WithMaxElapsedTime(0)) // jittered by default
			continue
		}
		if rerr := (*eventRetryError)(nil); errors.As(err, &rerr) {
			r.m.handlerRetries.Inc()
			d := eventRetry.NextBackOff()
			e := rerr.event
			r.log.Warn("handler failed; trying the event again",
				"stream", e.StreamID, "revision", e.Revision, "event_id", e.EventID, "type", e.Type,
				"attempt", rerr.attempt, "error", rerr.err, "in", d)
			if !sleep(ctx, d) {
				return ctx.Err()
			}
			continue
		}
		if err == nil {
			r.mu.Lock()
			r.state.oldest = time.Time{}
			r.state.failing, r.state.lastError = false, ""
			r.mu.Unlock()
			return nil
		}
		if errors.Is(err, errCheckpointMoved) || errors.Is(err, errSuperseded) || errors.Is(err, errNotOwner) || r.hard.Err() != nil {
			return err
		}
		r.mu.Lock()
		r.failingLocked(err)
		r.mu.Unlock()
		r.m.batchRetries.Inc()
		d := retry.NextBackOff()
		r.log.Error("batch failed; retrying", "events", len(events), "error", err, "in", d)
		if !sleep(ctx, d) {
			return ctx.Err() // stopping: the batch rolled back whole and will be read again
		}
	}
}

// failingLocked records a failure no single event is to blame for.
func (r *Runner) failingLocked(err error) {
	if !r.state.failing {
		r.state.failing, r.state.failingSince = true, time.Now()
	}
	r.state.lastError = err.Error()
}

// sleep waits for d or ctx, and reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
