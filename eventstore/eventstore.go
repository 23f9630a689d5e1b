package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Store is an event source that sightline projects from. The embedded
// PostgreSQL store (pgstore) and the EventStoreDB adapter implement it, and
// both must pass the contract suite in eventstore/storetest.
type Store interface {
	// Append writes events to the end of a stream if the stream's current
	// revision satisfies expected. Appending event IDs that were already
	// appended together returns the first result and writes nothing.
	Append(ctx context.Context, stream string, expected ExpectedRevision, events ...EventData) (AppendResult, error)

	// ReadStream reads up to limit events of one stream, starting at revision
	// from (inclusive), in revision order. A missing stream is ErrStreamNotFound.
	ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]RecordedEvent, error)

	// Subscribe delivers every event matching filter whose position is after
	// from (exclusive), in position order, first catching up and then live.
	Subscribe(ctx context.Context, from Position, filter Filter) (Subscription, error)

	// Head reports the newest position the store has and when it was written.
	Head(ctx context.Context) (Head, error)

	// ParsePosition parses a position token rendered by Position.String.
	ParsePosition(token string) (Position, error)
}

// HeadKeeper is a Store that keeps its head in memory as it moves, so that
// callers on a hot path (every query's staleness headers) need not ask the
// server. KnownHead's ok is false when the store cannot vouch for what it
// keeps (its notifications are down); Head must then be asked. Its Time
// may be later than the event's, never earlier: an age computed from it
// is a lower bound.
type HeadKeeper interface {
	KnownHead() (head Head, ok bool)
}

// Subscription is a stream of messages from Store.Subscribe. Recv blocks
// until a message is ready, the context ends, or the subscription fails.
type Subscription interface {
	Recv(ctx context.Context) (Message, error)
	Close() error
}

// Message is one delivery from a subscription. Events are in position order.
// Checkpoint is the position up to which the store has scanned on behalf of
// this subscription: every matching event at or before it has been delivered,
// so a consumer may record it even when Events is empty (a filter that matches
// nothing still makes progress). CaughtUp says the subscription has reached the
// head of the store as of this message. DeletedLinks counts links passed over
// because the event they point to was deleted (EventStoreDB category streams).
//
// Live says the subscription is live: the source pushes each matching event
// as it is written, so records beyond Checkpoint that it has not delivered
// do not match the filter. A source whose checkpoints always reach the head
// (the embedded store) leaves it false.
type Message struct {
	Events       []RecordedEvent
	Checkpoint   Position
	CaughtUp     bool
	Live         bool
	DeletedLinks int
}

// EventData is an event to append.
type EventData struct {
	// EventID identifies the event for idempotent appends. Required.
	EventID string
	// Type is the event's type name, such as "OrderPlaced". Required.
	Type string
	// Data is the JSON payload. Required.
	Data []byte
	// Metadata is optional JSON metadata. Defaults to {}.
	Metadata []byte
}

// RecordedEvent is an event as stored. Subscribers must treat its Data and
// Metadata as read-only: a store may hand the same bytes to several
// subscriptions.
type RecordedEvent struct {
	StreamID  string
	Revision  uint64
	Position  Position
	EventID   string
	Type      string
	Data      []byte
	Metadata  []byte
	CreatedAt time.Time
}

// AppendResult is what a successful append returns. Position is the position
// of the last event written; a reader that waits for it sees the write.
type AppendResult struct {
	Position     Position
	NextRevision uint64
}

// Head is the newest position of a store and the time its event was written.
// An empty store has the zero position.
type Head struct {
	Position Position
	Time     time.Time
}

// Filter chooses the events a subscription delivers. An empty filter matches
// every event. StreamPrefixes matches a stream whose name starts with any of
// the prefixes; EventTypes matches an event whose type is one of the names,
// EventTypePrefixes one whose type starts with one of the prefixes.
// Category chooses the streams "<category>-…": EventStoreDB reads them from
// its category stream $ce-<category>, with links resolved, instead of
// filtering $all; other stores treat it as the prefix "<category>-".
type Filter struct {
	StreamPrefixes    []string
	EventTypes        []string
	EventTypePrefixes []string
	Category          string
}

// Prefixes returns the stream prefixes f chooses, the category's included.
func (f Filter) Prefixes() []string {
	if f.Category == "" {
		return f.StreamPrefixes
	}
	return append(append([]string{}, f.StreamPrefixes...), f.Category+"-")
}

// Matches reports whether an event of the given stream and type passes f.
func (f Filter) Matches(stream, eventType string) bool {
	if prefixes := f.Prefixes(); len(prefixes) > 0 {
		ok := false
		for _, p := range prefixes {
			if strings.HasPrefix(stream, p) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(f.EventTypes) == 0 && len(f.EventTypePrefixes) == 0 {
		return true
	}
	for _, t := range f.EventTypes {
		if t == eventType {
			return true
		}
	}
	for _, p := range f.EventTypePrefixes {
		if strings.HasPrefix(eventType, p) {
			return true
		}
	}
	return false
}

// ExpectedRevision is the optimistic concurrency condition of an append.
type ExpectedRevision struct {
	kind     expectedKind
	revision uint64
}

type expectedKind uint8

const (
	expectAny expectedKind = iota
	expectNoStream
	expectExists
	expectExact
)

var (
	// Any appends whatever the stream's state.
	Any = ExpectedRevision{kind: expectAny}
	// NoStream appends only if the stream has no events.
	NoStream = ExpectedRevision{kind: expectNoStream}
	// StreamExists appends only if the stream has at least one event.
	StreamExists = ExpectedRevision{kind: expectExists}
)

// Exact appends only if the stream's last revision is r.
func Exact(r uint64) ExpectedRevision { return ExpectedRevision{kind: expectExact, revision: r} }

// IsAny, IsNoStream and IsStreamExists report the kind of condition; Exact
// returns the revision and true for an exact condition.
func (e ExpectedRevision) IsAny() bool          { return e.kind == expectAny }
func (e ExpectedRevision) IsNoStream() bool     { return e.kind == expectNoStream }
func (e ExpectedRevision) IsStreamExists() bool { return e.kind == expectExists }
func (e ExpectedRevision) Exact() (uint64, bool) {
	return e.revision, e.kind == expectExact
}

// String renders the condition as the HTTP API's Expected-Revision header does.
func (e ExpectedRevision) String() string {
	switch e.kind {
	case expectNoStream:
		return "no-stream"
	case expectExists:
		return "exists"
	case expectExact:
		return fmt.Sprint(e.revision)
	default:
		return "any"
	}
}

// ParseExpectedRevision parses "any", "no-stream", "exists" or a revision number.
func ParseExpectedRevision(s string) (ExpectedRevision, error) {
	switch s {
	case "", "any":
		return Any, nil
	case "no-stream":
		return NoStream, nil
	case "exists":
		return StreamExists, nil
	}
	var r uint64
	if _, err := fmt.Sscan(s, &r); err != nil || fmt.Sprint(r) != s {
		return ExpectedRevision{}, fmt.Errorf("expected revision %q: want any, no-stream, exists or a non-negative integer", s)
	}
	return Exact(r), nil
}

var (
	// ErrStreamNotFound is returned when reading a stream that has no events.
	ErrStreamNotFound = errors.New("stream not found")
	// ErrWrongExpectedRevision is wrapped by *WrongExpectedRevisionError.
	ErrWrongExpectedRevision = errors.New("wrong expected revision")
	// ErrIdempotency is returned when some of an append's event IDs were
	// written before, but not as that same append.
	ErrIdempotency = errors.New("event IDs were already appended differently")
	// ErrInvalidEvent is returned for an event without ID, type or valid JSON.
	ErrInvalidEvent = errors.New("invalid event")
	// ErrInvalidPosition is returned for a position token that does not parse.
	ErrInvalidPosition = errors.New("invalid position")
	// ErrClosed is returned by calls on a closed store or subscription.
	ErrClosed = errors.New("closed")
	// ErrAppendLost is returned by an append whose events the database lost
	// in a crash before the append was acknowledged. Nothing of it was
	// delivered; appending the same events again (same IDs) is safe.
	ErrAppendLost = errors.New("append lost in a database crash before it was acknowledged")
)

// WrongExpectedRevisionError says an append's condition did not hold.
// Actual is the stream's last revision, or -1 when it has no events.
type WrongExpectedRevisionError struct {
	Stream   string
	Expected ExpectedRevision
	Actual   int64
}

func (e *WrongExpectedRevisionError) Error() string {
	actual := "no stream"
	if e.Actual >= 0 {
		actual = fmt.Sprint(e.Actual)
	}
	return fmt.Sprintf("append to %q: expected revision %s, stream is at %s", e.Stream, e.Expected, actual)
}

func (e *WrongExpectedRevisionError) Unwrap() error { return ErrWrongExpectedRevision }

// ValidateAppend checks an append as every store must before writing: a
// stream name, at least one event, each with a UUID event ID used once in
// the append, a type, and JSON data and (optional) metadata. It returns the
// parsed event IDs.
func ValidateAppend(stream string, events []EventData) ([]uuid.UUID, error) {
	if stream == "" {
		return nil, fmt.Errorf("%w: stream name is empty", ErrInvalidEvent)
	}
	if len(events) == 0 {
		return nil, fmt.Errorf("%w: nothing to append", ErrInvalidEvent)
	}
	ids := make([]uuid.UUID, len(events))
	seen := make(map[uuid.UUID]bool, len(events))
	for i, e := range events {
		if err := e.Validate(); err != nil {
			return nil, err
		}
		id, err := uuid.Parse(e.EventID)
		if err != nil {
			return nil, fmt.Errorf("%w: event ID %q is not a UUID", ErrInvalidEvent, e.EventID)
		}
		if seen[id] {
			return nil, fmt.Errorf("%w: event ID %s appears twice in one append", ErrInvalidEvent, id)
		}
		seen[id] = true
		if !json.Valid(e.Data) {
			return nil, fmt.Errorf("%w: event %s: data is not valid JSON", ErrInvalidEvent, id)
		}
		if len(e.Metadata) > 0 && !json.Valid(e.Metadata) {
			return nil, fmt.Errorf("%w: event %s: metadata is not valid JSON", ErrInvalidEvent, id)
		}
		ids[i] = id
	}
	return ids, nil
}

// Validate checks the fields an append needs.
func (e EventData) Validate() error {
	switch {
	case e.EventID == "":
		return fmt.Errorf("%w: event ID is empty", ErrInvalidEvent)
	case e.Type == "":
		return fmt.Errorf("%w: event %s has no type", ErrInvalidEvent, e.EventID)
	case len(e.Data) == 0:
		return fmt.Errorf("%w: event %s has no data", ErrInvalidEvent, e.EventID)
	}
	return nil
}
