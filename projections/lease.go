package projections

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
)

// errNotOwner says the projection's lease went to another process, or was
// given up: the runner stops applying it and waits to hold it again.
var errNotOwner = errors.New("projection no longer held by this process")

// Owner is the process that applies a projection.
type Owner struct {
	ID    string    // the process's id (sightline.processes)
	Host  string    // its host name
	PID   int       // its process id there
	Since time.Time // since when it holds the projection
}

// lease is what a runner knows of its projection's ownership. A runner
// whose ownership nobody manages (fenced false) holds it always.
type lease struct {
	fenced  bool          // a Daemon manages it: batches check the epoch
	owned   bool          // this process holds the projection
	owner   string        // this process's id
	epoch   int64         // the epoch it holds it at
	holder  *Owner        // who holds it, as last read; nil when nobody does
	watched bool          // other processes follow the checkpoint: notify them
	changed chan struct{} // closed, and replaced, when owned changes
}

// grant records that this process holds the projection at epoch.
func (r *Runner) grant(epoch int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease.owned && r.lease.epoch == epoch {
		return
	}
	r.lease.owned, r.lease.epoch = true, epoch
	r.m.owned.Set(1)
	close(r.lease.changed)
	r.lease.changed = make(chan struct{})
}

// revoke records that this process no longer holds the projection and
// ends its attachment; the batch in flight finishes or is fenced off.
func (r *Runner) revoke() {
	r.mu.Lock()
	if !r.lease.owned {
		r.mu.Unlock()
		return
	}
	r.lease.owned = false
	// What the abandoned pipeline was doing is not this process's any more.
	r.state.failing, r.state.lastError, r.state.sourceErr = false, "", ""
	r.state.oldest, r.state.pending, r.state.live = time.Time{}, 0, false
	r.m.owned.Set(0)
	close(r.lease.changed)
	r.lease.changed = make(chan struct{})
	cancel := r.pipeCancel
	r.mu.Unlock()
	if cancel != nil {
		cancel(errNotOwner)
	}
}

// ownedLocked reports whether this process may apply the projection.
func (r *Runner) ownedLocked() bool { return !r.lease.fenced || r.lease.owned }

// waitOwned returns true once this process holds the projection, false
// when the runner stops first.
func (r *Runner) waitOwned() bool {
	for {
		r.mu.Lock()
		owned, changed := r.ownedLocked(), r.lease.changed
		r.mu.Unlock()
		if owned {
			return true
		}
		select {
		case <-changed:
		case <-r.soft.Done():
			return false
		}
	}
}

// queueFence queues, when ownership is managed, the check that this
// process still holds the projection at its epoch (sightline.check_owner),
// which holds the owners row until the batch ends. Builders are not
// fenced: their build lock keeps them one at a time.
func (r *Runner) queueFence(b *pgx.Batch) bool {
	r.mu.Lock()
	fenced, owner, epoch := r.lease.fenced && r.build == nil, r.lease.owner, r.lease.epoch
	r.mu.Unlock()
	if fenced {
		b.Queue(`SELECT sightline.check_owner($1, $2, $3, $4)`, r.p.Name(), r.segment, owner, epoch)
	}
	return fenced
}

// checkpointChannel carries "projection commit prepare segment" at the
// commit of each batch that moves a checkpoint, for the processes that
// follow it.
const checkpointChannel = "sightline_checkpoints"

// queueNotify queues the notification of the checkpoint a batch commits,
// when other processes follow it: they read it at the commit, without
// polling. Builders' checkpoints are nobody's to follow.
func (r *Runner) queueNotify(b *pgx.Batch, p eventstore.Position) {
	r.mu.Lock()
	watched := r.lease.watched && r.build == nil
	r.mu.Unlock()
	if watched {
		b.Queue(`SELECT pg_notify($1, $2)`, checkpointChannel, fmt.Sprintf("%s %d %d %d", r.p.Name(), p.Commit, p.Prepare, r.segment))
	}
}

// follow takes up a checkpoint another process committed, unless this one
// applies the projection.
func (r *Runner) follow(p eventstore.Position) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.ownedLocked() && r.position.Before(p) {
		r.setElsewhereLocked(p)
	}
}

// holderOf is the process that holds the runner's segment, as last read,
// or nil.
func (r *Runner) holderOf() *Owner {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease.holder == nil {
		return nil
	}
	h := *r.lease.holder
	return &h
}

// stopped reports whether the runner has ended.
func (r *Runner) stopped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state.stopped
}

// owned reports whether this process applies the runner's segment.
func (r *Runner) owned() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ownedLocked()
}
