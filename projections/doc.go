// Package projections is sightline's projector: it applies events from an
// eventstore.Store to PostgreSQL read models.
//
// # One event's path
//
// In the order the code runs it, with the file and function of each step:
//
//  1. Subscription (runner.go). Runner.Start registers the projection and
//     starts run; serve attaches to the active generation and sets the
//     runner's position to that generation's stored checkpoint. pipeline
//     starts read, which subscribes from there (forward: Store.Subscribe
//     with the projection's Filter) and forwards each message into a
//     channel of a few messages (readAhead); when the subscription fails, it
//     subscribes again from the last message forwarded.
//  2. Batching (runner.go). pipeline takes the first message that arrives
//     and, through collect, whatever others have already arrived, up to
//     about Config.BatchSize events, without waiting for more; the batch's
//     checkpoint is the latest of their checkpoints. applyWithRetry hands
//     the batch to apply (apply.go), which tries it with applyOnce (a
//     second time, reading first, when a one-round-trip attempt finds it
//     assumed wrong: step 7).
//  3. The transaction (apply.go). applyOnce groups the batch by stream
//     (byStream, plan.go), leaving out events the Filter does not choose. A
//     live batch whose events of each stream follow one another
//     (assumedRevisions) goes to the server in one round trip (oneTrip): it
//     assumes that each stream stands just before the batch's first event
//     of it, that none is held, and that the checkpoint is where this runner
//     left it, and queues, unsent behind its BEGIN (deferBegin, batchtx.go),
//     statements that lock the checkpoint row and raise if an assumption is
//     wrong. A builder's batch whose streams the builder knows, none of
//     them held, goes the same way (buildTrip, inflight.go), its checks the
//     checkpoint and that the generation is still being built; it is left
//     in flight while the builder prepares the next one, which is sent only
//     once it has committed (a failure there drops the next one unsent and
//     applies the failed one again first). Any other batch (a builder's
//     that does not know its streams, an isolation's, one whose events do
//     not follow one another) reads first (readFirst): one round trip
//     begins, locks the checkpoint row (FOR UPDATE, so that batches of the
//     projection and releases of parked events never interleave), checks
//     that the row holds the checkpoint this runner committed (otherwise
//     checkpointMoved, checkpoint.go), and reads the streams' last applied
//     revisions and which of them are held behind a parked event; a builder
//     keeps the revisions in memory instead (known.go).
//  4. The revision guard (plan.go). plan sorts each stream's events by
//     revision and compares them with the revision the stream expects next
//     (inSequence when they simply follow on): an event at or below the
//     stream's last applied or parked revision is a duplicate or a late
//     arrival and is skipped; one beyond the next leaves a gap, which
//     fillGap reads from the store (Store.ReadStream), recording what the
//     store does not have as a gap. A held stream's events are kept to be
//     parked behind its parked event.
//  5. The handler (apply.go). The events to apply go to the Projection's
//     Apply in one call, in the batch's transaction without a savepoint,
//     through safeApply, which turns a panic into an error. Apply reads
//     through Batch.Tx and writes through it or with Batch.Queue. If Apply
//     fails while a oneTrip batch's checks are unsent, the checks answer
//     first, so that an event they would have kept from Apply is not blamed.
//     An error of Apply, or later of its queued statements, that is not
//     transient (classify, errors.go) is a handlerError, and the batch rolls
//     back.
//  6. Retry, backoff and parking (runner.go, isolate.go). applyWithRetry
//     retries a batch that failed on the infrastructure whole, with backoff
//     and a fresh transaction each time; the projection shows stalled
//     meanwhile, and failed once it has kept failing for Config.FailAfter,
//     with the error as its reason (status.go). After a handlerError it applies the batch again at once
//     with an isolation (newIsolation): isolate applies the live streams in
//     savepoints (applyInSavepoint), halving the set of streams while it
//     fails, then the failing stream's events one at a time. An event that
//     fails with attempts left ends the transaction with an eventRetryError,
//     and applyWithRetry waits out a jittered backoff
//     (Config.RetryInitialInterval up to Config.RetryMaxInterval) with no
//     transaction open before trying again. An event that fails its
//     Config.MaxAttempts-th attempt, or fails for certain (IsPermanent), is
//     marked to be parked, unless an operator skipped it in an earlier
//     generation (skippedBefore), and park writes it to sightline.parked in
//     the batch's transaction, with the rest of its stream held behind it,
//     while the other streams apply and the checkpoint advances.
//     RetryParked and SkipParked (parked.go) release parked events under the
//     checkpoint-row lock that batches take.
//  7. The checkpoint and the commit (apply.go). applyOnce queues, behind the
//     projection's statements, the streams' new last revisions (the
//     generation's _stream_revisions table), the gaps (sightline.gaps) and,
//     when it is ahead of the runner's position, the batch's checkpoint
//     (sightline.checkpoints); commitWith sends them and the COMMIT in one
//     round trip, after whatever of the transaction was still unsent (a
//     oneTrip batch's BEGIN and checks). The read-model writes, the
//     revisions, the parked events and the checkpoint commit together or
//     not at all. When a check raised, nothing is written, and
//     assumptionFailed (checkpoint.go) says why: a stream was not where the
//     batch assumed (errNotAsAssumed: apply tries again, reading first), the
//     checkpoint was moved by another process (checkpointMoved: the pipeline
//     starts again from the stored one), or the generation was replaced
//     (errSuperseded: the runner attaches to the new one). A Daemon's live
//     oneTrip batches that nothing of has been sent yet commit together
//     (shared.go): Runner.commit hands them to sharedCommits, whose leader
//     waits up to Config.CommitWait for the batches the other projections
//     have in hand and sends them all between one BEGIN and one COMMIT on
//     its own connection. Each member's checks guard its own part, as they
//     would alone; if anything fails, the shared transaction rolls back
//     whole and every member commits alone, on the path above, where its
//     failure is its own. A lock_timeout keeps a member held back by a lock
//     from holding the others, and the member whose statement failed
//     commits alone for a while.
//  8. After the commit (apply.go, checkpoint.go, streams.go, status.go).
//     Holding the runner's mutex, applyOnce calls setPositionLocked, which
//     records the new position and closes the channel WaitFor waits on, and
//     wakeStreamsLocked, which wakes the WatchStream watchers of each stream
//     whose revision the batch moved or whose events it parked; it counts
//     the events applied and the time of progress for the status. Then come
//     the metrics, the log of gaps and parked events, when it parked some
//     refreshParked's count of them (parked.go), and analyzeWhileGrowing
//     (analyze.go), which keeps a young generation's table statistics up to
//     date. applyWithRetry clears the runner's failing state, and pipeline
//     counts the batch's messages as no longer pending. Every
//     Config.StatusInterval, reportStatus (status.go) reads the store's
//     head, derives the status and lag from it and the position, and writes
//     them to sightline.projections.
//
// # Generations
//
// Generations (generations.go, rebuild.go, takeover.go): each projection
// writes into a schema per generation; sightline.projections names the
// active one, which the readmodel views show. A rebuild builds the next
// generation beside it with a second runner (one per segment) in large
// batches, then takes over in one transaction that freezes the active
// generation's checkpoint rows, waits for the build to apply as far, marks the old one superseded and re-points the views. A
// runner whose generation is superseded attaches to the new one. Verify
// (verify.go) replays into a scratch generation and compares tables at one
// position; each outcome is kept in sightline.verifications
// (verifications.go), which LastVerify reads.
//
// # Segments
//
// A Segmenter projection runs a Runner per segment (segments.go): each
// subscribes on its own, leaves out the streams of other segments
// (byStream, by SegmentOf), and keeps its own checkpoint row, keyed by
// segment, and its own lease. The runner of segment 0 leads: NewRunner
// returns it, it starts and stops the others, its Status, WaitFor, Reached
// and WatchStream speak for all of them (the lowest position, a wait for
// every segment, the stream's own segment), and it alone writes the status
// row, counts parked events and builds rebuilds, whose builder has a
// runner per segment too.
//
// # What it owns
//
// It owns the sightline.projections, sightline.checkpoints,
// sightline.generations, sightline.gaps and sightline.parked rows of its
// projections, the sl_<name>_g<generation> schemas and the readmodel views
// that point at them. It must not touch the event store's tables:
// everything it reads from the store goes through eventstore.Store.
//
// Several processes on one database share the projections (owners.go):
// each holds some by lease in sightline.owners and applies only those; a
// runner whose projection another process holds waits (lease.go), following
// that process's checkpoint by LISTEN/NOTIFY (Daemon.follow) so that its
// reads stay fresh. Every batch of a held projection first checks, in its
// transaction, that its process still holds it at its epoch
// (sightline.check_owner, queued by queueFence in oneTrip and readFirst): a
// process that lost the lease commits nothing more.
package projections
