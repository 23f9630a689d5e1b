package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"unicode"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/eventstore"
)

// HeaderExpectedRevision carries an append's optimistic concurrency
// condition: any, no-stream, exists, or the stream's last revision.
const HeaderExpectedRevision = "Expected-Revision"

// AppendEvent is one event of POST /v1/streams/{stream}.
type AppendEvent struct {
	// EventID makes retries idempotent; one is generated when empty.
	EventID  string          `json:"event_id"`
	Type     string          `json:"type"`
	Data     json.RawMessage `json:"data"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// AppendRequest is the body of POST /v1/streams/{stream}: either
// {"events": [...]} or one event object.
type AppendRequest struct {
	Events []AppendEvent `json:"events"`
}

// AppendResponse is a successful append. Position is the token to send as
// Projection-Min-Position to read this write; NextRevision is the revision
// the stream's next event will get (send NextRevision-1 as Expected-Revision).
type AppendResponse struct {
	Position     string `json:"position"`
	NextRevision uint64 `json:"next_revision"`
}

func (s *Server) appendEvents(c echo.Context) error {
	stream := c.Param("stream")
	if err := validStream(stream); err != nil {
		return problem(c, http.StatusBadRequest, "Bad stream name", err.Error())
	}
	expected, err := eventstore.ParseExpectedRevision(c.Request().Header.Get(HeaderExpectedRevision))
	if err != nil {
		return problem(c, http.StatusBadRequest, "Bad "+HeaderExpectedRevision, err.Error())
	}
	events, err := decodeAppend(c.Request().Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return problem(c, http.StatusRequestEntityTooLarge, "Body too large", fmt.Sprintf("an append may be at most %d bytes", tooLarge.Limit))
		}
		return problem(c, http.StatusBadRequest, "Bad body", err.Error())
	}
	data := make([]eventstore.EventData, len(events))
	for i, e := range events {
		if e.EventID == "" {
			e.EventID = uuid.NewString()
		}
		data[i] = eventstore.EventData{EventID: e.EventID, Type: e.Type, Data: e.Data, Metadata: e.Metadata}
	}
	res, err := s.cfg.Store.Append(c.Request().Context(), stream, expected, data...)
	var wrong *eventstore.WrongExpectedRevisionError
	switch {
	case errors.As(err, &wrong):
		return problem(c, http.StatusConflict, "Wrong expected revision", wrong.Error())
	case errors.Is(err, eventstore.ErrWrongExpectedRevision):
		return problem(c, http.StatusConflict, "Wrong expected revision", err.Error())
	case errors.Is(err, eventstore.ErrIdempotency):
		return problem(c, http.StatusConflict, "Event IDs already used", err.Error())
	case errors.Is(err, eventstore.ErrInvalidEvent):
		return problem(c, http.StatusBadRequest, "Bad event", err.Error())
	case errors.Is(err, eventstore.ErrAppendLost):
		return problem(c, http.StatusServiceUnavailable, "Append lost", err.Error()+"; append the same events again")
	case err != nil:
		return err
	}
	return c.JSON(http.StatusCreated, AppendResponse{Position: res.Position.String(), NextRevision: res.NextRevision})
}

// decodeAppend reads {"events": [...]} or a single event, strictly.
func decodeAppend(body io.Reader) ([]AppendEvent, error) {
	raw, err := io.ReadAll(body)
	if err != nil {
		return nil, err
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, errors.New("the body is empty: want {\"events\": [...]} or one event {\"type\", \"data\"}")
	}
	strict := func(v any) error {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			return err
		}
		if dec.More() {
			return errors.New("data after the JSON value")
		}
		return nil
	}
	var events []AppendEvent
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("the body is not a JSON object: %v", err)
	}
	if _, ok := probe["events"]; ok {
		var req AppendRequest
		if err := strict(&req); err != nil {
			return nil, fmt.Errorf("malformed append: %v", err)
		}
		events = req.Events
	} else {
		var one AppendEvent
		if err := strict(&one); err != nil {
			return nil, fmt.Errorf("malformed event: %v", err)
		}
		events = []AppendEvent{one}
	}
	if len(events) == 0 {
		return nil, errors.New("events is empty")
	}
	for i, e := range events {
		switch {
		case e.Type == "":
			return nil, fmt.Errorf("event %d has no type", i)
		case len(e.Data) == 0 || string(e.Data) == "null":
			return nil, fmt.Errorf("event %d has no data", i)
		}
	}
	return events, nil
}

func validStream(s string) error {
	if s == "" || len(s) > 200 {
		return errors.New("a stream name has 1 to 200 characters")
	}
	if s[0] == '$' {
		return fmt.Errorf("stream name %q: names starting with $ are the event store's own", s)
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("stream name %q has a space or control character", s)
		}
	}
	return nil
}
