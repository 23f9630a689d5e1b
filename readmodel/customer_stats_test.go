package readmodel_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// TestCustomerStatsKeepsOrdersAndCustomersApart: the payment of an order
// placed in an earlier batch goes to the customer the upsert finds in
// order_customers, even in a batch where a customer has the order's ID.
func TestCustomerStatsKeepsOrdersAndCustomersApart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, store := openStore(t, pgstore.Config{})
	appendTo := func(stream string, events ...eventstore.EventData) {
		t.Helper()
		for _, e := range events {
			_, err := store.Append(ctx, stream, eventstore.Any, e)
			require.NoError(t, err)
		}
	}
	placed := func(customer string, total int) eventstore.EventData {
		return storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"`+customer+`","items":[{"sku":"A","qty":1,"price":`+strconv.Itoa(total)+`}],"total":`+strconv.Itoa(total)+`}`)
	}
	paid := func(amount int) eventstore.EventData {
		return storetest.Event(readmodel.TypeOrderPaid, `{"amount":`+strconv.Itoa(amount)+`}`)
	}

	// Order 7, of customer c1, applied; then, with the projector stopped,
	// an order of customer "7" and order 7's payment, which the projector
	// started again applies in one batch.
	d, _ := startExamples(t, ctx, db.Pool, store, projections.Config{})
	appendTo("order-7", placed("c1", 100))
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, "customer_stats")
	require.NoError(t, d.Stop(ctx))
	appendTo("order-8", placed("7", 50))
	appendTo("order-7", paid(100))
	appendTo("order-8", paid(50), storetest.Event(readmodel.TypeOrderCancelled, `{}`))
	startExamples(t, ctx, db.Pool, store, projections.Config{})
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, "customer_stats")

	rows, err := db.Pool.Query(ctx, `SELECT customer_id, orders, lifetime_total, cancelled FROM readmodel.customer_stats ORDER BY customer_id`)
	require.NoError(t, err)
	type stats struct {
		Customer                 string
		Orders, Total, Cancelled int64
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[stats])
	require.NoError(t, err)
	require.Equal(t, []stats{{"7", 1, 50, 1}, {"c1", 1, 100, 0}}, got)
}
