package projections

import (
	"context"
	"time"

	"github.com/sightlinehq/sightline/eventstore"
)

// lagLocked is the age of the oldest event the read model does not reflect.
// It is zero when the checkpoint has reached the head, including when the
// newest events are ones the projection's filter does not choose.
func (r *Runner) lagLocked(now time.Time) time.Duration {
	if !r.position.Before(r.state.head.Position) || r.idleLiveLocked() {
		return 0
	}
	if !r.state.oldest.IsZero() {
		return max(0, now.Sub(r.state.oldest))
	}
	// Behind, with nothing in hand yet: the oldest event not reflected is at
	// least as old as the head's, and existed when a head still beyond the
	// position was first seen.
	lag := time.Duration(0)
	if !r.state.head.Time.IsZero() {
		lag = now.Sub(r.state.head.Time)
	}
	if s, ok := r.oldestSightingLocked(); ok {
		lag = max(lag, now.Sub(s.at))
	}
	return max(0, lag)
}

// idleLiveLocked: the source is live and everything it sent is applied, so
// whatever lies beyond the position does not concern this projection.
func (r *Runner) idleLiveLocked() bool { return r.state.live && r.state.pending == 0 }

// sightLocked records the head seen at now, if it is beyond the position.
func (r *Runner) sightLocked(head eventstore.Position, now time.Time) {
	if r.idleLiveLocked() {
		r.state.behind = r.state.behind[:0]
		return
	}
	if !r.position.Before(head) || len(r.state.behind) >= maxSightings {
		return
	}
	if n := len(r.state.behind); n > 0 && !r.state.behind[n-1].head.Before(head) {
		return // an older sighting of this head or a later one bounds better
	}
	r.state.behind = append(r.state.behind, sighting{head: head, at: now})
}

// oldestSightingLocked drops the sightings the position has reached and
// returns the oldest left.
func (r *Runner) oldestSightingLocked() (sighting, bool) {
	i := 0
	for i < len(r.state.behind) && !r.position.Before(r.state.behind[i].head) {
		i++
	}
	r.state.behind = r.state.behind[i:]
	if len(r.state.behind) == 0 {
		return sighting{}, false
	}
	return r.state.behind[0], true
}

// statusLocked derives the status from the state at now.
func (r *Runner) statusLocked(now time.Time) string {
	behind := r.position.Before(r.state.head.Position)
	switch {
	case r.state.stopped:
		return StatusStopped
	case !r.serving:
		return StatusRebuilding // the code's version is not the one served yet
	case r.state.failing && now.Sub(r.state.failingSince) >= r.cfg.FailAfter:
		return StatusFailed
	case r.state.sourceErr != "" || r.state.disconnected:
		return StatusDegraded
	case r.state.failing || (behind && !r.idleLiveLocked() && r.stalledLocked(now)):
		return StatusStalled
	case !behind || r.lagLocked(now) < r.cfg.LiveLag:
		return StatusLive
	default:
		return StatusCatchingUp
	}
}

// connector is a store that knows whether it is connected to its server.
type connector interface{ Connected() bool }

// seeConnectedLocked notes whether the store, if it can tell, is
// connected.
func (r *Runner) seeConnectedLocked() {
	c, ok := r.store.(connector)
	if !ok {
		return
	}
	switch connected := c.Connected(); {
	case !connected && !r.state.disconnected:
		r.state.disconnected, r.state.disconnectedSince = true, time.Now()
	case connected:
		r.state.disconnected = false
	}
}

// reasonLocked says why the status at now is failed, degraded or
// stalled; it is empty for the others.
func (r *Runner) reasonLocked(now time.Time) string {
	since := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() }
	switch r.statusLocked(now) {
	case StatusFailed:
		return "batches failing for " + since(r.state.failingSince) + ": " + r.state.lastError
	case StatusDegraded:
		if r.state.sourceErr == "" {
			return "event source not connected for " + since(r.state.disconnectedSince)
		}
		return "event source unreachable for " + since(r.state.sourceSince) + ": " + r.state.sourceErr
	case StatusStalled:
		if r.state.failing {
			return "batches failing for " + since(r.state.failingSince) + ", retried: " + r.state.lastError
		}
		return "behind the head with no batch committed for " + since(r.state.lastProgress)
	case StatusStopped:
		return r.state.lastError
	}
	return ""
}

// reportStatus refreshes the head, the status, the lag metrics and the
// status row every StatusInterval until the runner stops.
func (r *Runner) reportStatus() {
	tick := time.NewTicker(r.cfg.StatusInterval)
	defer tick.Stop()
	var lastApplied uint64
	lastTick := time.Now()
	for {
		headCtx, cancel := context.WithTimeout(r.soft, r.cfg.StatusInterval+time.Second)
		h, err := r.store.Head(headCtx)
		cancel()
		r.mu.Lock()
		if err == nil {
			r.seeHeadLocked(h)
		}
		r.seeConnectedLocked()
		r.mu.Unlock()
		now := time.Now()
		r.mu.Lock()
		behind := r.position.Before(r.state.head.Position)
		r.sightLocked(r.state.head.Position, now)
		lag := r.lagLocked(now)
		if secs := now.Sub(lastTick).Seconds(); secs > 0 {
			r.state.rate = 0.5*r.state.rate + 0.5*float64(r.state.applied-lastApplied)/secs
		}
		lastApplied, lastTick = r.state.applied, now
		r.state.updatedAt = now
		caughtUp := !behind || r.idleLiveLocked()
		r.mu.Unlock()

		r.refreshActive(r.soft)
		if r.segment == 0 { // the lead speaks for the projection, every segment of it
			r.reportProjection(lag, caughtUp)
		}
		select {
		case <-tick.C:
		case <-r.soft.Done():
			return
		}
	}
}

// reportProjection is the lead's part of a status tick: the projection's
// metrics, its parked events and rebuild, its status row and its expired
// generations. lag and caughtUp are the lead's own segment's.
func (r *Runner) reportProjection(lag time.Duration, caughtUp bool) {
	st := r.Status()
	if r.parts != nil {
		lag = st.Lag
		for _, part := range r.parts[1:] {
			part.mu.Lock()
			caughtUp = caughtUp && (!part.position.Before(part.state.head.Position) || part.idleLiveLocked())
			part.mu.Unlock()
		}
	}
	r.m.lag.Set(lag.Seconds())
	r.m.setStatus(st.Status)
	if caughtUp {
		r.m.caughtUp.Set(1)
	} else {
		r.m.caughtUp.Set(0)
	}
	if r.ticks%parkedEvery == 0 {
		r.refreshParked(r.soft)
	}
	r.refreshRebuild(r.soft)
	r.writeStatus(r.soft)
	if r.ticks%dropEvery == 0 {
		r.dropExpired(r.soft)
	}
	r.ticks++
}

// Of the lead's status ticks, every parkedEvery-th counts the parked
// events (this process counts them at once when it parks, retries or
// skips some: the tick catches what other processes did) and every
// dropEvery-th drops the generations whose time is up. With nothing to
// apply, the status ticks and the ownership rounds are all the projector
// commits.
const (
	parkedEvery = 5
	dropEvery   = 10
)

// writeStatus writes the status row that readmodel.projection_status
// shows. A runner waiting for a rebuild to take over leaves the row to a
// runner serving the active version, if one writes it.
func (r *Runner) writeStatus(ctx context.Context) {
	st := r.Status()
	r.mu.Lock()
	serving := r.serving && r.ownedLocked() // the row is the applier's to write
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := r.pool.Exec(ctx, `UPDATE sightline.projections SET status = $2, head = $3, lag_ms = $4, reason = $7, updated_at = now()
		WHERE name = $1 AND ($5 OR updated_at < now() - $6::interval)`,
		r.p.Name(), st.Status, st.Head.String(), st.Lag.Milliseconds(), serving, 3*r.cfg.StatusInterval, st.Reason); err != nil && ctx.Err() == nil {
		r.log.Warn("write projection status", "error", err)
	}
}

// refreshActive notices a generation that took over, built by another
// process, and ends the attachment to the one it replaced. While not
// serving, it follows the active generation's checkpoint, which a process
// running the older version may still move.
func (r *Runner) refreshActive(ctx context.Context) {
	reg := r.registration()
	gen, pos, err := activeCheckpoint(ctx, r.pool, r.p.Name(), r.segment, r.segments)
	if err != nil {
		return // the next status tick tries again
	}
	if gen != reg.generation {
		r.mu.Lock()
		follower := !r.ownedLocked()
		r.mu.Unlock()
		if follower { // nothing of this process to end: take the new generation up
			if next, err := readRegistration(ctx, r.pool, r.p.Name(), gen, r.segment, r.segments); err == nil {
				r.mu.Lock()
				if !r.ownedLocked() && r.reg.generation != gen { // still a follower, and nobody took it up meanwhile
					r.reg, r.serving = next, next.version == r.p.Version()
					r.wakeAllStreamsLocked() // their state is the new generation's now
					r.setElsewhereLocked(pos)
				}
				r.mu.Unlock()
			}
			return
		}
		r.supersede()
		return
	}
	r.mu.Lock()
	switch {
	case !r.ownedLocked(): // another process applies it: follow its checkpoint, forward only (a notification may be newer)
		if r.position.Before(pos) {
			r.setElsewhereLocked(pos)
		}
	case !r.serving:
		r.setElsewhereLocked(pos)
	}
	r.mu.Unlock()
}

// dropExpired drops the projection's generations whose time is up.
func (r *Runner) dropExpired(ctx context.Context) {
	dropped, err := dropExpired(ctx, r.pool, r.p.Name())
	for _, gen := range dropped {
		r.log.Info("replaced generation dropped", "generation", gen)
	}
	if err != nil && ctx.Err() == nil {
		r.log.Warn("could not drop a replaced generation yet", "error", err)
	}
}

// stalledLocked: behind, and no commit since the oldest head still ahead
// was seen, for longer than StallAfter. An idle projection is not stalled
// by the first event after its quiet spell.
func (r *Runner) stalledLocked(now time.Time) bool {
	since := r.state.lastProgress
	if s, ok := r.oldestSightingLocked(); ok && s.at.After(since) {
		since = s.at
	}
	return now.Sub(since) > r.cfg.StallAfter
}
