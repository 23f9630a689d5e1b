package esdbtest

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"regexp"
	"strconv"
	"strings"

	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxBatch bounds how many replies a subscription prepares per lock hold.
const maxBatch = 256

// defaultWindow is the search window when the client asks for "count"
// (esdb.NoMaxSearchWindow) instead of a maximum.
const defaultWindow = 32

// streamsService implements the Streams gRPC service over a store.
type streamsService struct {
	streams.UnimplementedStreamsServer
	store *store
}

// Append handles the client-streaming append: an options message, then one
// proposed message per event.
func (svc *streamsService) Append(srv streams.Streams_AppendServer) error {
	first, err := srv.Recv()
	if err != nil {
		return err
	}
	opts := first.GetOptions()
	if opts == nil {
		return status.Error(codes.InvalidArgument, "esdbtest: first append message must be options")
	}
	stream := string(opts.GetStreamIdentifier().GetStreamName())
	if stream == "" || strings.HasPrefix(stream, "$ce-") {
		return status.Errorf(codes.InvalidArgument, "esdbtest: cannot append to stream %q", stream)
	}
	var exp expectation
	switch e := opts.GetExpectedStreamRevision().(type) {
	case *streams.AppendReq_Options_Revision:
		exp = expectation{kind: expectRevision, revision: e.Revision}
	case *streams.AppendReq_Options_NoStream:
		exp.kind = expectNoStream
	case *streams.AppendReq_Options_StreamExists:
		exp.kind = expectStreamExists
	}
	var events []proposed
	for {
		msg, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		p := msg.GetProposedMessage()
		if p == nil {
			return status.Error(codes.InvalidArgument, "esdbtest: expected a proposed message")
		}
		id, err := fromProtoUUID(p.GetId())
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "esdbtest: bad event id: %v", err)
		}
		md := p.GetMetadata()
		if md["type"] == "" {
			return status.Error(codes.InvalidArgument, "esdbtest: event without type")
		}
		ct := md["content-type"]
		if ct == "" {
			ct = "application/json"
		}
		events = append(events, proposed{id: id, eventType: md["type"], contentType: ct,
			data: p.GetData(), metadata: p.GetCustomMetadata()})
	}
	return srv.SendAndClose(appendResponse(svc.store.append(stream, exp, events), exp))
}

// appendResponse encodes an append result as the client decodes it
// (client.go, AppendToStream).
func appendResponse(res appendResult, exp expectation) *streams.AppendResp {
	if !res.ok {
		w := &streams.AppendResp_WrongExpectedVersion{}
		if res.exists {
			w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentRevision{CurrentRevision: res.current}
		} else {
			w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &shared.Empty{}}
		}
		switch exp.kind {
		case expectAny:
			w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedAny{ExpectedAny: &shared.Empty{}}
		case expectNoStream:
			w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &shared.Empty{}}
		case expectStreamExists:
			w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &shared.Empty{}}
		default:
			w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision{ExpectedRevision: exp.revision}
		}
		return &streams.AppendResp{Result: &streams.AppendResp_WrongExpectedVersion_{WrongExpectedVersion: w}}
	}
	ok := &streams.AppendResp_Success{}
	if res.exists {
		ok.CurrentRevisionOption = &streams.AppendResp_Success_CurrentRevision{CurrentRevision: res.current}
	} else {
		ok.CurrentRevisionOption = &streams.AppendResp_Success_NoStream{NoStream: &shared.Empty{}}
	}
	if res.position != nil {
		ok.PositionOption = &streams.AppendResp_Success_Position{Position: &streams.AppendResp_Position{
			CommitPosition: res.position.commit, PreparePosition: res.position.prepare}}
	} else {
		ok.PositionOption = &streams.AppendResp_Success_NoPosition{NoPosition: &shared.Empty{}}
	}
	return &streams.AppendResp{Result: &streams.AppendResp_Success_{Success: ok}}
}

// Read serves reads and catch-up subscriptions of a stream or of $all.
func (svc *streamsService) Read(req *streams.ReadReq, srv streams.Streams_ReadServer) error {
	o := req.GetOptions()
	if o == nil {
		return status.Error(codes.InvalidArgument, "esdbtest: read without options")
	}
	f, err := newFilter(o.GetFilter())
	if err != nil {
		return err
	}
	enc := encoder{stringIDs: o.GetUuidOption().GetString_() != nil, resolve: o.GetResolveLinks()}
	backwards := o.GetReadDirection() == streams.ReadReq_Options_Backwards
	_, subscribe := o.GetCountOption().(*streams.ReadReq_Options_Subscription)
	st := svc.store
	switch {
	case o.GetStream() != nil && subscribe:
		return svc.subscribe(srv, o, nil, enc)
	case o.GetAll() != nil && subscribe:
		return svc.subscribe(srv, o, f, enc)
	case o.GetStream() != nil:
		name := o.GetStream().GetStreamIdentifier().GetStreamName()
		st.mu.Lock()
		recs := st.streams[string(name)]
		if len(recs) == 0 {
			st.mu.Unlock()
			return srv.Send(&streams.ReadResp{Content: &streams.ReadResp_StreamNotFound_{
				StreamNotFound: &streams.ReadResp_StreamNotFound{
					StreamIdentifier: &shared.StreamIdentifier{StreamName: name}}}})
		}
		var from int
		switch r := o.GetStream().GetRevisionOption().(type) {
		case *streams.ReadReq_Options_StreamOptions_Revision:
			from = int(min(r.Revision, uint64(len(recs))))
			if backwards && r.Revision < uint64(len(recs)) {
				from++ // inclusive: the event at Revision is read first
			}
		case *streams.ReadReq_Options_StreamOptions_End:
			from = len(recs)
		}
		replies := enc.collect(recs, from, backwards, o.GetCount(), nil)
		st.mu.Unlock()
		return sendAll(srv, replies)
	case o.GetAll() != nil:
		st.mu.Lock()
		var from int
		switch a := o.GetAll().GetAllOption().(type) {
		case *streams.ReadReq_Options_AllOptions_End:
			from = len(st.all)
		case *streams.ReadReq_Options_AllOptions_Position:
			// Forwards includes the event at the position; backwards starts before it.
			from = st.allIndexFrom(a.Position.GetCommitPosition(), a.Position.GetPreparePosition())
		}
		replies := enc.collect(st.all, from, backwards, o.GetCount(), f)
		st.mu.Unlock()
		return sendAll(srv, replies)
	}
	return status.Error(codes.InvalidArgument, "esdbtest: read of neither a stream nor $all")
}

// collect encodes up to count readable records of recs, forwards from index
// from or backwards from index from-1. The caller holds store.mu.
func (enc encoder) collect(recs []*record, from int, backwards bool, count uint64, f *filter) []*streams.ReadResp {
	var out []*streams.ReadResp
	step := 1
	if backwards {
		step, from = -1, from-1
	}
	for i := from; i >= 0 && i < len(recs) && uint64(len(out)) < count; i += step {
		if r := recs[i]; !r.deleted && f.match(r) {
			out = append(out, enc.event(r))
		}
	}
	return out
}

func sendAll(srv streams.Streams_ReadServer, replies []*streams.ReadResp) error {
	for _, r := range replies {
		if err := srv.Send(r); err != nil {
			return err
		}
	}
	return nil
}

// subscribe serves a catch-up subscription to a stream or to $all (with an
// optional filter): confirmation, the backlog after the exclusive start,
// caught_up, then live events until the call ends or DropSubscriptions is
// called. Filtered $all subscriptions also get a checkpoint every
// window × multiplier scanned events and on catching up.
func (svc *streamsService) subscribe(srv streams.Streams_ReadServer, o *streams.ReadReq_Options, f *filter, enc encoder) error {
	st := svc.store
	ctx := srv.Context()
	stopWake := context.AfterFunc(ctx, func() {
		st.mu.Lock()
		st.cond.Broadcast()
		st.mu.Unlock()
	})
	defer stopWake()

	so := o.GetStream()
	name := string(so.GetStreamIdentifier().GetStreamName())
	records := func() []*record { // the caller holds st.mu
		if so == nil {
			return st.all
		}
		return st.streams[name]
	}

	st.mu.Lock()
	gen := st.dropGen
	var cursor int // index in records() of the next record to scan
	if so != nil {
		switch r := so.GetRevisionOption().(type) {
		case *streams.ReadReq_Options_StreamOptions_Revision:
			cursor = int(r.Revision) + 1
		case *streams.ReadReq_Options_StreamOptions_End:
			cursor = len(records())
		}
	} else {
		switch a := o.GetAll().GetAllOption().(type) {
		case *streams.ReadReq_Options_AllOptions_Position:
			cursor = st.allIndexAfter(a.Position.GetCommitPosition(), a.Position.GetPreparePosition())
		case *streams.ReadReq_Options_AllOptions_End:
			cursor = len(st.all)
		}
	}
	st.mu.Unlock()

	confirm := &streams.ReadResp{Content: &streams.ReadResp_Confirmation{
		Confirmation: &streams.ReadResp_SubscriptionConfirmation{SubscriptionId: uuid.NewString()}}}
	if err := srv.Send(confirm); err != nil {
		return err
	}

	caughtUp := false
	scanned := 0         // records scanned since the last checkpoint
	var lastSeen *record // last record scanned
	for {
		st.mu.Lock()
		for caughtUp && cursor >= len(records()) && gen == st.dropGen && ctx.Err() == nil {
			st.cond.Wait()
		}
		if gen != st.dropGen {
			st.mu.Unlock()
			return status.Error(codes.Unavailable, "esdbtest: subscription dropped by the server")
		}
		if err := ctx.Err(); err != nil {
			st.mu.Unlock()
			return status.FromContextError(err).Err()
		}
		var batch []*streams.ReadResp
		for recs := records(); cursor < len(recs) && len(batch) < maxBatch; cursor++ {
			r := recs[cursor]
			lastSeen = r
			if !r.deleted && f.match(r) {
				batch = append(batch, enc.event(r))
			}
			if scanned++; f != nil && scanned >= f.interval {
				batch = append(batch, checkpointReply(r))
				scanned = 0
			}
		}
		if !caughtUp && cursor >= len(records()) {
			if f != nil && scanned > 0 {
				batch = append(batch, checkpointReply(lastSeen))
				scanned = 0
			}
			batch = append(batch, caughtUpReply)
			caughtUp = true
		}
		st.mu.Unlock()
		if err := sendAll(srv, batch); err != nil {
			return err
		}
	}
}

// filter is a server-side $all filter on stream name or event type.
type filter struct {
	onType   bool
	prefixes []string
	regex    *regexp.Regexp
	interval int // checkpoint every interval scanned events
}

func newFilter(o *streams.ReadReq_Options_FilterOptions) (*filter, error) {
	if o == nil {
		return nil, nil
	}
	f := &filter{}
	expr := o.GetStreamIdentifier()
	if e := o.GetEventType(); e != nil {
		f.onType, expr = true, e
	}
	if expr == nil {
		return nil, status.Error(codes.InvalidArgument, "esdbtest: filter without expression")
	}
	f.prefixes = expr.GetPrefix()
	if expr.GetRegex() != "" {
		re, err := regexp.Compile(expr.GetRegex())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "esdbtest: bad filter regex: %v", err)
		}
		f.regex = re
	}
	window := defaultWindow
	if m := o.GetMax(); m > 0 {
		window = int(m)
	}
	f.interval = window * int(max(o.GetCheckpointIntervalMultiplier(), 1))
	return f, nil
}

// match reports whether r passes the filter; a nil filter passes everything.
func (f *filter) match(r *record) bool {
	if f == nil {
		return true
	}
	subject := r.stream
	if f.onType {
		subject = r.eventType
	}
	if f.regex != nil && !f.regex.MatchString(subject) {
		return false
	}
	if len(f.prefixes) == 0 {
		return true
	}
	for _, p := range f.prefixes {
		if strings.HasPrefix(subject, p) {
			return true
		}
	}
	return false
}

// encoder turns records into ReadResp event replies.
type encoder struct {
	stringIDs bool // the client asked for string UUIDs
	resolve   bool // resolve link events to their targets
}

// event encodes r; the caller holds store.mu (deleted may change).
func (enc encoder) event(r *record) *streams.ReadResp {
	ev := &streams.ReadResp_ReadEvent{
		Position: &streams.ReadResp_ReadEvent_CommitPosition{CommitPosition: r.commit},
	}
	if r.target != nil && enc.resolve {
		ev.Link = enc.recorded(r)
		if !r.target.deleted {
			ev.Event = enc.recorded(r.target)
		}
	} else {
		ev.Event = enc.recorded(r)
	}
	return &streams.ReadResp{Content: &streams.ReadResp_Event{Event: ev}}
}

// recorded encodes one record with the system metadata the client requires:
// type, content-type and created (.NET ticks since the Unix epoch; a missing
// or unparsable value makes the client call log.Fatalf).
func (enc encoder) recorded(r *record) *streams.ReadResp_ReadEvent_RecordedEvent {
	return &streams.ReadResp_ReadEvent_RecordedEvent{
		Id:               enc.uuid(r.id),
		StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(r.stream)},
		StreamRevision:   r.revision,
		CommitPosition:   r.commit,
		PreparePosition:  r.prepare,
		Metadata: map[string]string{
			"type":         r.eventType,
			"content-type": r.contentType,
			"created":      strconv.FormatInt(r.created.UnixNano()/100, 10),
		},
		CustomMetadata: r.metadata,
		Data:           r.data,
	}
}

func (enc encoder) uuid(id uuid.UUID) *shared.UUID {
	if enc.stringIDs {
		return &shared.UUID{Value: &shared.UUID_String_{String_: id.String()}}
	}
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits:  int64(binary.BigEndian.Uint64(id[:8])),
		LeastSignificantBits: int64(binary.BigEndian.Uint64(id[8:])),
	}}}
}

func fromProtoUUID(u *shared.UUID) (uuid.UUID, error) {
	if s := u.GetStructured(); s != nil {
		var id uuid.UUID
		binary.BigEndian.PutUint64(id[:8], uint64(s.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(id[8:], uint64(s.GetLeastSignificantBits()))
		return id, nil
	}
	return uuid.Parse(u.GetString_())
}

// checkpoint and marker replies.
func checkpointReply(r *record) *streams.ReadResp {
	return &streams.ReadResp{Content: &streams.ReadResp_Checkpoint_{Checkpoint: &streams.ReadResp_Checkpoint{
		CommitPosition: r.commit, PreparePosition: r.prepare}}}
}

var caughtUpReply = &streams.ReadResp{Content: &streams.ReadResp_CaughtUp_{CaughtUp: &streams.ReadResp_CaughtUp{}}}
