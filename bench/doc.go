// Command bench measures sightline side by side with its references, in one
// run on one machine, and prints a table with the ratios and SPEC §7's
// targets (make bench, or cd bench && go run .; BENCHMARKS.md has a run and
// what limits each figure):
//
//   - rebuilds of each example projection by the sightline binary from the
//     embedded store (1 million events; --events 5000000 for the memory
//     bound), against the ceiling (read the same events, fold them in
//     memory, COPY the final rows, build the indexes) and, for orders, a
//     naive consumer that commits a transaction per event;
//   - the rebuild of the YAML example, examples/projections/order_activity.yaml,
//     on the same store, against plain batching of the same SQL (its
//     handlers' statements with the same bindings, pipelined, a transaction
//     per batch of a rebuild's size) and against the same read model as a
//     Go projection (goactivity, in the program cmd/sightline-activity),
//     rebuilt the same way; the three read models are checked equal;
//   - appends by 8 concurrent single-event writers against plain concurrent
//     inserts into a table of the same shape;
//   - live latency, event written → visible, at a steady 2 000 events/s,
//     from the end-to-end histogram and from a probe that appends and reads
//     back with Projection-Min-Position, for the example projections and
//     order_activity;
//   - query latency of the example endpoints at 1 000 requests/s while
//     projecting, as vegeta (the load generator) and as the API's own
//     request-duration histogram time it, against the same load before
//     the traffic and against two floors: PostgreSQL alone reading orders
//     by primary key at that rate under the traffic, and while plain
//     inserts go in at the traffic's rate;
//   - the idle cost: PostgreSQL's commits in the bench database per
//     appended event at a steady 250 events/s with the example projections
//     and order_activity, split into sequencer runs, projection batches,
//     appends and what is committed with nothing appended;
//   - with --only owners (not in the default set: about 3 minutes, and
//     it starts some forty sightline processes), several 'sightline run'
//     processes on one database under 1 000 events/s: the time until every
//     projection is held again after kill -9 of the holder of one, against
//     the lease, and after SIGTERM; a serve-only node's query latency, and
//     its read-your-writes, against the owner's under the same load; and,
//     once the binary splits projections into segments, a 4-segment copy
//     of examples/projections/order_activity.yaml caught up and rebuilt by
//     1, 2 and 3 processes against the same projection without segments.
//
// It owns the sightline_bench_* databases it creates on the server it is
// given; the rebuild database is kept between runs, so that it is seeded
// once.
//
// It is a module of its own (bench/go.mod), so that what only it needs, such
// as the load generator vegeta, is not a dependency of sightline's. Its
// go.mod replaces sightline with the directory above: it is built with, and
// builds the sightline binary from, the sources beside it.
package main
