package readmodel

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
)

// Orders keeps readmodel.orders: one row per order with its processing state.
type Orders struct{}

var (
	_ projections.Projection = Orders{}
	_ projections.Indexer    = Orders{}
)

func (Orders) Name() string     { return "orders" }
func (Orders) Version() int     { return 1 }
func (Orders) Tables() []string { return []string{"orders"} }
func (Orders) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{OrderStreamPrefix}}
}

func (Orders) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	t := pgx.Identifier{schema, "orders"}.Sanitize()
	_, err := tx.Exec(ctx, `
		CREATE TABLE `+t+` (
			id          text PRIMARY KEY,
			customer_id text,
			status      text NOT NULL,
			total       bigint NOT NULL DEFAULT 0,
			paid        bigint NOT NULL DEFAULT 0,
			placed_at   timestamptz,
			updated_at  timestamptz NOT NULL,
			revision    bigint NOT NULL
		)`)
	return err
}

// Indexes are the orders listing's indexes, built after a rebuild's bulk
// load.
func (Orders) Indexes(schema string) []string {
	t := pgx.Identifier{schema, "orders"}.Sanitize()
	return []string{
		`CREATE INDEX orders_status_id ON ` + t + ` (status, id)`,
		`CREATE INDEX orders_customer_id ON ` + t + ` (customer_id, id)`,
	}
}

// Order statuses, in the order an order moves through them; cancelled ends
// an order whatever it had reached.
const (
	StatusPlaced    = "placed"
	StatusPaid      = "paid"
	StatusShipped   = "shipped"
	StatusDelivered = "delivered"
	StatusCancelled = "cancelled"
)

var statusRank = map[string]int{StatusPlaced: 1, StatusPaid: 2, StatusShipped: 3, StatusDelivered: 4, StatusCancelled: 5}

// OrderStatusOf is the status an event of type eventType moves an order to;
// false for types that do not concern orders.
func OrderStatusOf(eventType string) (string, bool) {
	s, ok := statusOf[eventType]
	return s, ok
}

// LaterStatus is whichever of two statuses an order reaches later; the
// empty status is before all.
func LaterStatus(a, b string) string {
	if statusRank[b] > statusRank[a] {
		return b
	}
	return a
}

var statusOf = map[string]string{
	TypeOrderPlaced: StatusPlaced, TypeOrderPaid: StatusPaid, TypeOrderShipped: StatusShipped,
	TypeOrderDelivered: StatusDelivered, TypeOrderCancelled: StatusCancelled,
}

// orderChange is what one batch does to one order.
type orderChange struct {
	customerID *string
	total      int64
	placedAt   *time.Time
	status     string
	paid       int64
	updatedAt  time.Time
	revision   int64
}

func (Orders) Apply(ctx context.Context, b *projections.Batch) error {
	changes := map[string]*orderChange{}
	var ids []string
	for _, e := range b.Events {
		status, ok := OrderStatusOf(e.Type)
		if !ok {
			continue
		}
		id := OrderID(e.StreamID)
		c := changes[id]
		if c == nil {
			c = &orderChange{}
			changes[id] = c
			ids = append(ids, id)
		}
		switch e.Type {
		case TypeOrderPlaced:
			v, err := DecodeOrderPlaced(e)
			if err != nil {
				return err
			}
			at := e.CreatedAt
			c.customerID, c.total, c.placedAt = &v.CustomerID, v.Total, &at
		case TypeOrderPaid:
			v, err := DecodeOrderPaid(e)
			if err != nil {
				return err
			}
			c.paid += v.Amount
		default:
			if err := CheckOther(e); err != nil {
				return err
			}
		}
		c.status = LaterStatus(c.status, status)
		if e.CreatedAt.After(c.updatedAt) {
			c.updatedAt = e.CreatedAt
		}
		c.revision = max(c.revision, int64(e.Revision))
	}
	if len(ids) == 0 {
		return nil
	}
	n := len(ids)
	var (
		customers = make([]*string, n)
		statuses  = make([]string, n)
		totals    = make([]int64, n)
		paid      = make([]int64, n)
		placedAt  = make([]*time.Time, n)
		updatedAt = make([]time.Time, n)
		revisions = make([]int64, n)
	)
	for i, id := range ids {
		c := changes[id]
		customers[i], statuses[i], totals[i], paid[i] = c.customerID, c.status, c.total, c.paid
		placedAt[i], updatedAt[i], revisions[i] = c.placedAt, c.updatedAt, c.revision
	}
	b.Queue(fmt.Sprintf(`
		INSERT INTO %s AS o (id, customer_id, status, total, paid, placed_at, updated_at, revision)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::timestamptz[], $7::timestamptz[], $8::bigint[])
		ON CONFLICT (id) DO UPDATE SET
			customer_id = coalesce(excluded.customer_id, o.customer_id),
			total       = CASE WHEN excluded.placed_at IS NOT NULL THEN excluded.total ELSE o.total END,
			placed_at   = coalesce(excluded.placed_at, o.placed_at),
			status      = CASE WHEN array_position($9::text[], excluded.status) > array_position($9::text[], o.status)
			                   THEN excluded.status ELSE o.status END,
			paid        = o.paid + excluded.paid,
			updated_at  = greatest(o.updated_at, excluded.updated_at),
			revision    = greatest(o.revision, excluded.revision)`, b.Table("orders")),
		ids, customers, statuses, totals, paid, placedAt, updatedAt, revisions,
		[]string{StatusPlaced, StatusPaid, StatusShipped, StatusDelivered, StatusCancelled})
	return nil
}
