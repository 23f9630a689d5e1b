package esdbtest

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Server is a running test double. Its data lives as long as the Server,
// across Stop and Restart. All methods are safe for concurrent use.
type Server struct {
	t     testing.TB
	addr  string // 127.0.0.1:PORT, fixed for the Server's life
	store *store

	mu   sync.Mutex // guards grpc and done
	grpc *grpc.Server
	done chan struct{} // closed when the current Serve call returns
}

// Start serves the double on 127.0.0.1 on a free port until t ends
// (t.Cleanup stops it).
func Start(t testing.TB) *Server {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("esdbtest: listen: %v", err)
	}
	s := &Server{t: t, addr: lis.Addr().String(), store: newStore()}
	s.serve(lis)
	t.Cleanup(s.Stop)
	return s
}

// URL returns the connection string for esdb.ParseURL (or the client's
// ParseConnectionString): "esdb://127.0.0.1:PORT?tls=false".
func (s *Server) URL() string {
	return fmt.Sprintf("esdb://%s?tls=false", s.addr)
}

// serve starts a new gRPC server on lis. The caller must not hold s.mu.
func (s *Server) serve(lis net.Listener) {
	srv := grpc.NewServer(
		// The client pings every 10 s even without calls; the default policy
		// (5 min) would answer with GOAWAY "too_many_pings".
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             time.Second,
			PermitWithoutStream: true,
		}),
		// Stop returns only once every handler has returned: no goroutine
		// of ours outlives Stop.
		grpc.WaitForHandlers(true),
	)
	streams.RegisterStreamsServer(srv, &streamsService{store: s.store})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis) // returns when Stop is called
	}()
	s.mu.Lock()
	s.grpc, s.done = srv, done
	s.mu.Unlock()
}

// Stop stops the whole gRPC server: listener and connections are closed and
// every call in progress ends (subscriptions see SubscriptionDropped). The
// data is kept for Restart. Stopping a stopped Server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	srv, done := s.grpc, s.done
	s.grpc, s.done = nil, nil
	s.mu.Unlock()
	if srv == nil {
		return
	}
	srv.Stop()
	<-done
}

// Restart serves again on the same port with the same data, stopping the
// current server first if it is running. Clients whose first discovery
// failed while the server was down are closed for good: use a new client.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	lis, err := net.Listen("tcp", s.addr)
	if err != nil {
		s.t.Fatalf("esdbtest: listen again on %s: %v", s.addr, err)
	}
	s.serve(lis)
}

// DropSubscriptions ends every open subscription call with a gRPC error
// (status Unavailable), as a server dropping them does. Events appended
// after it returns are not delivered to those subscriptions; subscriptions
// made later work normally.
func (s *Server) DropSubscriptions() {
	s.store.mu.Lock()
	s.store.dropGen++
	s.store.cond.Broadcast()
	s.store.mu.Unlock()
}

// DeleteEvent removes the data of the event at revision of stream, as a
// scavenge after truncation would: reads of the stream and of $all no longer
// return it, and $ce- links to it resolve to no event (ResolvedEvent.Event
// is nil). It fails the test if there is no such event.
func (s *Server) DeleteEvent(stream string, revision uint64) {
	s.t.Helper()
	if !s.store.deleteEvent(stream, revision) {
		s.t.Fatalf("esdbtest: DeleteEvent: no event %d@%s", revision, stream)
	}
}

// AppendSystemEvent appends an event of the system type "$metadata" to the
// stream "$$sys", for testing that system events (types starting with "$")
// are excluded.
func (s *Server) AppendSystemEvent() {
	s.store.append("$$sys", expectation{kind: expectAny}, []proposed{{
		id:          uuid.New(),
		eventType:   "$metadata",
		contentType: "application/json",
		data:        []byte(`{"$maxCount":100}`),
		metadata:    []byte{},
	}})
}
