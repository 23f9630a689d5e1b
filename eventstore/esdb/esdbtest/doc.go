// Package esdbtest is an in-process test double of the EventStoreDB/KurrentDB
// gRPC wire protocol. It is NOT an EventStoreDB server: it speaks just enough
// of the Streams service for the real client library
// (github.com/EventStore/EventStore-Client-Go/v4/esdb) to exercise an adapter
// in tests, with everything kept in memory for the lifetime of one test.
//
// What it implements (Streams service only):
//
//   - Append: expected-revision rules (any, no_stream, stream_exists, exact
//     revision) with the wrong_expected_version reply, multi-event appends that
//     share one commit position with distinct increasing prepare positions, and
//     idempotent re-appends of event ids already stored consecutively (ids
//     only partly stored fail with wrong expected version, as on the server;
//     ids are checked per stream only).
//   - Read of a stream (forwards or backwards, revision inclusive, count) with
//     the stream_not_found reply, and of $all (forwards or backwards from
//     Start, End or a position).
//   - Catch-up subscriptions to $all and to a stream: confirmation first,
//     exclusive start positions, the backlog, caught_up, then live events.
//     $all subscriptions honour stream-identifier/event-type filters (prefixes
//     or regex) and send checkpoint replies every window × multiplier scanned
//     events and on catching up.
//   - $ce-<category> streams of link events ($>, "<revision>@<stream>"),
//     derived synchronously from appends, with resolve-link-tos; a link whose
//     target was removed with [Server.DeleteEvent] carries no event.
//   - Fault injection: [Server.DropSubscriptions], [Server.Stop] and
//     [Server.Restart].
//
// It does not simulate: gossip/cluster discovery, TLS or authentication,
// ServerFeatures (the client accepts Unimplemented), BatchAppend, Delete,
// Tombstone, stream metadata semantics ($maxAge, $tb, ACLs), persistent
// subscriptions, projections other than by-category, fell_behind, or the
// byte-offset meaning of positions (positions only grow). The $ce- link events
// are not written to $all, and their positions are those of the linked events.
//
// Use it to test our reading of the protocol; keep a suite against a real
// server for everything else.
package esdbtest
