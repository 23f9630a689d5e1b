package readmodel

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
)

// CustomerStats keeps readmodel.customer_stats: per customer, orders placed,
// the sum of payments and orders cancelled. It is incremental, so it is
// exact only if every event is applied exactly once. Payments and
// cancellations do not name the customer; the projection keeps its own
// order → customer table to find it, and finds it in the statement that
// writes the totals, so that Apply only queues: a batch that reads first
// cannot share its commit with other projections' (see Config.CommitWait).
type CustomerStats struct{}

var _ projections.Projection = CustomerStats{}

func (CustomerStats) Name() string     { return "customer_stats" }
func (CustomerStats) Version() int     { return 2 } // 2: bad_event, the lookup in the upsert
func (CustomerStats) Tables() []string { return []string{"customer_stats"} }
func (CustomerStats) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{OrderStreamPrefix}}
}

// Setup creates the tables and bad_event, which the upsert calls for an
// order it cannot find: it fails the statement with the event's error as a
// data exception (SQLSTATE 22000), which the projector parks at once.
func (CustomerStats) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `
		CREATE TABLE `+pgx.Identifier{schema, "customer_stats"}.Sanitize()+` (
			customer_id    text PRIMARY KEY,
			orders         bigint NOT NULL DEFAULT 0,
			lifetime_total bigint NOT NULL DEFAULT 0,
			cancelled      bigint NOT NULL DEFAULT 0
		);
		CREATE TABLE `+pgx.Identifier{schema, "order_customers"}.Sanitize()+` (
			order_id    text PRIMARY KEY,
			customer_id text NOT NULL
		);
		CREATE FUNCTION `+pgx.Identifier{schema, "bad_event"}.Sanitize()+`(message text) RETURNS text
			LANGUAGE plpgsql AS $$
			BEGIN
				RAISE EXCEPTION USING MESSAGE = message, ERRCODE = 'data_exception';
			END $$;`)
	return err
}

// customerDelta is what a batch adds to one customer's totals, or to the
// totals of an order's customer still to be found (then bad is the error of
// the order's first event here, should the order never have been placed).
type customerDelta struct {
	orders, total, cancelled int64
	bad                      string
}

func (CustomerStats) Apply(ctx context.Context, b *projections.Batch) error {
	customerOf := map[string]string{} // orders placed in this batch
	var newOrders, newCustomers []string
	var keys []string // customers, then orders whose customer is to be found
	byCustomer, byOrder := map[string]*customerDelta{}, map[string]*customerDelta{}
	add := func(m map[string]*customerDelta, key string) *customerDelta {
		d := m[key]
		if d == nil {
			d = &customerDelta{}
			m[key] = d
			keys = append(keys, key)
		}
		return d
	}
	deltaOf := func(e eventstore.RecordedEvent, what string) *customerDelta {
		id := OrderID(e.StreamID)
		if customer, ok := customerOf[id]; ok {
			return add(byCustomer, customer)
		}
		d := add(byOrder, id)
		if d.bad == "" {
			d.bad = bad(e, "%s order %s, which was never placed", what, id).Error()
		}
		return d
	}
	for _, e := range b.Events {
		switch e.Type {
		case TypeOrderPlaced:
			v, err := DecodeOrderPlaced(e)
			if err != nil {
				return err
			}
			customerOf[OrderID(e.StreamID)] = v.CustomerID
			newOrders, newCustomers = append(newOrders, OrderID(e.StreamID)), append(newCustomers, v.CustomerID)
			add(byCustomer, v.CustomerID).orders++
		case TypeOrderPaid:
			v, err := DecodeOrderPaid(e)
			if err != nil {
				return err
			}
			deltaOf(e, "payment for").total += v.Amount
		case TypeOrderCancelled:
			if err := CheckOther(e); err != nil {
				return err
			}
			deltaOf(e, "cancellation of").cancelled++
		}
	}
	if len(newOrders) > 0 {
		b.Queue(`INSERT INTO `+b.Table("order_customers")+` (order_id, customer_id)
			SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (order_id) DO NOTHING`, newOrders, newCustomers)
	}
	if len(keys) == 0 {
		return nil
	}
	// One row per customer known here and per order whose customer
	// order_customers holds (written by an earlier batch, or by the
	// statement above): the upsert finds those and sums by customer.
	n := len(keys)
	customers, orders := make([]*string, n), make([]*string, n)
	placed, totals, cancelled, bads := make([]int64, n), make([]int64, n), make([]int64, n), make([]*string, n)
	i := 0
	for _, k := range keys {
		d, ok := byCustomer[k]
		if ok {
			customers[i] = &k
		} else {
			d = byOrder[k]
			orders[i], bads[i] = &k, &d.bad
		}
		placed[i], totals[i], cancelled[i] = d.orders, d.total, d.cancelled
		i++
	}
	b.Queue(`INSERT INTO `+b.Table("customer_stats")+` AS c (customer_id, orders, lifetime_total, cancelled)
		SELECT coalesce(d.customer_id, o.customer_id, `+b.Table("bad_event")+`(d.bad)), sum(d.orders), sum(d.total), sum(d.cancelled)
		FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[])
			AS d(customer_id, order_id, orders, total, cancelled, bad)
		LEFT JOIN `+b.Table("order_customers")+` o ON o.order_id = d.order_id
		GROUP BY 1
		ON CONFLICT (customer_id) DO UPDATE SET
			orders         = c.orders + excluded.orders,
			lifetime_total = c.lifetime_total + excluded.lifetime_total,
			cancelled      = c.cancelled + excluded.cancelled`, customers, orders, placed, totals, cancelled, bads)
	return nil
}
