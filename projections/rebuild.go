package projections

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// A rebuild replays the store from the start into a new generation of a
// projection (schema sl_<name>_g<N>) while the active generation keeps
// serving, and live projecting when its version is the code's. The builder
// is a runner of its own, with large batches, holding a session lock so
// that one process builds at a time; whoever holds no lock may resume a
// build its builder left. Once the builder has caught up, it creates the
// deferred indexes and takes over in one transaction: it freezes the
// active generation (its checkpoint row lock stops its batches), waits
// until the build has applied as far, marks the active one superseded and
// retired, and points the readmodel views at the new tables. The replaced
// runner finds its generation superseded at its next batch (or status
// tick) and attaches to the new one, whose checkpoint is at least its own.

// Rebuild errors.
var (
	// ErrRebuildRunning: a process is building the projection already.
	ErrRebuildRunning = errors.New("a rebuild is already running")
	// ErrNotRegistered: the projection has never run, so there is nothing
	// to rebuild; its first run builds it from the start.
	ErrNotRegistered = errors.New("projection has never run")
	// ErrRebuildCancelled: the generation being built was replaced by a
	// build of a newer version.
	ErrRebuildCancelled = errors.New("rebuild cancelled")
	// ErrNotRunning: the runner asked to rebuild is not running.
	ErrNotRunning = errors.New("projector not running")
)

// errNoRebuild: there is no rebuild of the code's version to build.
var errNoRebuild = errors.New("no rebuild to build")

// takeOverWait bounds how long a take-over keeps the active generation's
// batches waiting for the build to apply as far as it has.
const takeOverWait = 5 * time.Second

// Rebuild is a generation being built beside the active one.
type Rebuild struct {
	Projection string
	Generation int
	Version    int
	Reason     string
	// Created says this request created the generation; otherwise it was
	// requested before (or started by a version change) and nobody builds
	// it right now.
	Created bool
	// Resumed says the generation was half built already, by a process
	// that stopped; building it goes on from its checkpoint.
	Resumed bool
}

// RebuildStatus is the progress of a rebuild.
type RebuildStatus struct {
	Generation int
	Version    int
	Reason     string
	// State is building until the generation takes over (active); a build
	// replaced by one of a newer version is cancelled.
	State     string
	StartedAt time.Time
	// Position is how far the build has applied; Head is the newest
	// position of the store, as last seen.
	Position, Head eventstore.Position
	// Progress is Position over Head, from 0 to 1.
	Progress float64
	// Rate is how fast Position moves, in positions per second (events,
	// on the embedded store), and ETA when it reaches Head at that rate;
	// both zero until measured.
	Rate float64
	ETA  time.Duration
	// Building: a process holds the build (this one, when Here); when
	// false the build waits for a process to resume it.
	Building, Here bool
	// LastError is the last failure of the build's take-over, when this
	// process builds it or gave up on it.
	LastError string

	observed time.Time // when Position was read, to measure Rate
}

// RequestRebuild starts a rebuild of p: a new generation built from the
// start of the store beside the active one, by a runner of p (which picks
// it up within a status interval) or by RunRebuild. A build left half done
// by a process that stopped is resumed rather than started again; one that
// a process is building is ErrRebuildRunning.
func RequestRebuild(ctx context.Context, pool *pgxpool.Pool, p Projection) (Rebuild, error) {
	return requestRebuild(ctx, pool, p)
}

// requestRebuild is RequestRebuild in a transaction of db.
func requestRebuild(ctx context.Context, db beginner, p Projection) (Rebuild, error) {
	tx, err := beginLocked(ctx, db, p.Name())
	if err != nil {
		return Rebuild{}, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit
	var version int
	err = tx.QueryRow(ctx, `SELECT version FROM sightline.projections WHERE name = $1`, p.Name()).Scan(&version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return Rebuild{}, fmt.Errorf("%w: %s; its first run builds it from the start", ErrNotRegistered, p.Name())
	case err != nil:
		return Rebuild{}, err
	case version > p.Version():
		return Rebuild{}, fmt.Errorf("%w: %s is at version %d in the database and %d in code", ErrVersionChanged, p.Name(), version, p.Version())
	}
	var gen, building int
	var held bool
	classid, objid := buildLockHalves(p.Name())
	err = tx.QueryRow(ctx, `SELECT generation, version, `+buildHeld("$2", "$3")+` FROM sightline.generations
		WHERE projection = $1 AND state = 'building'`, p.Name(), classid, objid).Scan(&gen, &building, &held)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return Rebuild{}, err
	case held:
		return Rebuild{}, fmt.Errorf("%w: generation %d (version %d) of %s is being built; its progress is in the projection's status",
			ErrRebuildRunning, gen, building, p.Name())
	}
	gen, created, err := ensureBuild(ctx, tx, p, ReasonRequested)
	if err != nil {
		return Rebuild{}, err
	}
	rb := Rebuild{Projection: p.Name(), Generation: gen, Version: p.Version(), Created: created}
	if err := tx.QueryRow(ctx, `SELECT g.reason, EXISTS (SELECT FROM sightline.checkpoints c
			WHERE c.projection = g.projection AND c.generation = g.generation AND (c.commit_position > 0 OR c.prepare_position > 0))
		FROM sightline.generations g
		WHERE g.projection = $1 AND g.generation = $2`, p.Name(), gen).Scan(&rb.Reason, &rb.Resumed); err != nil {
		return Rebuild{}, err
	}
	return rb, tx.Commit(ctx)
}

// RunRebuild requests a rebuild of p, as RequestRebuild does, and builds it
// in this process until it takes over or ctx ends; it returns nil once it
// has taken over. started, if not nil, is called once the build is this
// process's. ErrRebuildRunning when another process builds p.
func RunRebuild(ctx context.Context, pool *pgxpool.Pool, store eventstore.Store, p Projection, cfg Config, started func(Rebuild)) error {
	if err := validate(p); err != nil {
		return err
	}
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	// Replaced generations past their grace go first: without a running
	// projector nothing else drops them.
	if _, err := dropExpired(ctx, pool, p.Name()); err != nil {
		cfg.Logger.Warn("could not drop a replaced generation yet", "projection", p.Name(), "error", err)
	}
	var rb Rebuild
	b, err := claimBuild(ctx, pool, store, p, cfg, &rb)
	if err != nil {
		return err
	}
	if started != nil {
		started(rb)
	}
	return b.runBuild(ctx)
}

// ReadRebuild reads the progress of generation gen of the named projection
// as a rebuild, against the store's head.
func ReadRebuild(ctx context.Context, db Querier, store eventstore.Store, name string, gen int) (RebuildStatus, error) {
	st, err := readGeneration(ctx, db, name, gen)
	if err != nil {
		return st, err
	}
	if h, err := store.Head(ctx); err == nil {
		st.Head = h.Position
	}
	st.Progress = progress(st.Position, st.Head)
	return st, nil
}

// readGeneration reads generation gen of the named projection as a
// rebuild, without the head; gen 0 reads the one being built.
func readGeneration(ctx context.Context, db Querier, name string, gen int) (RebuildStatus, error) {
	var st RebuildStatus
	var commit, prepare int64
	classid, objid := buildLockHalves(name)
	err := db.QueryRow(ctx, `SELECT g.generation, g.version, g.reason, g.state, g.created_at,
			coalesce(c.commit_position, 0), coalesce(c.prepare_position, 0), g.state = 'building' AND `+buildHeld("$3", "$4")+`
		FROM sightline.generations g LEFT JOIN LATERAL `+segmentCheckpoint("-1", "0")+` c ON true
		WHERE g.projection = $1 AND (g.generation = $2 OR $2 = 0 AND g.state = 'building')`, name, gen, classid, objid).
		Scan(&st.Generation, &st.Version, &st.Reason, &st.State, &st.StartedAt, &commit, &prepare, &st.Building)
	if err != nil {
		return RebuildStatus{}, fmt.Errorf("read generation %d of %s: %w", gen, name, err)
	}
	st.Position = eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}
	return st, nil
}

// readBuilding reads the rebuild under way of the named projection; nil
// when there is none.
func readBuilding(ctx context.Context, db Querier, name string) (*RebuildStatus, error) {
	st, err := readGeneration(ctx, db, name, 0)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &st, nil
}

// progress is how far pos is towards head, from 0 to 1.
func progress(pos, head eventstore.Position) float64 {
	if head.Commit == 0 || !pos.Before(head) {
		return 1
	}
	return float64(pos.Commit) / float64(head.Commit)
}

// Rebuild requests a rebuild of the runner's projection (see
// RequestRebuild) and starts building it in this process, unless another
// process holds it.
func (r *Runner) Rebuild(ctx context.Context) (Rebuild, error) {
	r.mu.Lock()
	started := r.soft != nil && !r.state.stopped
	r.mu.Unlock()
	if !started {
		return Rebuild{}, fmt.Errorf("%w: %s", ErrNotRunning, r.p.Name())
	}
	rb, err := RequestRebuild(ctx, r.pool, r.p)
	if err != nil {
		return rb, err
	}
	r.log.Info("rebuild requested", "generation", rb.Generation, "version", rb.Version, "resumed", rb.Resumed)
	r.mu.Lock()
	r.buildFailed = nil // asked again: try again
	r.mu.Unlock()
	r.maybeBuild()
	r.refreshRebuild(ctx)
	return rb, nil
}

// maybeBuild starts building here the generation of the code's version
// being built, if there is one and no process builds it yet.
func (r *Runner) maybeBuild() {
	if r.cfg.ServeOnly || r.lead != nil {
		return // a process that applies projections builds it, by the lead of its segments
	}
	r.mu.Lock()
	busy := r.builder != nil || r.state.stopped || r.soft == nil
	if !busy {
		// Under the lock run() takes to set stopped before it waits: no
		// Add after that Wait.
		r.wg.Add(1)
	}
	r.mu.Unlock()
	if busy {
		return
	}
	b, err := claimBuild(r.soft, r.pool, r.store, r.p, r.cfg, nil)
	if err != nil {
		r.wg.Done()
		if !errors.Is(err, errNoRebuild) && !errors.Is(err, ErrRebuildRunning) && r.soft.Err() == nil {
			r.log.Warn("could not take up the rebuild", "error", err)
		}
		return
	}
	r.mu.Lock()
	r.builder = b
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		err := b.runBuild(r.soft)
		r.mu.Lock()
		r.builder = nil
		if takeOverFatal(err) {
			// Not taken up again by this process until asked: it would
			// fail the same way.
			r.buildFailed = &buildFailure{generation: b.reg.generation, err: err.Error()}
		}
		r.mu.Unlock()
		switch {
		case err == nil:
			for _, part := range r.segmentRunners() {
				part.supersede()
			}
		case r.soft.Err() != nil:
		default:
			r.log.Warn("rebuild stopped", "generation", b.reg.generation, "error", err)
		}
	}()
}

// refreshRebuild reads the rebuild under way for the status, measures its
// rate, sets the progress metric, and takes the build up if nobody builds
// it.
func (r *Runner) refreshRebuild(ctx context.Context) {
	st, err := readBuilding(ctx, r.pool, r.p.Name())
	if err != nil {
		return // the next status tick tries again
	}
	failed := false
	now := time.Now()
	r.mu.Lock()
	prev := r.rebuild
	if st != nil {
		st.Head = r.state.head.Position
		st.Progress = progress(st.Position, st.Head)
		st.Here = r.builder != nil
		st.Building = st.Building || st.Here
		if r.builder != nil {
			r.builder.mu.Lock()
			st.LastError = r.builder.state.lastError
			r.builder.mu.Unlock()
		}
		if f := r.buildFailed; f != nil && f.generation == st.Generation && !st.Here {
			st.LastError, failed = f.err, true
		}
		if prev != nil && prev.Generation == st.Generation && st.measuredAt(prev, now) {
			st.Rate = 0.5*prev.Rate + 0.5*st.Rate
		} else if prev != nil && prev.Generation == st.Generation {
			st.Rate = prev.Rate
		}
		if st.Rate > 0 && st.Position.Before(st.Head) {
			st.ETA = time.Duration(float64(st.Head.Commit-st.Position.Commit) / st.Rate * float64(time.Second))
		}
		st.observed = now
	}
	r.rebuild = st
	r.mu.Unlock()
	if st == nil {
		r.m.rebuildProgress.Set(1)
		return
	}
	r.m.rebuildProgress.Set(st.Progress)
	if !st.Building && !failed && st.Version == r.p.Version() {
		r.maybeBuild()
	}
}

// measuredAt sets st.Rate from the movement since prev; false when too
// little time passed to tell.
func (st *RebuildStatus) measuredAt(prev *RebuildStatus, now time.Time) bool {
	secs := now.Sub(prev.observed).Seconds()
	if prev.observed.IsZero() || secs < 0.1 || st.Position.Commit < prev.Position.Commit {
		return false
	}
	st.Rate = float64(st.Position.Commit-prev.Position.Commit) / secs
	return true
}

// buildFailure is a build this process gave up on.
type buildFailure struct {
	generation int
	err        string
}

// buildState is what a runner building a generation has beside a runner.
type buildState struct {
	claim   *pgx.Conn // holds the build lock; nil for a verify's scratch copy
	indexed bool
	// until, for a verify's replay, is the position not to apply beyond;
	// segmentUntil, when the read model is segmented, each segment's.
	until        *eventstore.Position
	segmentUntil []eventstore.Position
	// memory is what the builder knows of its generation's revisions.
	memory buildMemory
}

// errReachedUntil ends a replay that has reached its until position.
var errReachedUntil = errors.New("replay reached its position")

// truncate drops the events beyond until; reached says the batch gets
// there.
func (bs *buildState) truncate(events []eventstore.RecordedEvent, checkpoint eventstore.Position) ([]eventstore.RecordedEvent, eventstore.Position, bool) {
	until := *bs.until
	reached := !checkpoint.Before(until)
	if reached {
		n := 0
		for n < len(events) && !until.Before(events[n].Position) {
			n++
		}
		events, checkpoint = events[:n], until
	}
	if segs := bs.segmentUntil; segs != nil {
		kept := make([]eventstore.RecordedEvent, 0, len(events)) // events may be the reader's
		for _, e := range events {
			if !segs[SegmentOf(e.StreamID, len(segs))].Before(e.Position) {
				kept = append(kept, e)
			}
		}
		events = kept
	}
	return events, checkpoint, reached
}

// claimBuild takes the build lock of p and returns a runner for the
// generation of p's version being built. With request, it first requests
// the rebuild, holding the lock already, and sets *request.
func claimBuild(ctx context.Context, pool *pgxpool.Pool, store eventstore.Store, p Projection, cfg Config, request *Rebuild) (*Runner, error) {
	conn, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, err
	}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, buildKey(p.Name())).Scan(&ok); err != nil || !ok {
		if err == nil {
			var gen, version int
			if conn.QueryRow(ctx, `SELECT generation, version FROM sightline.generations WHERE projection = $1 AND state = 'building'`,
				p.Name()).Scan(&gen, &version) == nil {
				err = fmt.Errorf("%w: generation %d (version %d) of %s is being built by another process", ErrRebuildRunning, gen, version, p.Name())
			} else {
				err = fmt.Errorf("%w: another process builds %s", ErrRebuildRunning, p.Name())
			}
		}
		conn.Close(context.WithoutCancel(ctx))
		return nil, err
	}
	if request != nil {
		if *request, err = requestRebuild(ctx, conn, p); err != nil {
			conn.Close(context.WithoutCancel(ctx))
			return nil, err
		}
	}
	var gen int
	err = conn.QueryRow(ctx, `SELECT generation FROM sightline.generations WHERE projection = $1 AND state = 'building' AND version = $2`,
		p.Name(), p.Version()).Scan(&gen)
	var regs []registration // each segment's
	for seg := 0; err == nil && (seg == 0 || seg < regs[0].segments); seg++ {
		var reg registration
		if reg, err = readRegistration(ctx, conn, p.Name(), gen, seg, SegmentsOf(p)); err == nil {
			regs = append(regs, reg)
		}
	}
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		if errors.Is(err, pgx.ErrNoRows) {
			err = fmt.Errorf("%w: no generation of %s version %d is being built", errNoRebuild, p.Name(), p.Version())
		}
		return nil, err
	}
	b := newBuilder(pool, store, p, cfg, regs[0], &buildState{claim: conn}, 0)
	if len(regs) > 1 {
		b.parts = []*Runner{b}
		for seg, reg := range regs[1:] {
			b.parts = append(b.parts, newBuilder(pool, store, p, cfg, reg, &buildState{}, seg+1))
		}
	}
	return b, nil
}

// newBuilder returns a runner that applies segment of generation reg,
// which is not the active one, in large batches; its metrics are its own,
// so the active generation's are not counted twice.
func newBuilder(pool *pgxpool.Pool, store eventstore.Store, p Projection, cfg Config, reg registration, bs *buildState, segment int) *Runner {
	cfg.BatchSize = cfg.RebuildBatchSize
	cfg.Metrics = NewMetrics(nil)
	log := cfg.Logger.With("projection", p.Name(), "generation", reg.generation)
	if reg.segments > 1 {
		log = log.With("segment", segment)
	}
	b := &Runner{
		pool: pool, store: store, p: p, cfg: cfg,
		m:     cfg.Metrics.forProjection(p.Name(), cfg.Source, segment),
		log:   log,
		done:  make(chan struct{}),
		build: bs,

		segment: segment, segments: max(reg.segments, 1),

		advanced: make(chan struct{}),
		reg:      reg,
		serving:  true,
		position: reg.checkpoint,
		state:    runState{lastProgress: time.Now()},

		nextAnalyze: analyzeFirst,
	}
	b.startOnce.Do(func() {}) // never Started: it runs by runBuild or replay
	return b
}

// runBuild applies the generation being built, every segment of it in
// parallel, until it has caught up and taken over, or ctx ends; nil once
// it has taken over.
func (b *Runner) runBuild(ctx context.Context) error {
	defer close(b.done)
	defer b.build.claim.Close(context.WithoutCancel(ctx)) // ends the session: releases the build lock
	// Waits for the segments' ANALYZEs in the background, which softCancel,
	// deferred below and so run first, ends.
	defer func() {
		for _, part := range b.segmentRunners() {
			part.wg.Wait()
		}
	}()
	b.soft, b.softCancel = context.WithCancel(ctx)
	b.hard, b.hardCancel = b.soft, b.softCancel
	defer b.softCancel()
	for _, part := range b.segmentRunners()[1:] {
		part.soft, part.softCancel, part.hard, part.hardCancel = b.soft, b.softCancel, b.soft, b.softCancel
	}
	b.log.Info("building", "version", b.reg.version, "from", b.position.String(), "segments", b.Segments())

	tookOver := make(chan error, 1)
	go func() {
		err := b.takeOver()
		if err == nil {
			b.reconcile(b.soft)
		}
		b.softCancel()
		tookOver <- err
	}()
	parts := b.segmentRunners()
	cancels := make(chan error, len(parts))
	for _, part := range parts {
		go func() { cancels <- part.buildSegment() }()
	}
	var cancelled error
	for range parts {
		cancelled = cmp.Or(cancelled, <-cancels)
	}
	err := <-tookOver
	switch {
	case err == nil:
		return nil
	case cancelled != nil:
		return cancelled
	case errors.Is(err, errSuperseded):
		return fmt.Errorf("%w: %v", ErrRebuildCancelled, err)
	}
	return err
}

// buildSegment applies the builder's segment until the build ends; it
// returns ErrRebuildCancelled when the generation was cancelled.
func (b *Runner) buildSegment() error {
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	for b.soft.Err() == nil {
		err := b.pipeline(b.soft)
		if b.soft.Err() != nil {
			break
		}
		if errors.Is(err, errSuperseded) {
			b.softCancel()
			return fmt.Errorf("%w: %v", ErrRebuildCancelled, err)
		}
		d := retry.NextBackOff()
		b.log.Warn("rebuild restarting from its checkpoint", "error", err, "in", d)
		sleep(b.soft, d)
	}
	return nil
}
