package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/internal/redact"
)

// verifyHistory is how many verifies of each projection
// sightline.verifications keeps: recording one drops those before.
const verifyHistory = 100

// verifyRecordTimeout bounds the recording of a verify, which goes on when
// the caller's context ends as the verify finishes.
const verifyRecordTimeout = 10 * time.Second

// VerifyRecord is a verify as sightline.verifications keeps it: a report,
// drift or not, or the error that stopped the verify part way (then
// Position is empty, Rows and Drift are empty and Drifted is 0).
type VerifyRecord struct {
	ID         int64  `json:"id"`
	Projection string `json:"projection"`
	// Version and Generation are the active generation's, the one
	// compared; Position is the token both sides were compared at.
	Version    int       `json:"version"`
	Generation int       `json:"generation"`
	Position   string    `json:"position"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	// Rows, Drifted and Drift are the report's: the rows of each table in
	// the read model, how many drifted, and the first of them.
	Rows    map[string]int64 `json:"rows"`
	Drifted int64            `json:"drifted"`
	Drift   []Drift          `json:"drift"`
	// Error says why the verify failed; empty when it finished.
	Error string `json:"error"`
}

// verifyRecord is the record of a verify that started at start and ended
// with report, or with err.
func verifyRecord(report VerifyReport, start time.Time, err error) VerifyRecord {
	rec := VerifyRecord{Projection: report.Projection, Version: report.Version, Generation: report.Generation,
		StartedAt: start, FinishedAt: start.Add(report.Took), Rows: map[string]int64{}, Drift: []Drift{}}
	if err != nil {
		rec.Error = redact.URLsIn(err.Error())
		return rec
	}
	rec.Position, rec.Drifted = report.Position.String(), report.Drifted
	if report.Rows != nil {
		rec.Rows = report.Rows
	}
	if report.Drift != nil {
		rec.Drift = report.Drift
	}
	return rec
}

// recordVerify adds rec to sightline.verifications and drops the
// projection's records but the keep newest, in one transaction.
func recordVerify(ctx context.Context, pool *pgxpool.Pool, rec VerifyRecord, keep int) error {
	rows, err := json.Marshal(rec.Rows)
	if err != nil {
		return err
	}
	drift, err := json.Marshal(rec.Drift)
	if err != nil {
		return err
	}
	// A batch runs as one implicit transaction, in one round trip.
	batch := &pgx.Batch{}
	batch.Queue(`INSERT INTO sightline.verifications (projection, version, generation, position, started_at, finished_at, rows, drifted, drift, error)
		VALUES ($1, $2, $3, nullif($4, ''), $5, $6, $7::jsonb, $8, $9::jsonb, nullif($10, ''))`,
		rec.Projection, rec.Version, rec.Generation, rec.Position, rec.StartedAt, rec.FinishedAt, string(rows), rec.Drifted, string(drift), rec.Error)
	batch.Queue(`DELETE FROM sightline.verifications WHERE projection = $1 AND id <= (
		SELECT id FROM sightline.verifications WHERE projection = $1 ORDER BY id DESC OFFSET $2 LIMIT 1)`, rec.Projection, keep)
	if err := pool.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("record the verify of %s: %w", rec.Projection, err)
	}
	return nil
}

// LastVerify returns the newest recorded verify of projection, or nil when
// it has none.
func LastVerify(ctx context.Context, pool *pgxpool.Pool, projection string) (*VerifyRecord, error) {
	var rec VerifyRecord
	err := pool.QueryRow(ctx, `SELECT id, projection, version, generation, coalesce(position, ''), started_at, finished_at,
			rows, drifted, drift, coalesce(error, '')
		FROM sightline.verifications WHERE projection = $1 ORDER BY id DESC LIMIT 1`, projection).Scan(
		&rec.ID, &rec.Projection, &rec.Version, &rec.Generation, &rec.Position, &rec.StartedAt, &rec.FinishedAt,
		&rec.Rows, &rec.Drifted, &rec.Drift, &rec.Error)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("the last verify of %s: %w", projection, err)
	}
	return &rec, nil
}
