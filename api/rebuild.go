package api

import (
	"errors"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/projections"
)

// RebuildStatus is the JSON form of a rebuild's progress.
type RebuildStatus struct {
	Generation int    `json:"generation"`
	Version    int    `json:"version"`
	Reason     string `json:"reason"`
	// Building is false while the build waits for a process to take it up;
	// Here says this process builds it.
	Building  bool      `json:"building"`
	Here      bool      `json:"here"`
	StartedAt time.Time `json:"started_at"`
	Position  string    `json:"position"`
	Target    string    `json:"target"`
	// Progress is by position, 0 to 1; Rate is in positions per second
	// (events per second on the embedded store).
	Progress   float64  `json:"progress"`
	Percent    float64  `json:"percent"`
	Rate       float64  `json:"positions_per_second"`
	ETASeconds *float64 `json:"eta_seconds"`
	// LastError says why the take-over failed last, when this process
	// builds it or gave up on it.
	LastError string `json:"last_error,omitempty"`
}

func rebuildJSON(st *projections.RebuildStatus) *RebuildStatus {
	if st == nil {
		return nil
	}
	out := &RebuildStatus{
		Generation: st.Generation, Version: st.Version, Reason: st.Reason, Building: st.Building, Here: st.Here, StartedAt: st.StartedAt, LastError: st.LastError,
		Position: st.Position.String(), Target: st.Head.String(), Progress: st.Progress, Percent: float64(int(st.Progress*1000)) / 10, Rate: st.Rate,
	}
	if st.ETA > 0 {
		eta := st.ETA.Seconds()
		out.ETASeconds = &eta
	}
	return out
}

// Rebuild is the answer to a rebuild request.
type Rebuild struct {
	Projection string `json:"projection"`
	Generation int    `json:"generation"`
	Version    int    `json:"version"`
	Reason     string `json:"reason"`
	// Created says this request started it; otherwise it was requested
	// before and is taken up now. Resumed says it goes on from where a
	// stopped process left it.
	Created bool `json:"created"`
	Resumed bool `json:"resumed"`
	// Status is where its progress shows.
	Status string `json:"status"`
}

// rebuildProjection starts a blue/green rebuild: 202, with where to follow
// it; 409 when one is running.
func (s *Server) rebuildProjection(c echo.Context) error {
	r, err := s.namedRunner(c)
	if err != nil {
		return err
	}
	rb, err := r.Rebuild(c.Request().Context())
	switch {
	case errors.Is(err, projections.ErrRebuildRunning):
		return problem(c, http.StatusConflict, "Rebuild already running", err.Error())
	case errors.Is(err, projections.ErrVersionChanged):
		return problem(c, http.StatusConflict, "Newer version active", err.Error())
	case errors.Is(err, projections.ErrNotRunning):
		return problem(c, http.StatusServiceUnavailable, "Projector not running", err.Error()+"; see its last_error in /v1/projections/"+r.Name())
	case err != nil:
		return err
	}
	status := "/v1/projections/" + rb.Projection
	c.Response().Header().Set(echo.HeaderLocation, status)
	return c.JSON(http.StatusAccepted, Rebuild{Projection: rb.Projection, Generation: rb.Generation, Version: rb.Version,
		Reason: rb.Reason, Created: rb.Created, Resumed: rb.Resumed, Status: status})
}
