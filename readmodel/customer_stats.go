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
// order → customer table to find it.
type CustomerStats struct{}

var _ projections.Projection = CustomerStats{}

func (CustomerStats) Name() string     { return "customer_stats" }
func (CustomerStats) Version() int     { return 1 }
func (CustomerStats) Tables() []string { return []string{"customer_stats"} }
func (CustomerStats) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{OrderStreamPrefix}}
}

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
		);`)
	return err
}

type customerDelta struct{ orders, total, cancelled int64 }

func (CustomerStats) Apply(ctx context.Context, b *projections.Batch) error {
	customerOf := map[string]string{}
	var newOrders, newCustomers, lookup []string
	for _, e := range b.Events {
		id := OrderID(e.StreamID)
		switch e.Type {
		case TypeOrderPlaced:
			v, err := DecodeOrderPlaced(e)
			if err != nil {
				return err
			}
			customerOf[id] = v.CustomerID
			newOrders, newCustomers = append(newOrders, id), append(newCustomers, v.CustomerID)
		case TypeOrderPaid, TypeOrderCancelled:
			if _, ok := customerOf[id]; !ok {
				lookup = append(lookup, id)
				customerOf[id] = "" // looked up below
			}
		}
	}
	if len(lookup) > 0 {
		rows, err := b.Tx.Query(ctx, `SELECT order_id, customer_id FROM `+b.Table("order_customers")+` WHERE order_id = ANY($1)`, lookup)
		if err != nil {
			return err
		}
		var order, customer string
		if _, err := pgx.ForEachRow(rows, []any{&order, &customer}, func() error { customerOf[order] = customer; return nil }); err != nil {
			return err
		}
	}

	deltas := map[string]*customerDelta{}
	var customers []string
	add := func(customer string) *customerDelta {
		d := deltas[customer]
		if d == nil {
			d = &customerDelta{}
			deltas[customer] = d
			customers = append(customers, customer)
		}
		return d
	}
	for _, e := range b.Events {
		customer := customerOf[OrderID(e.StreamID)]
		switch e.Type {
		case TypeOrderPlaced:
			add(customer).orders++
		case TypeOrderPaid:
			v, err := DecodeOrderPaid(e)
			if err != nil {
				return err
			}
			if customer == "" {
				return bad(e, "payment for order %s, which was never placed", OrderID(e.StreamID))
			}
			add(customer).total += v.Amount
		case TypeOrderCancelled:
			if err := CheckOther(e); err != nil {
				return err
			}
			if customer == "" {
				return bad(e, "cancellation of order %s, which was never placed", OrderID(e.StreamID))
			}
			add(customer).cancelled++
		}
	}
	if len(newOrders) > 0 {
		b.Queue(`INSERT INTO `+b.Table("order_customers")+` (order_id, customer_id)
			SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT (order_id) DO NOTHING`, newOrders, newCustomers)
	}
	if len(customers) == 0 {
		return nil
	}
	orders, totals, cancelled := make([]int64, len(customers)), make([]int64, len(customers)), make([]int64, len(customers))
	for i, c := range customers {
		d := deltas[c]
		orders[i], totals[i], cancelled[i] = d.orders, d.total, d.cancelled
	}
	b.Queue(`INSERT INTO `+b.Table("customer_stats")+` AS c (customer_id, orders, lifetime_total, cancelled)
		SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
		ON CONFLICT (customer_id) DO UPDATE SET
			orders         = c.orders + excluded.orders,
			lifetime_total = c.lifetime_total + excluded.lifetime_total,
			cancelled      = c.cancelled + excluded.cancelled`, customers, orders, totals, cancelled)
	return nil
}
