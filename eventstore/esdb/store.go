package esdb

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"strings"
	"sync"
	"sync/atomic"

	client "github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/sightlinehq/sightline/eventstore"
)

// Defaults for Config.
const (
	ReadBatchDefault          = 1000
	CheckpointIntervalDefault = 1
	MaxSearchWindowDefault    = 512
)

// Config configures a Store.
type Config struct {
	// URL is the connection string, such as esdb://127.0.0.1:2113?tls=false
	// or kurrentdb://admin:changeit@127.0.0.1:2113: any that ParseURL
	// accepts.
	URL string
	// ReadBatch caps the events in one subscription message. Defaults to
	// ReadBatchDefault.
	ReadBatch int
	// MaxSearchWindow is how many events the server scans for a filtered
	// $all subscription before answering. Defaults to MaxSearchWindowDefault.
	MaxSearchWindow int
	// CheckpointInterval multiplies MaxSearchWindow: the server sends a
	// checkpoint every MaxSearchWindow × CheckpointInterval scanned events,
	// which is what lets a filter that matches nothing advance. Defaults to
	// CheckpointIntervalDefault.
	CheckpointInterval int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// WithDefaults returns c with its zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.ReadBatch = cmp.Or(c.ReadBatch, ReadBatchDefault)
	c.MaxSearchWindow = cmp.Or(c.MaxSearchWindow, MaxSearchWindowDefault)
	c.CheckpointInterval = cmp.Or(c.CheckpointInterval, CheckpointIntervalDefault)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Store reads and appends events on EventStoreDB or KurrentDB.
type Store struct {
	cfg       Config
	settings  *client.Configuration
	connected atomic.Bool

	mu       sync.Mutex
	client   *client.Client
	closed   bool
	inflight int // calls running inside the client (see call)
}

var _ eventstore.Store = (*Store)(nil)

// New returns a Store for cfg.URL. It connects lazily, on first use. Its
// errors do not show the URL's password (see ParseURL).
func New(cfg Config) (*Store, error) {
	cfg = cfg.WithDefaults()
	settings, err := ParseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	// By default the client gives up for good after 10 failed discoveries
	// (about a second) and then fails every call. A projector should wait
	// for its server instead, so unless the connection string says
	// otherwise, it never gives up; the calls meanwhile return when their
	// contexts end (see call).
	if !strings.Contains(strings.ToLower(cfg.URL), "maxdiscoverattempts") {
		settings.MaxDiscoverAttempts = math.MaxInt32
	}
	settings.Logger = clientLogger(cfg.Logger)
	s := &Store{cfg: cfg, settings: settings}
	if s.client, err = client.NewClient(settings); err != nil {
		return nil, fmt.Errorf("esdb: %w", err)
	}
	return s, nil
}

// clientLogger sends the client's own log lines to l, at their levels.
func clientLogger(l *slog.Logger) client.LoggingFunc {
	return func(level client.LogLevel, format string, args ...any) {
		lv := slog.LevelInfo
		switch level {
		case client.LogDebug:
			lv = slog.LevelDebug
		case client.LogWarn:
			lv = slog.LevelWarn
		case client.LogError:
			lv = slog.LevelError
		}
		l.Log(context.Background(), lv, "esdb client: "+fmt.Sprintf(format, args...))
	}
}

// Close closes the store: new calls fail with ErrClosed, and the client is
// closed once no call is running inside it. (Closing the client under a
// call races with it, and panics it when it is waiting for a connection.)
// Safe to call twice.
func (s *Store) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		if s.inflight == 0 {
			_ = s.client.Close()
		}
	}
}

// enter counts a call into the client, unless the store is closed.
func (s *Store) enter() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return eventstore.ErrClosed
	}
	s.inflight++
	return nil
}

// leave ends a call; the last one out of a closed store closes the client.
func (s *Store) leave() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight--; s.inflight == 0 && s.closed {
		_ = s.client.Close()
	}
}

// Connected reports whether the last subscription or call reached the server.
func (s *Store) Connected() bool { return s.connected.Load() }

// conn returns the current client.
func (s *Store) conn() (*client.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, eventstore.ErrClosed
	}
	return s.client, nil
}

// failed notes the outcome of a call on c. An error that says nothing of
// the connection (a conflict, a missing stream, the caller giving up)
// leaves the connected flag alone. When the client has given up for good
// (possible only with a maxDiscoverAttempts in the connection string), it
// is replaced by a new one. The old one is dropped, not closed: calls may
// be blocked inside it, and the client panics when closed under them.
func (s *Store) failed(c *client.Client, err error) error {
	if err == nil {
		s.connected.Store(true)
		return nil
	}
	switch code(err) {
	case client.ErrorCodeWrongExpectedVersion, client.ErrorCodeResourceNotFound, client.ErrorCodeStreamDeleted:
		s.connected.Store(true) // the server answered
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	s.connected.Store(false)
	if code(err) == client.ErrorCodeConnectionClosed {
		s.mu.Lock()
		if !s.closed && s.client == c {
			if fresh, nerr := client.NewClient(s.settings); nerr == nil {
				s.client = fresh
				s.cfg.Logger.Warn("esdb client gave up connecting; created a new one")
			}
		}
		s.mu.Unlock()
	}
	return err
}

// call runs f, a call into s's client, but returns when ctx ends even if f
// does not: the client waits for its connection without looking at the
// context. What f returns after that is handed to discard. The store
// counts f as running until it returns, so that Close never closes the
// client under it.
//
// A client that has given up connecting leaves calls blocked on a channel
// send that nothing receives, and closing it makes them panic; call turns
// such a panic into an error rather than let it end the process.
func call[T any](ctx context.Context, s *Store, f func() (T, error), discard func(T)) (T, error) {
	type result struct {
		v   T
		err error
	}
	if err := s.enter(); err != nil {
		var zero T
		return zero, err
	}
	done := make(chan result, 1)
	go func() {
		defer s.leave()
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("esdb client failed: %v", p)}
			}
		}()
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		go func() {
			if r := <-done; r.err == nil && discard != nil {
				discard(r.v)
			}
		}()
		var zero T
		return zero, ctx.Err()
	}
}

func code(err error) client.ErrorCode {
	if e, ok := client.FromError(err); !ok {
		return e.Code()
	}
	return client.ErrorCodeUnknown
}

// ParsePosition parses "C/P" or "N" (commit and prepare equal).
func (s *Store) ParsePosition(token string) (eventstore.Position, error) {
	return eventstore.ParsePosition(token)
}

// Append appends events to stream with the expected revision.
func (s *Store) Append(ctx context.Context, stream string, expected eventstore.ExpectedRevision, events ...eventstore.EventData) (eventstore.AppendResult, error) {
	ids, err := eventstore.ValidateAppend(stream, events)
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	data := make([]client.EventData, len(events))
	for i, e := range events {
		data[i] = client.EventData{EventID: ids[i], EventType: e.Type, ContentType: client.ContentTypeJson, Data: e.Data, Metadata: e.Metadata}
	}
	opts := client.AppendToStreamOptions{ExpectedRevision: client.Any{}}
	switch {
	case expected.IsNoStream():
		opts.ExpectedRevision = client.NoStream{}
	case expected.IsStreamExists():
		opts.ExpectedRevision = client.StreamExists{}
	default:
		if rev, ok := expected.Exact(); ok {
			opts.ExpectedRevision = client.Revision(rev)
		}
	}
	c, err := s.conn()
	if err != nil {
		return eventstore.AppendResult{}, err
	}
	res, err := call(ctx, s, func() (*client.WriteResult, error) { return c.AppendToStream(ctx, stream, opts, data...) }, nil)
	if err = s.failed(c, err); err != nil {
		if code(err) == client.ErrorCodeWrongExpectedVersion {
			return eventstore.AppendResult{}, &eventstore.WrongExpectedRevisionError{Stream: stream, Expected: expected, Actual: s.lastRevision(ctx, stream)}
		}
		return eventstore.AppendResult{}, fmt.Errorf("append to %q: %w", stream, err)
	}
	return eventstore.AppendResult{
		Position:     position(client.Position{Commit: res.CommitPosition, Prepare: res.PreparePosition}),
		NextRevision: res.NextExpectedVersion + 1,
	}, nil
}

// lastRevision reads a stream's last revision, or -1; for error messages.
func (s *Store) lastRevision(ctx context.Context, stream string) int64 {
	c, err := s.conn()
	if err != nil {
		return -1
	}
	events, err := call(ctx, s, func() ([]*client.ResolvedEvent, error) {
		return readAllOf(c.ReadStream(ctx, stream, client.ReadStreamOptions{Direction: client.Backwards, From: client.End{}}, 1))
	}, nil)
	if err != nil || len(events) == 0 || events[0].OriginalEvent() == nil {
		return -1
	}
	return int64(events[0].OriginalEvent().EventNumber)
}

// readAllOf drains a read. The client's Recv, like its calls, can block
// without looking at the context while it reconnects, so reads run whole
// inside call.
func readAllOf(rs *client.ReadStream, err error) ([]*client.ResolvedEvent, error) {
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	var out []*client.ResolvedEvent
	for {
		e, err := rs.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, e)
	}
}

// ReadStream reads up to limit events of stream from revision from.
func (s *Store) ReadStream(ctx context.Context, stream string, from uint64, limit int) ([]eventstore.RecordedEvent, error) {
	if limit <= 0 {
		return nil, nil
	}
	c, err := s.conn()
	if err != nil {
		return nil, err
	}
	read, err := call(ctx, s, func() ([]*client.ResolvedEvent, error) {
		return readAllOf(c.ReadStream(ctx, stream, client.ReadStreamOptions{Direction: client.Forwards, From: client.Revision(from)}, uint64(limit)))
	}, nil)
	if code(err) == client.ErrorCodeResourceNotFound {
		s.connected.Store(true)
		return nil, fmt.Errorf("read stream %q: %w", stream, eventstore.ErrStreamNotFound)
	}
	if err = s.failed(c, err); err != nil {
		return nil, fmt.Errorf("read stream %q: %w", stream, err)
	}
	var out []eventstore.RecordedEvent
	for _, e := range read {
		if e.Event != nil {
			out = append(out, recorded(e.Event))
		}
	}
	return out, nil
}

// Head reads the newest event of $all: its position and time.
func (s *Store) Head(ctx context.Context) (eventstore.Head, error) {
	c, err := s.conn()
	if err != nil {
		return eventstore.Head{}, err
	}
	read, err := call(ctx, s, func() ([]*client.ResolvedEvent, error) {
		return readAllOf(c.ReadAll(ctx, client.ReadAllOptions{Direction: client.Backwards, From: client.End{}}, 1))
	}, nil)
	if err = s.failed(c, err); err != nil {
		return eventstore.Head{}, fmt.Errorf("read head: %w", err)
	}
	if len(read) == 0 {
		return eventstore.Head{}, nil // an empty store
	}
	ev := read[0].OriginalEvent()
	return eventstore.Head{Position: position(ev.Position), Time: ev.CreatedDate}, nil
}

// position converts a server position. Filtered-$all checkpoints of some
// server versions carry prepare 0; the commit position is what counts then.
func position(p client.Position) eventstore.Position {
	if p.Prepare == 0 {
		p.Prepare = p.Commit
	}
	return eventstore.Position{Commit: p.Commit, Prepare: p.Prepare}
}

func recorded(e *client.RecordedEvent) eventstore.RecordedEvent {
	return eventstore.RecordedEvent{
		StreamID: e.StreamID, Revision: e.EventNumber, Position: position(e.Position),
		EventID: e.EventID.String(), Type: e.EventType, Data: e.Data, Metadata: e.UserMetadata, CreatedAt: e.CreatedDate,
	}
}
