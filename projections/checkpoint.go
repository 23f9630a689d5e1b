package projections

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/sightlinehq/sightline/eventstore"
)

// assumptionFailed turns the error of the checks that oneTrip queued
// (an uncheckedError) into the error the runner acts on; other errors
// pass unchanged.
func (r *Runner) assumptionFailed(err error, reg registration, expected eventstore.Position) error {
	var checks *uncheckedError
	var pgErr *pgconn.PgError
	if !errors.As(err, &checks) || !errors.As(checks.err, &pgErr) {
		return err
	}
	switch pgErr.Code {
	case "SLOWN":
		return fmt.Errorf("%w: %s", errNotOwner, pgErr.Message)
	case "SLREV":
		return errNotAsAssumed
	case "SLGEN":
		return fmt.Errorf("%w: generation %d of %s is gone or replaced", errSuperseded, reg.generation, r.p.Name())
	case "SLCKM":
		var commit, prepare uint64
		if _, serr := fmt.Sscan(pgErr.Detail, &commit, &prepare); serr != nil {
			// The runner registers again, reading the checkpoint.
			return fmt.Errorf("%w: expected %s, found %q", errCheckpointMoved, expected, pgErr.Detail)
		}
		return r.checkpointMoved(expected, eventstore.Position{Commit: commit, Prepare: prepare})
	}
	return err
}

// notOwner turns the fence's refusal into errNotOwner.
func notOwner(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "SLOWN" {
		return fmt.Errorf("%w: %s", errNotOwner, pgErr.Message)
	}
	return err
}

// checkpointMoved takes up the checkpoint a batch found stored instead of
// the one it expected, which another process moved, and says so: the
// runner's pipeline starts again from there.
func (r *Runner) checkpointMoved(expected, stored eventstore.Position) error {
	r.mu.Lock()
	r.setElsewhereLocked(stored)
	r.mu.Unlock()
	return fmt.Errorf("%w: expected %s, found %s", errCheckpointMoved, expected, stored)
}

// setElsewhereLocked records a checkpoint another process committed. Its
// batches moved streams this runner does not know of, so every stream's
// watchers are woken to look again.
func (r *Runner) setElsewhereLocked(p eventstore.Position) {
	if r.position != p {
		r.wakeAllStreamsLocked()
		r.state.lastProgress = time.Now() // progress, made elsewhere
	}
	r.setPositionLocked(p)
}

// setPositionLocked records a committed checkpoint and wakes WaitFor.
func (r *Runner) setPositionLocked(p eventstore.Position) {
	if r.position == p {
		return
	}
	r.position = p
	close(r.advanced)
	r.advanced = make(chan struct{})
}
