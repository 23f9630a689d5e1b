package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/internal/redact"
	"github.com/sightlinehq/sightline/projections"
)

// VerifyResult is GET /v1/projections/{name}/verify: the last verify of a
// projection, as `sightline verify` ran it. Position is null and Error set
// when it failed part way; then Rows, Drifted and Drift hold nothing.
type VerifyResult struct {
	Projection string `json:"projection"`
	// Version and Generation are the active generation's, the one compared;
	// Position the token both sides were compared at.
	Version    int       `json:"version"`
	Generation int       `json:"generation"`
	Position   *string   `json:"position"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	DurationMs int64     `json:"duration_ms"`
	// Rows counts each table's rows in the read model; Drifted the rows
	// that differ from a clean replay; Drift lists the first of them.
	Rows    map[string]int64 `json:"rows"`
	Drifted int64            `json:"drifted"`
	Drift   []DriftRow       `json:"drift"`
	Error   *string          `json:"error"`
}

// DriftRow is a row where the read model and a clean replay disagree: kind
// is missing (from the read model), extra (in it only) or differs.
type DriftRow struct {
	Table string `json:"table"`
	Kind  string `json:"kind"`
	// Key is the row's primary key, column by column; Live and Replay the
	// row in the read model and in the replay, null on the side that
	// lacks it; Columns, of a row that differs, those whose values do.
	Key     map[string]any  `json:"key"`
	Live    *map[string]any `json:"live"`
	Replay  *map[string]any `json:"replay"`
	Columns []string        `json:"columns,omitempty"`
}

func verifyJSON(v *projections.VerifyRecord) VerifyResult {
	out := VerifyResult{Projection: v.Projection, Version: v.Version, Generation: v.Generation,
		StartedAt: v.StartedAt, FinishedAt: v.FinishedAt, DurationMs: v.FinishedAt.Sub(v.StartedAt).Milliseconds(),
		Rows: v.Rows, Drifted: v.Drifted, Drift: make([]DriftRow, 0, len(v.Drift))}
	if v.Position != "" {
		out.Position = &v.Position
	}
	if v.Error != "" {
		e := redact.URLsIn(v.Error)
		out.Error = &e
	}
	if out.Rows == nil {
		out.Rows = map[string]int64{}
	}
	for _, d := range v.Drift {
		out.Drift = append(out.Drift, DriftRow{Table: d.Table, Kind: d.Kind, Key: d.Key, Live: orNull(d.Live), Replay: orNull(d.Replay), Columns: d.Columns})
	}
	return out
}

// orNull is row, or nil when it has none: its schema says it may be null.
func orNull(row map[string]any) *map[string]any {
	if row == nil {
		return nil
	}
	return &row
}

// lastVerify answers the projection's last verify; 404 before the first.
func (s *Server) lastVerify(c echo.Context) error {
	r, err := s.namedRunner(c)
	if err != nil {
		return err
	}
	v, err := projections.LastVerify(c.Request().Context(), s.cfg.Pool, r.Name())
	if err != nil {
		return err
	}
	if v == nil {
		return problem(c, http.StatusNotFound, "No verify yet",
			fmt.Sprintf("no verify of %s has been recorded: run `sightline verify %s`", r.Name(), r.Name()))
	}
	return c.JSON(http.StatusOK, verifyJSON(v))
}
