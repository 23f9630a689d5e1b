package esdbtest

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// positionStep is the distance between consecutive prepare positions. It only
// makes positions look less like revisions; nothing depends on its value.
const positionStep = 64

// linkEventType is the event type of the link events in $ce- streams.
const linkEventType = "$>"

// record is one stored event. Records are immutable once appended, except for
// deleted and data, which DeleteEvent changes under store.mu.
type record struct {
	stream      string
	revision    uint64
	id          uuid.UUID
	eventType   string
	contentType string
	data        []byte
	metadata    []byte // custom (user) metadata
	created     time.Time
	commit      uint64
	prepare     uint64
	deleted     bool
	target      *record // for a link event: the event it points to
}

// after reports whether r sorts strictly after the $all position (commit, prepare).
func (r *record) after(commit, prepare uint64) bool {
	return r.commit > commit || (r.commit == commit && r.prepare > prepare)
}

// proposed is one event of an append request.
type proposed struct {
	id          uuid.UUID
	eventType   string
	contentType string
	data        []byte
	metadata    []byte
}

// expectation is the expected-revision rule of an append.
type expectation struct {
	kind     expectKind
	revision uint64 // for expectRevision
}

type expectKind int

const (
	expectAny expectKind = iota
	expectNoStream
	expectStreamExists
	expectRevision
)

// appendResult is the outcome of store.append.
type appendResult struct {
	ok       bool
	exists   bool    // whether the stream has events (the current revision is meaningful)
	current  uint64  // current revision of the stream
	position *record // the last written (or matched) event, nil when none
}

// store is the in-memory log shared by every gRPC server incarnation of one
// Server. All fields are guarded by mu; cond is broadcast on every append,
// on DropSubscriptions and when a subscription's context ends.
type store struct {
	mu      sync.Mutex
	cond    *sync.Cond
	all     []*record            // $all, in (commit, prepare) order
	streams map[string][]*record // per stream (including derived $ce- streams)
	next    uint64               // next free position
	dropGen uint64               // incremented by DropSubscriptions
}

func newStore() *store {
	s := &store{streams: map[string][]*record{}, next: positionStep}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// category returns the by-category projection's category of a stream: the
// name before the first '-'. System streams and names without '-' have none.
func category(stream string) (string, bool) {
	if strings.HasPrefix(stream, "$") {
		return "", false
	}
	cat, _, found := strings.Cut(stream, "-")
	return cat, found && cat != ""
}

// append applies the expected-revision rule and appends events to stream.
func (s *store) append(stream string, exp expectation, events []proposed) appendResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs := s.streams[stream]
	res := appendResult{exists: len(recs) > 0}
	if res.exists {
		res.current = uint64(len(recs) - 1)
	}
	if r, decided := s.idempotent(recs, exp, events); decided {
		return r
	}
	switch exp.kind {
	case expectNoStream:
		res.ok = !res.exists
	case expectStreamExists:
		res.ok = res.exists
	case expectRevision:
		res.ok = res.exists && res.current == exp.revision
	default:
		res.ok = true
	}
	if !res.ok || len(events) == 0 {
		if res.exists {
			res.position = recs[len(recs)-1]
		}
		return res
	}
	now := time.Now()
	commit := s.next
	for i, e := range events {
		r := &record{
			stream:      stream,
			revision:    uint64(len(recs)),
			id:          e.id,
			eventType:   e.eventType,
			contentType: e.contentType,
			data:        e.data,
			metadata:    e.metadata,
			created:     now,
			commit:      commit,
			prepare:     commit + uint64(i)*positionStep,
		}
		recs = append(recs, r)
		s.all = append(s.all, r)
		s.link(r)
		res.position = r
	}
	s.next = res.position.prepare + positionStep
	s.streams[stream] = recs
	res.exists, res.current = true, uint64(len(recs)-1)
	s.cond.Broadcast()
	return res
}

// idempotent applies the server's idempotency check (its CheckCommit):
//   - with an exact revision or no_stream that is already behind, the
//     proposed ids are compared with the events after the expected revision;
//   - with any or stream_exists, with the events from the one that has the
//     first proposed id, if there is one.
//
// If every id matches, the append succeeds without writing and answers with
// the revision and position of the last of them. If only some match (the
// server's "corrupted idempotency"), it fails with wrong expected version.
// decided is false when the append must be checked and written normally.
func (s *store) idempotent(recs []*record, exp expectation, events []proposed) (res appendResult, decided bool) {
	if len(events) == 0 || len(recs) == 0 {
		return appendResult{}, false
	}
	var start int
	switch exp.kind {
	case expectRevision:
		if exp.revision >= uint64(len(recs)-1) {
			return appendResult{}, false // not behind: normal rules apply
		}
		start = int(exp.revision) + 1
	case expectNoStream:
		start = 0
	default:
		start = -1
		for i, r := range recs {
			if r.id == events[0].id {
				start = i
				break
			}
		}
		if start < 0 {
			return appendResult{}, false
		}
	}
	matched := 0
	for i, e := range events {
		if start+i < len(recs) && recs[start+i].id == e.id {
			matched++
		}
	}
	current := recs[len(recs)-1]
	switch {
	case matched == len(events):
		last := recs[start+len(events)-1]
		return appendResult{ok: true, exists: true, current: last.revision, position: last}, true
	case matched > 0:
		return appendResult{exists: true, current: current.revision, position: current}, true
	}
	return appendResult{}, false // a plain conflict: the normal rules say so
}

// link appends a link to r to its category stream, as the $by_category
// projection would (but synchronously, and without writing to $all).
func (s *store) link(r *record) {
	cat, ok := category(r.stream)
	if !ok {
		return
	}
	name := "$ce-" + cat
	links := s.streams[name]
	s.streams[name] = append(links, &record{
		stream:      name,
		revision:    uint64(len(links)),
		id:          uuid.New(),
		eventType:   linkEventType,
		contentType: "application/octet-stream",
		data:        []byte(fmt.Sprintf("%d@%s", r.revision, r.stream)),
		created:     r.created,
		commit:      r.commit,
		prepare:     r.prepare,
		target:      r,
	})
}

// deleteEvent marks an event deleted and drops its data.
func (s *store) deleteEvent(stream string, revision uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	recs := s.streams[stream]
	if revision >= uint64(len(recs)) || strings.HasPrefix(stream, "$ce-") {
		return false
	}
	recs[revision].deleted = true
	recs[revision].data = nil
	return true
}

// allIndexAfter returns the index in s.all of the first record strictly after
// (commit, prepare). The caller holds mu.
func (s *store) allIndexAfter(commit, prepare uint64) int {
	return sort.Search(len(s.all), func(i int) bool { return s.all[i].after(commit, prepare) })
}

// allIndexFrom returns the index in s.all of the first record at or after
// (commit, prepare). The caller holds mu.
func (s *store) allIndexFrom(commit, prepare uint64) int {
	return sort.Search(len(s.all), func(i int) bool {
		r := s.all[i]
		return r.commit > commit || (r.commit == commit && r.prepare >= prepare)
	})
}
