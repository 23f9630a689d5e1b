package projections

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
)

// apply applies one batch in one transaction: the read-model writes, the
// per-stream revisions and the checkpoint commit together or not at all.
func (r *Runner) apply(ctx context.Context, events []eventstore.RecordedEvent, checkpoint eventstore.Position) error {
	start := time.Now()
	streams := byStream(events, r.p.Filter())

	r.mu.Lock()
	expected := r.position
	r.mu.Unlock()
	if len(streams.order) == 0 && !expected.Before(checkpoint) {
		return nil // nothing to apply and nothing to record
	}

	tx, err := r.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a no-op after Commit

	// One round trip: lock the checkpoint row, so that batches of the same
	// projection never interleave, and read the streams' last revisions.
	revsTable := pgx.Identifier{r.reg.schema, "_stream_revisions"}.Sanitize()
	read := &pgx.Batch{}
	read.Queue(`SELECT commit_position, prepare_position FROM sightline.checkpoints
		WHERE projection = $1 AND generation = $2 FOR UPDATE`, r.p.Name(), r.reg.generation)
	read.Queue(`SELECT stream_id, revision FROM `+revsTable+` WHERE stream_id = ANY($1)`, streams.order)
	res := tx.SendBatch(ctx, read)
	var commit, prepare int64
	if err := res.QueryRow().Scan(&commit, &prepare); err != nil {
		res.Close()
		return fmt.Errorf("lock checkpoint: %w", err)
	}
	if stored := (eventstore.Position{Commit: uint64(commit), Prepare: uint64(prepare)}); stored != expected {
		res.Close()
		r.mu.Lock()
		r.setPositionLocked(stored)
		r.mu.Unlock()
		return fmt.Errorf("%w: expected %s, found %s", errCheckpointMoved, expected, stored)
	}
	last := make(map[string]int64, len(streams.order))
	rows, err := res.Query()
	if err == nil {
		var id string
		var rev int64
		_, err = pgx.ForEachRow(rows, []any{&id, &rev}, func() error { last[id] = rev; return nil })
	}
	if cerr := res.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("read stream revisions: %w", err)
	}

	plan, err := r.plan(ctx, streams, last)
	if err != nil {
		return err
	}
	b := &Batch{Tx: tx, Schema: r.reg.schema, Events: plan.apply, queue: &pgx.Batch{}}
	if len(plan.apply) > 0 {
		if err := r.p.Apply(ctx, b); err != nil {
			return fmt.Errorf("apply %d events: %w", len(plan.apply), err)
		}
	}
	if len(plan.revStreams) > 0 {
		b.queue.Queue(`INSERT INTO `+revsTable+` (stream_id, revision)
			SELECT * FROM unnest($1::text[], $2::bigint[])
			ON CONFLICT (stream_id) DO UPDATE SET revision = excluded.revision`, plan.revStreams, plan.revValues)
	}
	for _, g := range plan.gaps {
		b.queue.Queue(`INSERT INTO sightline.gaps (projection, generation, stream_id, from_revision, to_revision)
			VALUES ($1, $2, $3, $4, $5)`, r.p.Name(), r.reg.generation, g.stream, int64(g.from), int64(g.to))
	}
	newPosition := expected
	if expected.Before(checkpoint) {
		newPosition = checkpoint
		b.queue.Queue(`UPDATE sightline.checkpoints SET commit_position = $3, prepare_position = $4, updated_at = now()
			WHERE projection = $1 AND generation = $2`, r.p.Name(), r.reg.generation, int64(checkpoint.Commit), int64(checkpoint.Prepare))
	}
	if err := tx.SendBatch(ctx, b.queue).Close(); err != nil {
		return fmt.Errorf("write batch: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}

	now := time.Now()
	r.mu.Lock()
	r.setPositionLocked(newPosition)
	r.state.applied += uint64(len(plan.apply))
	r.state.lastProgress = now
	r.mu.Unlock()
	r.m.applied.Add(float64(len(plan.apply)))
	r.m.duplicate.Add(float64(plan.duplicates))
	r.m.gapUnfilled.Add(float64(plan.unfilled))
	r.m.gapsRepaired.Add(float64(plan.repaired))
	r.m.batchDuration.Observe(now.Sub(start).Seconds())
	r.m.batchEvents.Observe(float64(len(events)))
	for _, e := range plan.apply {
		r.m.endToEnd.Observe(now.Sub(e.CreatedAt).Seconds())
	}
	for _, g := range plan.gaps {
		r.log.Warn("revisions missing from the store; going on without them",
			"stream", g.stream, "from_revision", g.from, "to_revision", g.to)
	}
	return nil
}

// streamEvents groups a batch by stream, in the order streams first appear.
type streamEvents struct {
	order  []string
	events map[string][]eventstore.RecordedEvent
}

func byStream(events []eventstore.RecordedEvent, f eventstore.Filter) streamEvents {
	s := streamEvents{events: map[string][]eventstore.RecordedEvent{}}
	for _, e := range events {
		if !f.Matches(e.StreamID, e.Type) {
			continue // not this projection's; a source may deliver more than asked
		}
		if _, ok := s.events[e.StreamID]; !ok {
			s.order = append(s.order, e.StreamID)
		}
		s.events[e.StreamID] = append(s.events[e.StreamID], e)
	}
	return s
}

type gap struct {
	stream   string
	from, to uint64 // inclusive
}

// batchPlan is what a batch does once revisions are checked.
type batchPlan struct {
	apply                          []eventstore.RecordedEvent
	revStreams                     []string
	revValues                      []int64
	gaps                           []gap
	duplicates, unfilled, repaired int
}

// plan checks each stream's events against its last applied revision:
// at or below it is a duplicate or late arrival, skipped; above last+1 is a
// gap, filled from the store first, or recorded when the store cannot.
func (r *Runner) plan(ctx context.Context, s streamEvents, last map[string]int64) (batchPlan, error) {
	var p batchPlan
	for _, stream := range s.order {
		events := s.events[stream]
		slices.SortStableFunc(events, func(a, b eventstore.RecordedEvent) int { return compareUint(a.Revision, b.Revision) })
		next := uint64(0)
		if rev, ok := last[stream]; ok {
			next = uint64(rev) + 1
		}
		start := next
		for _, e := range events {
			switch {
			case e.Revision < next:
				p.duplicates++
				continue
			case e.Revision > next:
				if err := r.fillGap(ctx, &p, stream, next, e.Revision); err != nil {
					return batchPlan{}, err
				}
			}
			p.apply = append(p.apply, e)
			next = e.Revision + 1
		}
		if next != start {
			p.revStreams = append(p.revStreams, stream)
			p.revValues = append(p.revValues, int64(next-1))
		}
	}
	return p, nil
}

// fillGap reads revisions [from, to) of stream from the store and plans
// them; what the store does not have is recorded as a gap.
func (r *Runner) fillGap(ctx context.Context, p *batchPlan, stream string, from, to uint64) error {
	got, err := r.store.ReadStream(ctx, stream, from, int(to-from))
	if err != nil && !errors.Is(err, eventstore.ErrStreamNotFound) {
		return fmt.Errorf("read back revisions %d..%d of %s: %w", from, to-1, stream, err)
	}
	next := from
	filter := r.p.Filter()
	for _, e := range got {
		if e.Revision < next || e.Revision >= to {
			continue
		}
		if e.Revision > next {
			p.gaps = append(p.gaps, gap{stream, next, e.Revision - 1})
			p.unfilled += int(e.Revision - next)
		}
		if filter.Matches(e.StreamID, e.Type) {
			p.apply = append(p.apply, e)
		}
		next = e.Revision + 1
	}
	if next < to {
		p.gaps = append(p.gaps, gap{stream, next, to - 1})
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

// setPositionLocked records a committed checkpoint and wakes WaitFor.
func (r *Runner) setPositionLocked(p eventstore.Position) {
	if r.position == p {
		return
	}
	r.position = p
	close(r.advanced)
	r.advanced = make(chan struct{})
}
