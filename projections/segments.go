package projections

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/sightlinehq/sightline/eventstore"
)

// A segmented projection runs a Runner per segment; the lead's methods
// below speak for them all. For a projection of one segment they are the
// runner's own.

// SegmentStatus is a snapshot of one segment of a segmented projection.
type SegmentStatus struct {
	Segment         int
	Status          string
	Position        eventstore.Position
	Lag             time.Duration
	EventsPerSecond float64
	Reason          string
	// Owner is the process that applies the segment, when one does; Owned
	// says whether it is this one.
	Owner *Owner
	Owned bool
}

// segmentRunners is every segment's runner, the lead's first.
func (r *Runner) segmentRunners() []*Runner {
	if r.parts == nil {
		return []*Runner{r}
	}
	return r.parts
}

// segmentOf is the runner of the segment that applies stream.
func (r *Runner) segmentOf(stream string) *Runner {
	if r.parts == nil {
		return r
	}
	return r.parts[SegmentOf(stream, len(r.parts))]
}

// Segments is the number of segments of the projection.
func (r *Runner) Segments() int { return len(r.segmentRunners()) }

// Reached reports whether the projection has applied pos: every segment
// has.
func (r *Runner) Reached(pos eventstore.Position) bool {
	for _, part := range r.segmentRunners() {
		if !part.reachedSegment(pos) {
			return false
		}
	}
	return true
}

// WaitFor returns once the projection has applied everything up to pos,
// in every segment, or ctx ends. It waits on the runners' commits (or the
// notifications of those another process commits), not on the database.
func (r *Runner) WaitFor(ctx context.Context, pos eventstore.Position) error {
	for _, part := range r.segmentRunners() {
		if err := part.waitSegment(ctx, pos); err != nil {
			return err
		}
	}
	return nil
}

// StatusAt is Status with the store's head as of now, for callers that have
// just read it.
func (r *Runner) StatusAt(head eventstore.Head) Status {
	for _, part := range r.segmentRunners() {
		part.seeHead(head)
	}
	return r.Status()
}

// Holder is the process that holds the projection, as last read: the one
// that holds every segment; nil when nobody does, or the segments are
// held by different processes (see Status().Segments).
func (r *Runner) Holder() *Owner {
	var holder *Owner
	for i, part := range r.segmentRunners() {
		h := part.holderOf()
		switch {
		case h == nil:
			return nil
		case i == 0:
			holder = h
		case h.ID != holder.ID:
			return nil
		case h.Since.After(holder.Since):
			holder.Since = h.Since // holds them all since the last
		}
	}
	return holder
}

// Owned reports whether this process applies the projection: every
// segment of it.
func (r *Runner) Owned() bool {
	for _, part := range r.segmentRunners() {
		if !part.owned() {
			return false
		}
	}
	return true
}

// severity orders the statuses a segmented projection's status is the
// worst of.
var severity = []string{StatusLive, StatusCatchingUp, StatusRebuilding, StatusStalled, StatusDegraded, StatusFailed, StatusStopped}

// Status returns the projection's current status. A segmented one's
// position is its lowest segment's, its head and lag the highest, its rate
// the sum, and its status and reason the worst segment's.
func (r *Runner) Status() Status {
	own := r.segmentStatus()
	if r.parts == nil {
		return own
	}
	st := own
	st.Owner, st.Owned = r.Holder(), true
	worst := 0
	for _, part := range r.parts {
		ps := own
		if part != r {
			ps = part.segmentStatus()
		}
		st.Segments = append(st.Segments, SegmentStatus{Segment: part.segment, Status: ps.Status, Position: ps.Position,
			Lag: ps.Lag, EventsPerSecond: ps.EventsPerSecond, Reason: ps.Reason, Owner: ps.Owner, Owned: ps.Owned})
		if part == r {
			continue
		}
		if ps.Position.Before(st.Position) {
			st.Position = ps.Position
		}
		if st.Head.Before(ps.Head) {
			st.Head = ps.Head
		}
		st.Lag = max(st.Lag, ps.Lag)
		st.EventsPerSecond += ps.EventsPerSecond
		st.Owned = st.Owned && ps.Owned
		st.LastError = cmp.Or(st.LastError, ps.LastError)
		if ps.UpdatedAt.After(st.UpdatedAt) {
			st.UpdatedAt = ps.UpdatedAt
		}
		if slices.Index(severity, ps.Status) > slices.Index(severity, st.Segments[worst].Status) {
			worst = len(st.Segments) - 1
		}
	}
	st.Owned = st.Owned && st.Segments[0].Owned
	if w := st.Segments[worst]; worst > 0 {
		st.Status, st.Reason = w.Status, ""
		if w.Reason != "" {
			st.Reason = "segment " + strconv.Itoa(w.Segment) + ": " + w.Reason
		}
	} else if st.Reason != "" {
		st.Reason = "segment 0: " + st.Reason
	}
	return st
}
