package esdb

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"

	client "github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/sightlinehq/sightline/eventstore"
)

// Subscribe opens a catch-up subscription after from (exclusive). With
// f.Category it reads the category stream $ce-<category> with links
// resolved (the server's by-category projection must be running);
// otherwise $all with a server-side filter, system events excluded.
//
// The client does not resubscribe after a drop: Recv then returns an
// error, and the caller subscribes again from its checkpoint.
func (s *Store) Subscribe(ctx context.Context, from eventstore.Position, f eventstore.Filter) (eventstore.Subscription, error) {
	c, err := s.conn()
	if err != nil {
		return nil, err
	}
	var sub *client.Subscription
	if f.Category != "" {
		stream := "$ce-" + f.Category
		start, err := s.categoryStart(ctx, c, stream, from)
		if err != nil {
			return nil, err
		}
		sub, err = call(ctx, s, func() (*client.Subscription, error) {
			return c.SubscribeToStream(ctx, stream, client.SubscribeToStreamOptions{From: start, ResolveLinkTos: true})
		}, closeSub)
		if err = s.failed(c, err); err != nil {
			return nil, fmt.Errorf("subscribe to %s: %w", stream, err)
		}
	} else {
		var start client.AllPosition = client.Start{}
		if !from.IsStart() {
			start = client.Position{Commit: from.Commit, Prepare: from.Prepare}
		}
		sub, err = call(ctx, s, func() (*client.Subscription, error) {
			return c.SubscribeToAll(ctx, client.SubscribeToAllOptions{
				From: start, Filter: serverFilter(f),
				MaxSearchWindow: s.cfg.MaxSearchWindow, CheckpointInterval: s.cfg.CheckpointInterval,
			})
		}, closeSub)
		if err = s.failed(c, err); err != nil {
			return nil, fmt.Errorf("subscribe to $all: %w", err)
		}
	}
	x := &subscription{store: s, inner: sub, filter: f, last: from, events: make(chan *client.SubscriptionEvent, s.cfg.ReadBatch), done: make(chan struct{})}
	x.wg.Add(1)
	go x.pump()
	return x, nil
}

func closeSub(sub *client.Subscription) { _ = sub.Close() }

// serverFilter is the $all filter for f: stream prefixes if it has any,
// else event types (names and prefixes, as one regex), else everything but
// system events. Whatever the server cannot filter, the subscription
// filters itself.
func serverFilter(f eventstore.Filter) *client.SubscriptionFilter {
	switch {
	case len(f.StreamPrefixes) > 0:
		return &client.SubscriptionFilter{Type: client.StreamFilterType, Prefixes: f.StreamPrefixes}
	case len(f.EventTypes) > 0 || len(f.EventTypePrefixes) > 0:
		var alts []string
		for _, t := range f.EventTypes {
			alts = append(alts, regexp.QuoteMeta(t)+"$")
		}
		for _, p := range f.EventTypePrefixes {
			alts = append(alts, regexp.QuoteMeta(p))
		}
		return &client.SubscriptionFilter{Type: client.EventFilterType, Regex: "^(" + strings.Join(alts, "|") + ")"}
	}
	return client.ExcludeSystemEventsFilter()
}

// categoryStart finds where to resume a category stream: after the newest
// link whose event is at or before from. It reads the stream backwards,
// so its cost is what was appended since the checkpoint. Links to deleted
// events are stepped over: they say nothing of where events are.
func (s *Store) categoryStart(ctx context.Context, c *client.Client, stream string, from eventstore.Position) (client.StreamPosition, error) {
	if from.IsStart() {
		return client.Start{}, nil
	}
	const page = 500
	var at client.StreamPosition = client.End{}
	for {
		read, err := call(ctx, s, func() ([]*client.ResolvedEvent, error) {
			return readAllOf(c.ReadStream(ctx, stream, client.ReadStreamOptions{Direction: client.Backwards, From: at, ResolveLinkTos: true}, page))
		}, nil)
		if code(err) == client.ErrorCodeResourceNotFound {
			return client.Start{}, nil
		}
		if err = s.failed(c, err); err != nil {
			return nil, fmt.Errorf("find resume point in %s: %w", stream, err)
		}
		for _, e := range read {
			link := e.OriginalEvent()
			if e.Event != nil && !from.Before(position(e.Event.Position)) {
				return client.Revision(link.EventNumber), nil
			}
		}
		if len(read) < page {
			return client.Start{}, nil
		}
		last := read[len(read)-1].OriginalEvent().EventNumber
		if last == 0 {
			return client.Start{}, nil
		}
		at = client.Revision(last - 1)
	}
}

type subscription struct {
	store  *Store
	inner  *client.Subscription
	filter eventstore.Filter
	events chan *client.SubscriptionEvent
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup

	last    eventstore.Position // the last checkpoint returned
	live    bool                // caught up, not fallen behind since
	dropped error               // a drop to report after the events before it
}

// pump moves the client's blocking Recv into a channel, so that Recv can
// take whatever has arrived as one message.
func (x *subscription) pump() {
	defer x.wg.Done()
	for {
		ev := x.inner.Recv()
		select {
		case x.events <- ev:
		case <-x.done:
			return
		}
		if ev.SubscriptionDropped != nil {
			return
		}
	}
}

// Close ends the subscription. Safe to call twice.
func (x *subscription) Close() error {
	x.once.Do(func() {
		close(x.done)
		_ = x.inner.Close()
	})
	x.wg.Wait()
	return nil
}

// Recv returns the events, checkpoints and caught-up notices that have
// arrived, waiting for the first.
func (x *subscription) Recv(ctx context.Context) (eventstore.Message, error) {
	if x.dropped != nil {
		return eventstore.Message{}, x.dropped
	}
	var msg eventstore.Message
	took := false
	for len(msg.Events) < x.store.cfg.ReadBatch {
		var ev *client.SubscriptionEvent
		if !took {
			select {
			case ev = <-x.events:
			case <-ctx.Done():
				return eventstore.Message{}, ctx.Err()
			case <-x.done:
				return eventstore.Message{}, eventstore.ErrClosed
			}
			took = true
		} else {
			select {
			case ev = <-x.events:
			default:
				return x.finish(msg), nil
			}
		}
		switch {
		case ev.SubscriptionDropped != nil:
			x.store.connected.Store(false)
			x.dropped = fmt.Errorf("subscription dropped: %w", ev.SubscriptionDropped.Error)
			if len(msg.Events) == 0 && msg.DeletedLinks == 0 {
				return eventstore.Message{}, x.dropped
			}
			return x.finish(msg), nil
		case ev.EventAppeared != nil:
			x.store.connected.Store(true)
			x.appeared(&msg, ev.EventAppeared)
		case ev.CheckPointReached != nil:
			x.store.connected.Store(true)
			x.advance(&msg, position(*ev.CheckPointReached))
		case ev.CaughtUp != nil:
			x.store.connected.Store(true)
			msg.CaughtUp, x.live = true, true
		case ev.FellBehind != nil:
			msg.CaughtUp, x.live = false, false
		}
	}
	return x.finish(msg), nil
}

// appeared adds an event, or counts a link whose event was deleted. Such a
// link does not move the checkpoint: the link sits later in $all than the
// events behind it in the category stream.
func (x *subscription) appeared(msg *eventstore.Message, e *client.ResolvedEvent) {
	if e.Event == nil {
		msg.DeletedLinks++
		return
	}
	r := recorded(e.Event)
	if strings.HasPrefix(r.StreamID, "$") || !x.filter.Matches(r.StreamID, r.Type) {
		x.advance(msg, r.Position)
		return
	}
	msg.Events = append(msg.Events, r)
	x.advance(msg, r.Position)
}

func (x *subscription) advance(msg *eventstore.Message, p eventstore.Position) {
	if msg.Checkpoint.Before(p) {
		msg.Checkpoint = p
	}
}

// finish never lets a message's checkpoint go back.
func (x *subscription) finish(msg eventstore.Message) eventstore.Message {
	if msg.Checkpoint.Before(x.last) {
		msg.Checkpoint = x.last
	}
	x.last = msg.Checkpoint
	msg.Live = x.live
	return msg
}
