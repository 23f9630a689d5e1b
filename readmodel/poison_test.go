package readmodel_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// TestBadEventsAreParked appends malformed events (a missing field, wrong
// types, a payment for an order never placed) among live order traffic.
// Each example projection parks the events it cannot read, with a clear
// error, holds only their streams, and keeps every other order exact;
// skipping the parked events releases the streams and the read models
// equal the fold of the events they applied.
func TestBadEventsAreParked(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, store := openStore(t, pgstore.Config{})
	d, metrics := startExamples(t, ctx, db.Pool, store, projections.Config{BatchSize: 50, StatusInterval: 50 * time.Millisecond})

	traffic := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, store, simulate.Config{Orders: 200, Customers: 20, Writers: 4, Rate: 800, Seed: 11})
		traffic <- err
	}()
	placed := func() eventstore.EventData {
		return storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c-bad","items":[{"sku":"A","qty":1,"price":700}],"total":700}`)
	}
	bad := map[string][]eventstore.EventData{
		"order-bad-amount":   {placed(), storetest.Event(readmodel.TypeOrderPaid, `{"amount":"7.00"}`), storetest.Event(readmodel.TypeOrderShipped, `{"carrier":"DHL"}`)},
		"order-no-customer":  {storetest.Event(readmodel.TypeOrderPlaced, `{"items":[],"total":5}`), storetest.Event(readmodel.TypeOrderPaid, `{"amount":5}`)},
		"order-bad-carrier":  {placed(), storetest.Event(readmodel.TypeOrderShipped, `{"carrier":5}`), storetest.Event(readmodel.TypeOrderDelivered, `{}`)},
		"order-never-placed": {storetest.Event(readmodel.TypeOrderPaid, `{"amount":300}`)},
	}
	for stream, events := range bad {
		for _, e := range events {
			_, err := store.Append(ctx, stream, eventstore.Any, e)
			require.NoError(t, err)
			time.Sleep(20 * time.Millisecond) // spread over batches
		}
	}
	require.NoError(t, <-traffic)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExactBesideParked(t, ctx, db.Pool)

	var status string
	var rev, paid int64
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT status, revision, paid FROM readmodel.orders WHERE id = 'bad-amount'`).Scan(&status, &rev, &paid))
	require.Equal(t, [3]any{"placed", int64(0), int64(0)}, [3]any{status, rev, paid}, "held at its last good revision")

	heads := map[string]map[string]projections.ParkedEvent{} // projection → stream → parked event
	list, err := projections.ListParked(ctx, db.Pool, projections.ListOptions{})
	require.NoError(t, err)
	for _, p := range list {
		if p.State != projections.ParkedStateParked {
			continue
		}
		if heads[p.Projection] == nil {
			heads[p.Projection] = map[string]projections.ParkedEvent{}
		}
		heads[p.Projection][p.Event.StreamID] = p
		require.Contains(t, p.Error, "bad event")
		require.Contains(t, p.Error, p.Event.StreamID, "the error names the stream")
		require.Equal(t, 1, p.Attempts, "a malformed event is not tried again")
	}
	streams := func(m map[string]projections.ParkedEvent) []string {
		var out []string
		for s := range m {
			out = append(out, s)
		}
		return out
	}
	require.ElementsMatch(t, []string{"order-bad-amount", "order-no-customer", "order-bad-carrier"}, streams(heads["orders"]))
	require.ElementsMatch(t, []string{"order-bad-amount", "order-no-customer", "order-never-placed"}, streams(heads["customer_stats"]))
	require.ElementsMatch(t, []string{"order-bad-amount", "order-no-customer"}, streams(heads["daily_sales"]))
	require.Contains(t, heads["orders"]["order-bad-amount"].Error, "cannot unmarshal string")
	require.Contains(t, heads["orders"]["order-no-customer"].Error, "customer_id is missing")
	require.Contains(t, heads["customer_stats"]["order-never-placed"].Error, "never placed")
	for name, m := range heads {
		require.Equal(t, float64(len(m)), testutil.ToFloat64(metrics.EventsParked.WithLabelValues(name)), name)
	}

	// Skip every parked event: the events held behind them apply, except a
	// payment whose order had no customer, which then fails in its turn.
	byName := map[string]projections.Projection{}
	for _, p := range readmodel.All() {
		byName[p.Name()] = p
	}
	var failedInTurn []string
	for {
		list, err = projections.ListParked(ctx, db.Pool, projections.ListOptions{})
		require.NoError(t, err)
		if len(list) == 0 {
			break
		}
		for _, p := range list {
			if p.State != projections.ParkedStateParked {
				continue
			}
			rel, err := projections.SkipParked(ctx, db.Pool, byName[p.Projection], p.ID)
			require.NoError(t, err)
			if rel.Parked != nil {
				failedInTurn = append(failedInTurn, rel.Parked.Projection+" "+rel.Parked.Event.StreamID)
			}
		}
	}
	require.Equal(t, []string{"customer_stats order-no-customer"}, failedInTurn)
	readmodeltest.RequireExactBesideParked(t, ctx, db.Pool)
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT status, revision, paid FROM readmodel.orders WHERE id = 'bad-amount'`).Scan(&status, &rev, &paid))
	require.Equal(t, [3]any{"shipped", int64(2), int64(0)}, [3]any{status, rev, paid})
	require.NoError(t, d.Stop(ctx))
}

// TestRebuildParksBadEventsInFlight rebuilds every example projection
// over bad events that arrived while no projector ran, among ordinary
// traffic, in small batches, so that the next batch is under way while a
// bad one is on its way to the server (a payment of an order never placed
// fails customer_stats' batch only at its commit). Each rebuild parks the
// bad events, with their errors, and applies every other batch once: the
// read models equal the fold of the events beside the parked ones.
func TestRebuildParksBadEventsInFlight(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db, store := openStore(t, pgstore.Config{ReadBatch: 20})
	_, err := simulate.Run(ctx, store, simulate.Config{Orders: 100, Customers: 20, Writers: 4, Seed: 12})
	require.NoError(t, err)
	d, _ := startExamples(t, ctx, db.Pool, store, projections.Config{})
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	require.NoError(t, d.Stop(ctx))

	// Apart, with traffic between them, so that the payment fails its
	// batch at the commit rather than beside a decoding error.
	for i, bad := range []struct {
		stream string
		events []eventstore.EventData
	}{
		{"order-never-placed", []eventstore.EventData{storetest.Event(readmodel.TypeOrderPaid, `{"amount":300}`)}},
		{"order-bad-amount", []eventstore.EventData{storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c-bad","items":[],"total":700}`),
			storetest.Event(readmodel.TypeOrderPaid, `{"amount":"7.00"}`)}},
	} {
		for _, e := range bad.events {
			_, err := store.Append(ctx, bad.stream, eventstore.Any, e)
			require.NoError(t, err)
		}
		_, err = simulate.Run(ctx, store, simulate.Config{Orders: 50, Customers: 20, Writers: 1, Seed: uint64(13 + i)})
		require.NoError(t, err)
	}

	for _, p := range readmodel.All() {
		require.NoError(t, projections.RunRebuild(ctx, db.Pool, store, p, projections.Config{RebuildBatchSize: 7}, nil), p.Name())
	}
	list, err := projections.ListParked(ctx, db.Pool, projections.ListOptions{})
	require.NoError(t, err)
	parked := map[string][]string{} // projection → "stream revision"
	for _, p := range list {
		if p.State != projections.ParkedStateParked {
			continue
		}
		parked[p.Projection] = append(parked[p.Projection], fmt.Sprintf("%s %d", p.Event.StreamID, p.Event.Revision))
		require.Equal(t, 2, p.Generation, "parked by the rebuild")
		require.Contains(t, p.Error, "bad event")
		if p.Event.StreamID == "order-never-placed" {
			require.Contains(t, p.Error, "never placed")
		}
	}
	require.Equal(t, map[string][]string{
		"orders":         {"order-bad-amount 1"},
		"customer_stats": {"order-bad-amount 1", "order-never-placed 0"},
		"daily_sales":    {"order-bad-amount 1"},
	}, sorted(parked))
	readmodeltest.RequireExactBesideParked(t, ctx, db.Pool)
}

func sorted(m map[string][]string) map[string][]string {
	for _, v := range m {
		slices.Sort(v)
	}
	return m
}
