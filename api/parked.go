package api

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/projections"
)

// ParkedEvent is a dead letter as the parked routes show it. Data and
// Metadata are the event's JSON; an event whose bytes are not JSON has
// them in DataBase64 and MetadataBase64 instead.
type ParkedEvent struct {
	ID             int64           `json:"id"`
	Projection     string          `json:"projection"`
	Generation     int             `json:"generation"`
	StreamID       string          `json:"stream_id"`
	Revision       uint64          `json:"revision"`
	EventID        string          `json:"event_id"`
	Type           string          `json:"type"`
	Position       string          `json:"position"`
	CreatedAt      time.Time       `json:"created_at"`
	Data           json.RawMessage `json:"data,omitempty"`
	DataBase64     string          `json:"data_base64,omitempty"`
	Metadata       json.RawMessage `json:"metadata,omitempty"`
	MetadataBase64 string          `json:"metadata_base64,omitempty"`
	State          string          `json:"state"`
	Error          string          `json:"error,omitempty"`
	Attempts       int             `json:"attempts"`
	ParkedAt       time.Time       `json:"parked_at"`
	ResolvedAt     *time.Time      `json:"resolved_at"`
}

// ParkedJSON is the JSON form of a parked event.
func ParkedJSON(p projections.ParkedEvent) ParkedEvent {
	out := ParkedEvent{
		ID: p.ID, Projection: p.Projection, Generation: p.Generation, StreamID: p.Event.StreamID,
		Revision: p.Event.Revision, EventID: p.Event.EventID, Type: p.Event.Type, Position: p.Event.Position.String(),
		CreatedAt: p.Event.CreatedAt, State: p.State, Error: p.Error, Attempts: p.Attempts, ParkedAt: p.ParkedAt,
	}
	out.Data, out.DataBase64 = jsonOrBase64(p.Event.Data)
	out.Metadata, out.MetadataBase64 = jsonOrBase64(p.Event.Metadata)
	if !p.ResolvedAt.IsZero() {
		out.ResolvedAt = &p.ResolvedAt
	}
	return out
}

func jsonOrBase64(b []byte) (json.RawMessage, string) {
	switch {
	case len(b) == 0:
		return nil, ""
	case json.Valid(b):
		return json.RawMessage(b), ""
	}
	return nil, base64.StdEncoding.EncodeToString(b)
}

// ReleaseJSON is the answer to a retry or a skip.
type ReleaseJSON struct {
	Event ParkedEvent `json:"event"`
	// Applied counts the events applied: the retried one and those that
	// were held behind it.
	Applied int  `json:"applied"`
	Skipped bool `json:"skipped"`
	// Parked is the event holding the stream now, if one failed.
	Parked *ParkedEvent `json:"parked"`
}

func releaseJSON(rel projections.Release) ReleaseJSON {
	out := ReleaseJSON{Event: ParkedJSON(rel.Event), Applied: len(rel.Applied), Skipped: rel.Skipped}
	if rel.Parked != nil {
		p := ParkedJSON(*rel.Parked)
		out.Parked = &p
	}
	return out
}

// Page sizes of the parked list.
const (
	ParkedLimitDefault = 100
	ParkedLimitMax     = 1000
)

// listParked lists a projection's parked and held events in id order;
// ?all=true adds those already applied or skipped; ?after=ID pages.
func (s *Server) listParked(c echo.Context) error {
	if _, err := s.namedRunner(c); err != nil {
		return err
	}
	opts := projections.ListOptions{Projection: c.Param("name"), Limit: ParkedLimitDefault}
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > ParkedLimitMax {
			return problem(c, http.StatusBadRequest, "Bad limit", fmt.Sprintf("limit must be a whole number from 1 to %d", ParkedLimitMax))
		}
		opts.Limit = n
	}
	if v := c.QueryParam("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return problem(c, http.StatusBadRequest, "Bad cursor", "after must be the id of a parked event")
		}
		opts.AfterID = n
	}
	if v := c.QueryParam("all"); v != "" {
		all, err := strconv.ParseBool(v)
		if err != nil {
			return problem(c, http.StatusBadRequest, "Bad filter", "all must be true or false")
		}
		opts.All = all
	}
	list, err := projections.ListParked(c.Request().Context(), s.cfg.Pool, opts)
	if err != nil {
		return err
	}
	out := make([]ParkedEvent, 0, len(list))
	for _, p := range list {
		out = append(out, ParkedJSON(p))
	}
	body := ParkedList{Parked: out}
	if len(list) == opts.Limit {
		body.NextAfter = &list[len(list)-1].ID
	}
	return c.JSON(http.StatusOK, body)
}

func (s *Server) getParked(c echo.Context) error {
	if _, err := s.namedRunner(c); err != nil {
		return err
	}
	id, err := parkedID(c)
	if err != nil {
		return err
	}
	p, err := projections.GetParked(c.Request().Context(), s.cfg.Pool, id)
	if err == nil && p.Projection != c.Param("name") {
		err = projections.ErrParkedNotFound
	}
	if err != nil {
		return parkedProblem(c, err)
	}
	return c.JSON(http.StatusOK, ParkedJSON(p))
}

// retryParked applies a parked event and the events held behind it. It
// answers 200 when the event applied (even if a later one failed in its
// turn: see "parked"), and 422 when the event itself failed again.
func (s *Server) retryParked(c echo.Context) error {
	return s.release(c, (*projections.Runner).Retry)
}

// skipParked marks a parked event skipped and applies those held behind it.
func (s *Server) skipParked(c echo.Context) error {
	return s.release(c, (*projections.Runner).Skip)
}

func (s *Server) release(c echo.Context, do func(*projections.Runner, context.Context, int64) (projections.Release, error)) error {
	r, err := s.namedRunner(c)
	if err != nil {
		return err
	}
	id, err := parkedID(c)
	if err != nil {
		return err
	}
	rel, err := do(r, c.Request().Context(), id)
	if err != nil {
		return parkedProblem(c, err)
	}
	out := releaseJSON(rel)
	if rel.Parked != nil && rel.Parked.ID == id {
		body, err := json.Marshal(map[string]any{
			"type": "about:blank", "title": "Retry failed", "status": http.StatusUnprocessableEntity,
			"detail": fmt.Sprintf("parked event %d failed again (attempt %d) and still holds its stream: %s", id, rel.Parked.Attempts, rel.Parked.Error),
			"event":  out.Parked,
		})
		if err != nil {
			return err
		}
		return c.Blob(http.StatusUnprocessableEntity, "application/problem+json", body)
	}
	return c.JSON(http.StatusOK, out)
}

// namedRunner is the runner of the projection the route names, or a 404.
func (s *Server) namedRunner(c echo.Context) (*projections.Runner, error) {
	if r := s.runner(c.Param("name")); r != nil {
		return r, nil
	}
	return nil, &Problem{Status: http.StatusNotFound, Title: "Projection not found", Detail: "no projection named " + c.Param("name")}
}

func parkedID(c echo.Context) (int64, error) {
	id, err := strconv.ParseInt(c.Param("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, &Problem{Status: http.StatusBadRequest, Title: "Bad id", Detail: "the id of a parked event is a positive whole number"}
	}
	return id, nil
}

func parkedProblem(c echo.Context, err error) error {
	switch {
	case errors.Is(err, projections.ErrParkedNotFound):
		return problem(c, http.StatusNotFound, "Parked event not found", err.Error())
	case errors.Is(err, projections.ErrParkedHeld), errors.Is(err, projections.ErrParkedResolved),
		errors.Is(err, projections.ErrParkedInactive), errors.Is(err, projections.ErrVersionChanged):
		return problem(c, http.StatusConflict, "Conflict", err.Error())
	}
	return err
}
