package projections_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// split is a projection split into n segments, at version (its own when
// version is 0). The example projections' handlers do not depend on the
// order of events across streams, so split, their read models are still
// the fold of the events.
type split struct {
	projections.Projection
	n, version int
}

func (s split) Segments() int { return s.n }
func (s split) Version() int {
	if s.version != 0 {
		return s.version
	}
	return s.Projection.Version()
}

// splitExamples are the example projections, split into 4, 3 and 2.
func splitExamples() []projections.Projection {
	return []projections.Projection{
		split{Projection: readmodel.Orders{}, n: 4},
		split{Projection: readmodel.CustomerStats{}, n: 3},
		split{Projection: readmodel.DailySales{}, n: 2},
	}
}

// TestSegmentOfIsStable: a stream's segment is a fixed function of its
// id (it decides which checkpoint covers the stream, in every process and
// every release), and spreads streams evenly.
func TestSegmentOfIsStable(t *testing.T) {
	// FNV-1a, 32 bits, modulo the segments; these values must never change.
	for stream, want := range map[string][3]int{
		"order-1": {1, 1, 5}, "order-2": {0, 1, 4}, "customer-42": {0, 1, 6}, "": {1, 1, 5},
	} {
		got := [3]int{projections.SegmentOf(stream, 2), projections.SegmentOf(stream, 3), projections.SegmentOf(stream, 8)}
		require.Equal(t, want, got, "segments of %q", stream)
		require.Zero(t, projections.SegmentOf(stream, 1))
	}
	counts := make([]int, 4)
	for i := range 40000 {
		counts[projections.SegmentOf(fmt.Sprintf("order-%d", i), 4)]++
	}
	for seg, n := range counts {
		require.InDelta(t, 10000, n, 500, "segment %d of 4 has %d of 40 000 streams", seg, n)
	}
}

// TestSegmentedProjectionsAreExact: each segment has its own checkpoint
// and applies its own streams, in parallel with the others, and the read
// models equal the fold of the events; the status speaks for the segments
// together: the lowest position, the highest lag.
func TestSegmentedProjectionsAreExact(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.start(t, ctx, splitExamples()...)
	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 400, Customers: 30, Writers: 4, Seed: 11})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, b.db.Pool)

	for _, p := range splitExamples() {
		want := p.(split).n
		var rows, segments int
		require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM sightline.checkpoints WHERE projection = $1),
			(SELECT segments FROM sightline.generations WHERE projection = $1 AND state = 'active')`, p.Name()).Scan(&rows, &segments))
		require.Equal(t, [2]int{want, want}, [2]int{rows, segments}, p.Name())

		r := d.Runner(p.Name())
		require.Equal(t, want, r.Segments())
		st := r.Status()
		require.Len(t, st.Segments, want)
		lowest := st.Segments[0].Position
		for i, seg := range st.Segments {
			require.Equal(t, i, seg.Segment)
			require.True(t, seg.Owned)
			if seg.Position.Before(lowest) {
				lowest = seg.Position
			}
		}
		require.Equal(t, lowest, st.Position, "a segmented projection's position is its lowest segment's")
		require.True(t, st.Owned)
	}
	// The status view shows the lowest segment's position and the count.
	var position string
	var segments int
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT position, segments FROM readmodel.projection_status WHERE projection = 'orders'`).Scan(&position, &segments))
	require.Equal(t, 4, segments)
	require.Equal(t, d.Runner("orders").Status().Position.String(), position)
}

// TestWaitsCoverTheirSegments: a wait by position waits for every
// segment, so a segment held back holds it; the stream of another segment
// is applied meanwhile, and a wait by its revision does not wait for the
// segment held back.
func TestWaitsCoverTheirSegments(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.start(t, ctx, split{Projection: readmodel.Orders{}, n: 2})
	r := d.Runner("orders")
	// order-2 is in segment 0, order-1 in segment 1 (TestSegmentOfIsStable).
	appendOrder(t, ctx, b.store, "order-1", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":1}`))
	first := appendOrder(t, ctx, b.store, "order-2", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":2}`))
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	require.NoError(t, r.WaitFor(wait, first.Position))
	cancel()

	// Hold segment 1 back: its batches lock its checkpoint row first.
	hold, err := b.db.Pool.Begin(ctx)
	require.NoError(t, err)
	defer hold.Rollback(context.Background()) //nolint:errcheck // the test ends it
	_, err = hold.Exec(ctx, `SELECT FROM sightline.checkpoints WHERE projection = 'orders' AND segment = 1 FOR UPDATE`)
	require.NoError(t, err)

	held := appendOrder(t, ctx, b.store, "order-1", storetest.Event(readmodel.TypeOrderPaid, `{"amount":1}`))
	moved, stop := r.WatchStream("order-2")
	defer stop()
	free := appendOrder(t, ctx, b.store, "order-2", storetest.Event(readmodel.TypeOrderPaid, `{"amount":2}`))
	select {
	case <-moved: // order-2's segment applied it, segment 1 held back or not
	case <-time.After(10 * time.Second):
		t.Fatal("the stream of a free segment was not applied while another segment was held back")
	}
	var paid int64
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT paid FROM readmodel.orders WHERE id = '2'`).Scan(&paid))
	require.Equal(t, int64(2), paid)

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, r.WaitFor(short, free.Position), context.DeadlineExceeded, "a wait by position covers the segment held back")
	require.False(t, r.Reached(held.Position))
	st := r.Status()
	require.True(t, st.Position.Before(held.Position), "the position is the lowest segment's: %s", st.Position)

	require.NoError(t, hold.Rollback(ctx))
	wait, cancel = context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	require.NoError(t, r.WaitFor(wait, free.Position))
	require.True(t, r.Reached(held.Position))
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT paid FROM readmodel.orders WHERE id = '1'`).Scan(&paid))
	require.Equal(t, int64(1), paid)
}

// TestSegmentsShareAcrossProcesses: two processes split the segments
// among them, each applied by one, in parallel across the processes; one
// stopping hands its segments over; the read models are exact, and the
// status says who applies each segment.
func TestSegmentsShareAcrossProcesses(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	ctx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	start := func(id string) (*projections.Daemon, *projections.Metrics) {
		return b.startProcess(t, ctx, id, splitExamples()...)
	}
	segmentsOwned := func(d *projections.Daemon) (n int) {
		for _, r := range d.Runners() {
			for _, seg := range r.Status().Segments {
				if seg.Owned {
					n++
				}
			}
		}
		return n
	}
	a, ma := start("proc-a")
	require.Equal(t, 9, segmentsOwned(a), "alone, it holds every segment")
	bb, mb := start("proc-b")
	require.Eventually(t, func() bool { return segmentsOwned(a) == 5 && segmentsOwned(bb) == 4 }, 10*time.Second, 10*time.Millisecond,
		"the 9 segments are shared 5/4: a %d, b %d", segmentsOwned(a), segmentsOwned(bb))

	_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 300, Customers: 30, Writers: 4, Seed: 5})
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, b.db.Pool)

	// Each segment is held by one process, and both say which.
	var rows int
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM sightline.owners WHERE NOT released`).Scan(&rows))
	require.Equal(t, 9, rows)
	require.Eventually(t, func() bool {
		for _, d := range []*projections.Daemon{a, bb} {
			for _, r := range d.Runners() {
				for _, seg := range r.Status().Segments {
					if seg.Owner == nil || seg.Owned != (seg.Owner.ID == map[*projections.Daemon]string{a: "proc-a", bb: "proc-b"}[d]) {
						return false
					}
				}
			}
		}
		return true
	}, 5*time.Second, 10*time.Millisecond)
	ownedBy := func(m *projections.Metrics) (n float64) {
		for seg := range 4 {
			n += testutil.ToFloat64(m.Owned.WithLabelValues("orders", fmt.Sprint(seg)))
		}
		return n
	}
	require.Equal(t, 4.0, ownedBy(ma)+ownedBy(mb), "each of orders' segments is owned once: %v + %v", ownedBy(ma), ownedBy(mb))

	require.NoError(t, bb.Stop(ctx))
	require.Eventually(t, func() bool { return segmentsOwned(a) == 9 }, 10*time.Second, 10*time.Millisecond)
	more := appendOrder(t, ctx, b.store, "order-late", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":3}`))
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, r := range a.Runners() {
		require.NoError(t, r.WaitFor(wait, more.Position), r.Name())
	}
	readmodeltest.RequireExact(t, ctx, b.db.Pool)
}

// TestSegmentedRebuildAndVerify: a rebuild builds every segment in
// parallel, each with its own checkpoint, and takes over once all have
// caught up; verify replays each segment to where the read model's
// segment stands, and finds drift where there is some.
func TestSegmentedRebuildAndVerify(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	p := split{Projection: readmodel.Orders{}, n: 4}
	d := b.start(t, ctx, p)
	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, b.store, simulate.Config{Orders: 300, Customers: 30, Writers: 2, Rate: 2000, Seed: 8})
		traffic <- err
	}()
	time.Sleep(100 * time.Millisecond)
	r := d.Runner("orders")
	rb, err := r.Rebuild(ctx)
	require.NoError(t, err)
	require.NoError(t, <-traffic)
	require.Eventually(t, func() bool { gen, _ := activeGeneration(t, ctx, b, "orders"); return gen == rb.Generation }, 30*time.Second, 10*time.Millisecond)
	var rows int
	require.NoError(t, b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM sightline.checkpoints WHERE projection = 'orders' AND generation = $1`,
		rb.Generation).Scan(&rows))
	require.Equal(t, 4, rows)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "orders")
	diff, err := readmodeltest.DiffOf(ctx, b.db.Pool, 5, "orders")
	require.NoError(t, err)
	require.Empty(t, diff["orders"])

	report, err := projections.Verify(ctx, b.db.Pool, b.store, p, 5, projections.Config{})
	require.NoError(t, err)
	require.Zero(t, report.Drifted, "%+v", report.Drift)
	require.Equal(t, r.Status().Position, report.Position)

	_, err = b.db.Pool.Exec(ctx, fmt.Sprintf(`UPDATE sl_orders_g%d.orders SET total = total + 1 WHERE id = (SELECT min(id) FROM sl_orders_g%d.orders)`,
		rb.Generation, rb.Generation))
	require.NoError(t, err)
	report, err = projections.Verify(ctx, b.db.Pool, b.store, p, 5, projections.Config{})
	require.NoError(t, err)
	require.Equal(t, int64(1), report.Drifted, "%+v", report.Drift)
}

// TestSegmentsChangeWithAVersion: the number of segments is part of a
// generation; code with another number at the same version is refused,
// and at a new version it is rebuilt with the new number.
func TestSegmentsChangeWithAVersion(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	d := b.start(t, ctx, split{Projection: readmodel.Orders{}, n: 2})
	appendOrder(t, ctx, b.store, "order-1", storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":1}`))
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "orders")
	require.NoError(t, d.Stop(ctx))

	r, err := projections.NewRunner(b.db.Pool, b.store, split{Projection: readmodel.Orders{}, n: 4}, projections.Config{})
	require.NoError(t, err)
	err = r.Start(ctx)
	require.ErrorIs(t, err, projections.ErrSegmentsChanged)
	require.ErrorContains(t, err, "2 segments in the database and 4 in code")
	require.NoError(t, r.Stop(ctx))

	d = b.start(t, ctx, split{Projection: readmodel.Orders{}, n: 4, version: 2})
	require.Eventually(t, func() bool {
		var version, segments int
		return b.db.Pool.QueryRow(ctx, `SELECT g.version, g.segments FROM sightline.projections p
			JOIN sightline.generations g ON g.projection = p.name AND g.generation = p.generation WHERE p.name = 'orders'`).Scan(&version, &segments) == nil &&
			version == 2 && segments == 4
	}, 30*time.Second, 10*time.Millisecond)
	readmodeltest.WaitCaughtUp(t, ctx, b.db.Pool, "orders")
	require.Len(t, d.Runner("orders").Status().Segments, 4)
	diff, err := readmodeltest.DiffOf(ctx, b.db.Pool, 5, "orders")
	require.NoError(t, err)
	require.Empty(t, diff["orders"])
}

// TestParkedEventOfASegment: a poison event parks its stream in its
// segment, the other streams go on, and a retry releases it under its
// segment's checkpoint lock.
func TestParkedEventOfASegment(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t)
	tl := newTally("boom")
	d := b.start(t, ctx, split{Projection: tl, n: 3})
	r := d.Runner("tally")
	var last eventstore.AppendResult
	for i := range 30 {
		data := map[string]any{"n": i}
		if i == 7 {
			data["fail"] = "boom"
		}
		raw, err := json.Marshal(data)
		require.NoError(t, err)
		last = appendOrder(t, ctx, b.store, fmt.Sprintf("t-%d", i%6), storetest.Event("Counted", string(raw)))
	}
	wait, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, r.WaitFor(wait, last.Position), "a parked event holds its stream, not the segments")
	list := parked(t, ctx, b)
	require.NotEmpty(t, list)
	require.Equal(t, "t-1", list[0].Event.StreamID)
	require.Eventually(t, func() bool { return r.Status().Parked == len(list) }, 5*time.Second, 10*time.Millisecond)

	tl.heal("boom")
	rel, err := r.Retry(ctx, list[0].ID)
	require.NoError(t, err)
	require.Nil(t, rel.Parked)
	rows := tallies(t, ctx, b)
	require.Len(t, rows, 6)
	for stream, row := range rows {
		require.Equal(t, int64(5), row.events, stream)
	}
}
