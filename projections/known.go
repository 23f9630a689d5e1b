package projections

import (
	"context"
	"sync"

	"github.com/jackc/pgx/v5"
)

// knownStreamsMax bounds how many streams a builder remembers the revisions
// of (270 000 streams raised a rebuild's RSS by about 35 MB). A build of
// more streams reads them, as a live projector does, once it has seen this
// many.
const knownStreamsMax = 1 << 19

// knownRevisions is what a builder knows of its own generation: the last
// revision of every stream it has recorded, and whether any stream is held
// behind a parked event. With it a batch of a rebuild need not read them.
//
// It holds because nothing else writes its streams in a generation while
// it is built without moving its checkpoint, which every batch checks (the
// builders of a segmented projection's other segments write other
// streams, under checkpoints of their own): live projectors
// apply only the active generation, and the parked events of a generation
// that is not active can be neither retried nor skipped. Another builder
// (one that took over the build when this one lost its build lock) moves
// the checkpoint with every batch. Once the build starts taking over, its
// generation may become active at any moment, so the builder retires its
// memory first; and a batch that finds its generation no longer building
// (another builder took it over) retires it too. From then on its batches
// read what they need like everyone else's.
type knownRevisions struct {
	last map[string]int64
	// held: some stream is held, so batches read which ones.
	held bool
}

// readsHeld says a batch must read which of its streams are held: always
// without a memory (nil), and with one once some stream is held.
func (k *knownRevisions) readsHeld() bool { return k == nil || k.held }

// queueWrites queues the writes of streams' new revisions: an insert of
// those it has not seen, which costs PostgreSQL about half what an upsert
// does, and an update of the others. Should the memory lack a stream the
// table has, the insert fails on the primary key, and the batch is applied
// again after loading what the table holds.
func (k *knownRevisions) queueWrites(queue *pgx.Batch, revsTable string, streams []string, revs []int64) {
	var newStreams, oldStreams []string
	var newRevs, oldRevs []int64
	for i, s := range streams {
		if _, ok := k.last[s]; ok {
			oldStreams, oldRevs = append(oldStreams, s), append(oldRevs, revs[i])
		} else {
			newStreams, newRevs = append(newStreams, s), append(newRevs, revs[i])
		}
	}
	if len(newStreams) > 0 {
		queue.Queue(`INSERT INTO `+revsTable+` (stream_id, revision)
			SELECT * FROM unnest($1::text[], $2::bigint[])`, newStreams, newRevs)
	}
	if len(oldStreams) > 0 {
		queue.Queue(`UPDATE `+revsTable+` r SET revision = u.revision
			FROM unnest($1::text[], $2::bigint[]) u (stream_id, revision)
			WHERE r.stream_id = u.stream_id`, oldStreams, oldRevs)
	}
}

// buildMemory is a builder's knownRevisions and what guards them. A batch
// holds mu from its start to its end, so that the take-over's retire can
// never fall between a batch's decision to trust the memory and the reads
// it skips.
type buildMemory struct {
	mu      sync.Mutex
	known   *knownRevisions
	retired bool // by the take-over, or by growing past max
	max     int  // streams it may remember; knownStreamsMax when 0
}

func (m *buildMemory) limit() int {
	if m.max > 0 {
		return m.max
	}
	return knownStreamsMax
}

// recall returns what the builder knows of generation gen, loading it
// from the generation's tables the first time, or nil when it knows
// nothing to rely on. The caller holds mu.
func (m *buildMemory) recall(ctx context.Context, db Querier, revsTable, projection string, gen int) *knownRevisions {
	if m.known != nil || m.retired {
		return m.known
	}
	rows, err := db.Query(ctx, `SELECT stream_id, revision FROM `+revsTable+` LIMIT $1`, m.limit()+1)
	if err != nil {
		return nil // the batch reads what it needs, and the next one tries again
	}
	last := map[string]int64{}
	var stream string
	var rev int64
	if _, err := pgx.ForEachRow(rows, []any{&stream, &rev}, func() error { last[stream] = rev; return nil }); err != nil {
		return nil
	}
	if len(last) > m.limit() {
		m.retired = true
		return nil
	}
	k := &knownRevisions{last: last}
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT FROM sightline.parked
		WHERE projection = $1 AND generation = $2 AND `+waitingRows+`)`, projection, gen).Scan(&k.held); err != nil {
		return nil
	}
	m.known = k
	return k
}

// committed records what a committed batch wrote. The caller holds mu.
func (m *buildMemory) committed(plan batchPlan, parked []parkedRow) {
	k := m.known
	if k == nil {
		return
	}
	streams, revs := plan.revisions()
	for i, s := range streams {
		k.last[s] = revs[i]
	}
	for _, row := range parked {
		k.held = k.held || row.state != ParkedStateSkipped
	}
	if len(k.last) > m.limit() {
		m.known, m.retired = nil, true
	}
}

// forget drops what the builder knows, to be loaded again by the next
// batch: after a batch that failed other than on its events, whose COMMIT
// may or may not have happened, or that found its checkpoint moved. The
// caller holds mu.
func (m *buildMemory) forget() { m.known = nil }

// retire stops the builder relying on its memory for good: its generation
// is about to take over.
func (m *buildMemory) retire() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.retireLocked()
}

// retireLocked is retire for a caller that holds mu.
func (m *buildMemory) retireLocked() { m.known, m.retired = nil, true }
