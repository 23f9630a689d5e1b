// Package pgstore is sightline's embedded event store: events in PostgreSQL,
// in the same database as the read models.
//
// It owns the sightline.event_log, sightline.unsequenced, sightline.positions
// and sightline.sequencer tables, the sightline.events view and the
// sightline.position_events_rows function that the sequencer calls, with
// the sightline.position_events it wraps (created by internal/migrate; the
// older sightline.sequence_events stays for processes running older code),
// and nothing else in the database.
//
// An append inserts its events and marks them unsequenced, in one statement;
// the (stream_id, revision) key is its optimistic concurrency guard. After
// commit, a sequencer gives committed events gapless positions in batches,
// one sequencer at a time across all processes. Readers read below the
// sequenced head: they never skip an event that commits late, never wait on
// a timeout, and are not held back by a transaction left open anywhere in
// the database, because uncommitted rows simply have no position yet. Each sequencer run notifies
// 'sightline_events', which wakes subscribers at once.
//
// An append commits without waiting for the disk and is acknowledged once
// positioned: the sequencer's synchronous commit, later in the WAL, makes it
// durable first (see unflushed). Appends made at the same time from one
// process go to the server together, one statement and one transaction for
// each group, each append with its own expected revision, and one group at
// a time unless the one in flight is slow (see grouper).
// When no sequencer run holds the lock, a group positions its events in its
// own transaction, which then waits for the disk as a run's does: at a few
// hundred appends a second, an append is one commit instead of two.
package pgstore
