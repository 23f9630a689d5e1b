package projections

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"

	"github.com/sightlinehq/sightline/eventstore"
)

// streamEvents groups a batch by stream, in the order streams first appear:
// events[i] is the events of order[i], sharing one array.
type streamEvents struct {
	order  []string
	events [][]eventstore.RecordedEvent
}

// byStream leaves out the events f does not choose, and with several
// segments those of streams of other segments than segment.
func byStream(events []eventstore.RecordedEvent, f eventstore.Filter, segment, segments int) streamEvents {
	var s streamEvents
	index := map[string]int{}
	var counts []int
	slot := make([]int, len(events)) // each event's stream in order; -1 when filtered out
	n := 0
	for j, e := range events {
		if !f.Matches(e.StreamID, e.Type) || segments > 1 && SegmentOf(e.StreamID, segments) != segment {
			slot[j] = -1 // not this projection's (a source may deliver more than asked), or another segment's
			continue
		}
		i, ok := index[e.StreamID]
		if !ok {
			i = len(s.order)
			index[e.StreamID] = i
			s.order = append(s.order, e.StreamID)
			counts = append(counts, 0)
		}
		slot[j] = i
		counts[i]++
		n++
	}
	all := make([]eventstore.RecordedEvent, 0, n)
	s.events = make([][]eventstore.RecordedEvent, len(s.order))
	for i, c := range counts {
		s.events[i] = all[len(all) : len(all) : len(all)+c]
		all = all[:len(all)+c]
	}
	for j, e := range events {
		if i := slot[j]; i >= 0 {
			s.events[i] = append(s.events[i], e)
		}
	}
	return s
}

type gap struct {
	stream   string
	from, to uint64 // inclusive
}

// streamPlan is what a batch does with one stream.
type streamPlan struct {
	stream string
	// events to apply, or to park when the stream is held: in revision
	// order, without duplicates, gaps filled from the store.
	events []eventstore.RecordedEvent
	// next is the revision the stream expected when the batch began;
	// through is the last revision the batch covers, applied or recorded
	// as a gap (next-1 when it covers none).
	next, through uint64
	// held: the stream has parked events, so its events park behind them.
	held bool
	// failed is set when events[failedAt] failed its last attempt.
	failed   error
	failedAt int
	attempts int
	// carried are events skipped as an operator skipped them before.
	carried []carriedSkip
}

// batchPlan is what a batch does once revisions are checked.
type batchPlan struct {
	streams                        []*streamPlan
	gaps                           []gap
	duplicates, unfilled, repaired int
}

// live is the streams whose events are applied, not parked.
func (p batchPlan) live() []*streamPlan {
	var out []*streamPlan
	for _, s := range p.streams {
		if !s.held && len(s.events) > 0 {
			out = append(out, s)
		}
	}
	return out
}

// applied is the events the batch applies.
func (p batchPlan) applied() iter.Seq[eventstore.RecordedEvent] {
	return func(yield func(eventstore.RecordedEvent) bool) {
		for _, s := range p.streams {
			if s.held {
				continue
			}
			for _, e := range s.pending() {
				if !s.skips(e) && !yield(e) {
					return
				}
			}
		}
	}
}

// skips says whether e is one of the events s skips as skipped before.
func (s *streamPlan) skips(e eventstore.RecordedEvent) bool {
	for _, c := range s.carried {
		if c.event.Revision == e.Revision {
			return true
		}
	}
	return false
}

// revisions is the new last applied revision of each stream the batch
// moves. A held stream does not move; a stream that failed moves to just
// before its parked event.
func (p batchPlan) revisions() ([]string, []int64) {
	var streams []string
	var revs []int64
	for _, s := range p.streams {
		through := s.through
		switch {
		case s.held:
			continue
		case s.failed != nil:
			failed := s.events[s.failedAt].Revision
			if failed == s.next {
				continue // it failed first: nothing moved
			}
			through = failed - 1 // the events before it applied, the gaps before it recorded
		}
		if through+1 > s.next {
			streams = append(streams, s.stream)
			revs = append(revs, int64(through))
		}
	}
	return streams, revs
}

// pending is the events of s still to try: those before the one to be
// parked, if any.
func (s *streamPlan) pending() []eventstore.RecordedEvent {
	if s.failed != nil {
		return s.events[:s.failedAt]
	}
	return s.events
}

func eventsOf(streams []*streamPlan) []eventstore.RecordedEvent {
	n := 0
	for _, s := range streams {
		n += len(s.pending())
	}
	out := make([]eventstore.RecordedEvent, 0, n)
	for _, s := range streams {
		out = append(out, s.pending()...)
	}
	return out
}

// plan checks each stream's events against its last applied (or parked)
// revision: at or below it is a duplicate or late arrival, skipped; above
// the next one is a gap, filled from the store first, or recorded when the
// store cannot.
func (r *Runner) plan(ctx context.Context, s streamEvents, last, held map[string]int64) (batchPlan, error) {
	p := batchPlan{streams: make([]*streamPlan, 0, len(s.order))}
	plans := make([]streamPlan, len(s.order))
	for i, stream := range s.order {
		events := s.events[i]
		slices.SortStableFunc(events, func(a, b eventstore.RecordedEvent) int { return compareUint(a.Revision, b.Revision) })
		next := uint64(0)
		if rev, ok := last[stream]; ok {
			next = uint64(rev) + 1
		}
		sp := &plans[i]
		sp.stream = stream
		if rev, ok := held[stream]; ok {
			sp.held = true
			next = max(next, uint64(rev)+1)
		}
		sp.next = next
		if inSequence(events, next) { // the usual case: nothing to drop or fill
			sp.events = events
			sp.through = events[len(events)-1].Revision
			p.streams = append(p.streams, sp)
			continue
		}
		for _, e := range events {
			switch {
			case e.Revision < next:
				p.duplicates++
				continue
			case e.Revision > next:
				if err := r.fillGap(ctx, &p, sp, next, e.Revision); err != nil {
					return batchPlan{}, err
				}
			}
			sp.events = append(sp.events, e)
			next = e.Revision + 1
		}
		sp.through = next - 1
		p.streams = append(p.streams, sp)
	}
	return p, nil
}

// inSequence says events, in revision order, are next, next+1 and so on.
func inSequence(events []eventstore.RecordedEvent, next uint64) bool {
	for i, e := range events {
		if e.Revision != next+uint64(i) {
			return false
		}
	}
	return len(events) > 0
}

// fillGap reads revisions [from, to) of a stream from the store and plans
// them; what the store does not have is recorded as a gap.
func (r *Runner) fillGap(ctx context.Context, p *batchPlan, sp *streamPlan, from, to uint64) error {
	got, err := r.store.ReadStream(ctx, sp.stream, from, int(to-from))
	if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
		return fmt.Errorf("read back revisions %d..%d of %s: %w", from, to-1, sp.stream, err)
	}
	next := from
	filter := r.p.Filter()
	for _, e := range got {
		if e.Revision < next || e.Revision >= to {
			continue
		}
		if e.Revision > next {
			p.gaps = append(p.gaps, gap{sp.stream, next, e.Revision - 1})
			p.unfilled += int(e.Revision - next)
		}
		if filter.Matches(e.StreamID, e.Type) {
			sp.events = append(sp.events, e)
		}
		next = e.Revision + 1
	}
	if next < to {
		p.gaps = append(p.gaps, gap{sp.stream, next, to - 1})
		p.unfilled += int(to - next)
	}
	if next > from {
		p.repaired++
	}
	return nil
}

func compareUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
