package projections

import (
	"context"
	"fmt"
	"hash/fnv"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
)

// Projection keeps a read model from events. Its Name is its identity: the
// projector stores its checkpoint and per-stream revisions under that name,
// so renaming a projection builds it again from the start.
type Projection interface {
	// Name is a stable identifier: lower case letters, digits and _.
	Name() string
	// Version changes when the read model's shape or meaning changes.
	Version() int
	// Filter chooses the events the projection reads. The projector tracks
	// revisions per stream, so a filter should choose whole streams
	// (StreamPrefixes); events of those streams without a handler are skipped.
	Filter() eventstore.Filter
	// Tables lists the tables Setup creates. Each is readable, whatever the
	// active generation, as readmodel.<table>.
	Tables() []string
	// Setup creates the read model's tables in schema.
	Setup(ctx context.Context, tx pgx.Tx, schema string) error
	// Apply applies a batch of events to the read model. A batch may roll
	// back after Apply and come again, with the same events or fewer (a
	// retry, an isolation, or checks that found a duplicate among them
	// once Apply had queued its writes), so Apply acts only through the
	// batch.
	Apply(ctx context.Context, b *Batch) error
}

// Indexer is implemented by projections with secondary indexes that are
// cheaper to build once, after a rebuild's bulk load, than to keep up row by
// row during it. Setup creates the tables with their primary keys; the
// statements Indexes returns create the rest. They run on an empty first
// generation right after Setup, and on a rebuilt one once it has caught up,
// before it takes over.
type Indexer interface {
	Indexes(schema string) []string
}

// Segmenter is implemented by projections split into segments: their
// streams are divided among Segments() segments by a stable hash of the
// stream id (SegmentOf), and each segment has its own checkpoint and owner,
// so that several segments apply in parallel, in one process or across
// several. Each stream's events still apply in revision order, by the one
// segment it belongs to; events of different streams may apply in any
// order, so a segmented projection must not rely on the order of events
// across streams. The number is part of a generation: changing it needs a
// new version (a rebuild). Without Segmenter, a projection has one segment.
type Segmenter interface {
	Segments() int
}

// MaxSegments is the most segments a projection may have.
const MaxSegments = 64

// SegmentsOf is the number of segments of p: Segments() if p is a
// Segmenter, else 1.
func SegmentsOf(p Projection) int {
	if s, ok := p.(Segmenter); ok {
		return s.Segments()
	}
	return 1
}

// SegmentOf is the segment, from 0 to segments-1, that applies stream: the
// 32-bit FNV-1a hash of its id, modulo segments. It never changes for a
// stream and a number of segments.
func SegmentOf(stream string, segments int) int {
	if segments <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(stream))
	return int(h.Sum32() % uint32(segments))
}

// Batch is the work of one transaction. Events are those the projection has
// not applied yet: each stream's events in revision order with no
// duplicates and no gaps the store could fill; streams appear in the order
// their first event arrived.
type Batch struct {
	// Tx is the batch's transaction. Reads of the read model go through it;
	// writes may too, but Queue is faster. Begin makes a savepoint, as with
	// pgx; LargeObjects is not available (it returns the zero value). A
	// live batch whose Apply uses Tx commits on its own; one whose Apply
	// only queues may share its commit with other projections' batches
	// (Config.CommitWait), so a read that a statement can do (a join, a
	// subquery) is cheaper done there.
	Tx pgx.Tx
	// Schema is the schema of the generation being written.
	Schema string
	// Events to apply. Read-only: their Data and Metadata may be shared
	// with other projections reading the same store.
	Events []eventstore.RecordedEvent

	queue *pgx.Batch
}

// Queue adds a statement that the projector sends, together with the
// checkpoint, in one round trip after Apply returns; when it applies events
// in savepoints (isolating a failing one, or releasing parked ones), it
// sends them in the event's savepoint instead. Its errors fail the batch.
func (b *Batch) Queue(sql string, args ...any) {
	b.queue.Queue(sql, args...)
}

// Table returns the quoted name of table in the batch's schema.
func (b *Batch) Table(name string) string {
	return pgx.Identifier{b.Schema, name}.Sanitize()
}

// schemaName is where generation gen of a projection keeps its tables.
func schemaName(name string, gen int) string { return fmt.Sprintf("sl_%s_g%d", name, gen) }
