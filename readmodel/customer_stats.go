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

// customerDeltas are a batch's deltas by key, in the order first seen.
type customerDeltas struct {
	keys []string
	by   map[string]*customerDelta
}

func (ds *customerDeltas) of(key string) *customerDelta {
	d := ds.by[key]
	if d == nil {
		if ds.by == nil {
			ds.by = map[string]*customerDelta{}
		}
		d = &customerDelta{}
		ds.by[key] = d
		ds.keys = append(ds.keys, key)
	}
	return d
}

func (CustomerStats) Apply(ctx context.Context, b *projections.Batch) error {
	customerOf := map[string]string{} // orders placed in this batch
	var newOrders, newCustomers []string
	// By customer, and by order for the orders placed before this batch,
	// whose customer order_customers holds: an order and a customer may
	// have the same ID.
	var byCustomer, byOrder customerDeltas
	deltaOf := func(e eventstore.RecordedEvent, what string) *customerDelta {
		id := OrderID(e.StreamID)
		if customer, ok := customerOf[id]; ok {
			return byCustomer.of(customer)
		}
		d := byOrder.of(id)
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
			byCustomer.of(v.CustomerID).orders++
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
	n := len(byCustomer.keys) + len(byOrder.keys)
	if n == 0 {
		return nil
	}
	// One row per customer known here and per order whose customer the
	// upsert finds in order_customers, summed there by customer.
	customers, orders, bads := make([]*string, 0, n), make([]*string, 0, n), make([]*string, 0, n)
	placed, totals, cancelled := make([]int64, 0, n), make([]int64, 0, n), make([]int64, 0, n)
	row := func(customer, order, unplaced *string, d *customerDelta) {
		customers, orders, bads = append(customers, customer), append(orders, order), append(bads, unplaced)
		placed, totals, cancelled = append(placed, d.orders), append(totals, d.total), append(cancelled, d.cancelled)
	}
	for _, k := range byCustomer.keys {
		row(&k, nil, nil, byCustomer.by[k])
	}
	for _, k := range byOrder.keys {
		d := byOrder.by[k]
		row(nil, &k, &d.bad, d)
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
