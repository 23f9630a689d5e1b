// Package projections is sightline's projector: it applies events from an
// eventstore.Store to PostgreSQL read models.
//
// One event's path, in the order the code runs it (runner.go, apply.go):
// the Runner subscribes from the projection's checkpoint; a reader goroutine
// forwards messages into a small channel; the applier collects what has
// arrived into a batch, groups it by stream, and in one transaction locks the
// checkpoint row, reads the streams' last applied revisions, skips
// duplicates and late arrivals, fills gaps from the store (or records them in
// sightline.gaps), hands the rest to the Projection's Apply, and writes the
// revisions and the checkpoint before committing. Metrics follow the commit.
//
// When Apply fails, errors.go decides whose fault it is. An infrastructure
// failure retries the batch whole. Otherwise apply.go isolates the failing
// events in savepoints, retries each with backoff, and parks the last
// failure with the rest of its stream in sightline.parked; parked.go lists
// and releases parked events under the same checkpoint-row lock as batches.
//
// Generations (generations.go, rebuild.go): each projection writes into a
// schema per generation; sightline.projections names the active one, which
// the readmodel views show. A rebuild builds the next generation beside it
// with a second runner in large batches, then takes over in one transaction
// that freezes the active generation's checkpoint row, waits for the build
// to apply as far, marks the old one superseded and re-points the views. A
// runner whose generation is superseded attaches to the new one. Verify
// (verify.go) replays into a scratch generation and compares tables at one
// position.
//
// It owns the sightline.projections, sightline.checkpoints,
// sightline.generations, sightline.gaps and sightline.parked rows of its
// projections, the sl_<name>_g<generation> schemas and the readmodel views
// that point at them. It must not touch the event store's tables:
// everything it reads from the store goes through eventstore.Store.
package projections
