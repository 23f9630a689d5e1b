package projections

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
)

// benchProjection chooses order streams; its Apply is never called here.
type benchProjection struct{}

func (benchProjection) Name() string     { return "bench" }
func (benchProjection) Version() int     { return 1 }
func (benchProjection) Tables() []string { return nil }
func (benchProjection) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"order-"}}
}
func (benchProjection) Setup(context.Context, pgx.Tx, string) error { return nil }
func (benchProjection) Apply(context.Context, *Batch) error         { return nil }

// replayBatch is a rebuild's batch: events of streams interleaved, four
// per stream, in position order.
func replayBatch(n int) []eventstore.RecordedEvent {
	events := make([]eventstore.RecordedEvent, n)
	streams := n / 4
	now := time.Now()
	for i := range events {
		events[i] = eventstore.RecordedEvent{
			StreamID: fmt.Sprintf("order-%06d", i%streams), Revision: uint64(i / streams), Type: "OrderPaid",
			Position: eventstore.At(uint64(i + 1)), Data: []byte(`{"amount":100}`), CreatedAt: now,
		}
	}
	return events
}

// BenchmarkPlan is the per-batch work of the projector before the
// projection's Apply: grouping by stream and checking revisions, for a
// 10 000-event rebuild batch.
func BenchmarkPlan(b *testing.B) {
	r := &Runner{p: benchProjection{}}
	events := replayBatch(10_000)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		streams := byStream(events, r.p.Filter(), 0, 1)
		plan, err := r.plan(context.Background(), streams, map[string]int64{}, nil)
		if err != nil {
			b.Fatal(err)
		}
		if n := countApplied(plan); n != len(events) {
			b.Fatal("events lost")
		}
		_, _ = plan.revisions()
	}
	b.ReportMetric(float64(len(events))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkCollect is taking a batch from what the reader has forwarded.
func BenchmarkCollect(b *testing.B) {
	events := replayBatch(10_000)
	b.ReportAllocs()
	for b.Loop() {
		msgs := make(chan eventstore.Message, 10)
		for i := 1; i < 10; i++ {
			msgs <- eventstore.Message{Events: events[i*1000 : (i+1)*1000], Checkpoint: events[(i+1)*1000-1].Position}
		}
		got, _, _, _ := collect(eventstore.Message{Events: events[:1000]}, msgs, 10_000)
		if len(got) != len(events) {
			b.Fatal("events lost")
		}
	}
}

func countApplied(p batchPlan) int {
	n := 0
	for range p.applied() {
		n++
	}
	return n
}
