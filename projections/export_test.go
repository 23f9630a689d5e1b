package projections

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PauseOwnership stops the daemon's ownership rounds without giving its
// projections up, as a process that is paused or cut off from the
// database stops renewing: its runners go on as if they still held them.
func (d *Daemon) PauseOwnership() {
	d.owners.stop()
	d.owners.beatCancel()
	<-d.owners.beatDone
	d.owners.beatCancel = nil
}

// Generation is the generation the runner reads: the one it applies, or
// the active one it follows.
func (r *Runner) Generation() int { return r.registration().generation }

// VerifyHistory is how many verifies of a projection are kept.
const VerifyHistory = verifyHistory

// RecordVerify records rec as Verify does, keeping the keep newest.
func RecordVerify(ctx context.Context, pool *pgxpool.Pool, rec VerifyRecord, keep int) error {
	return recordVerify(ctx, pool, rec, keep)
}
