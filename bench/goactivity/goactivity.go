// Package goactivity is examples/projections/order_activity.yaml written as
// a Go projection, under the name order_activity_go: the same table, index
// and rows, applied set-based (a statement per batch, not per event) as
// readmodel.Orders is. The bench rebuilds it beside the YAML projection, by
// the same engine path, to show what the YAML handlers' statement per event
// costs. It owns only its table; cmd/sightline-activity is the program that
// runs it.
package goactivity

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
)

// Name is the projection's name, and its table's.
const Name = "order_activity_go"

// OrderActivity keeps readmodel.order_activity_go: per order, its last
// event of the five order types, how many of them, the carrier of its last
// OrderShipped and the time of its last event.
type OrderActivity struct{}

var _ projections.Projection = OrderActivity{}

func (OrderActivity) Name() string     { return Name }
func (OrderActivity) Version() int     { return 1 }
func (OrderActivity) Tables() []string { return []string{Name} }
func (OrderActivity) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{readmodel.OrderStreamPrefix}}
}

// Setup creates the table and its index at once, as the YAML projection's
// tables do (a Go projection could build the index after a rebuild's bulk
// load instead, with projections.Indexer; the YAML one cannot).
func (OrderActivity) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	t := pgx.Identifier{schema, Name}.Sanitize()
	_, err := tx.Exec(ctx, `
		CREATE TABLE `+t+` (
			order_id    text PRIMARY KEY,
			last_event  text NOT NULL,
			events      bigint NOT NULL,
			carrier     text,
			last_at     timestamptz NOT NULL
		);
		CREATE INDEX `+Name+`_recent ON `+t+` (last_at DESC, order_id)`)
	return err
}

// change is what one batch does to one order's row.
type change struct {
	placed    bool // the row is inserted: the batch has the order's OrderPlaced
	lastEvent string
	events    int64
	shipped   bool
	carrier   *string
	lastAt    time.Time
}

// handled are the event types the YAML projection has handlers for.
var handled = map[string]bool{
	readmodel.TypeOrderPlaced: true, readmodel.TypeOrderPaid: true, readmodel.TypeOrderShipped: true,
	readmodel.TypeOrderDelivered: true, readmodel.TypeOrderCancelled: true,
}

// Apply folds the batch per order, then queues two statements: an UPDATE
// of the orders placed before the batch and an INSERT of those placed in
// it, as the YAML handlers' UPDATEs and INSERTs would leave them.
func (OrderActivity) Apply(_ context.Context, b *projections.Batch) error {
	changes := map[string]*change{}
	var ids []string
	for _, e := range b.Events {
		if !handled[e.Type] {
			continue
		}
		id := readmodel.OrderID(e.StreamID)
		c := changes[id]
		if c == nil {
			c = &change{}
			changes[id] = c
			ids = append(ids, id)
		}
		if e.Type == readmodel.TypeOrderPlaced {
			*c = change{placed: true}
		}
		if e.Type == readmodel.TypeOrderShipped {
			var v struct {
				Carrier *string `json:"carrier"`
			}
			if err := json.Unmarshal(e.Data, &v); err != nil {
				return projections.Permanent(fmt.Errorf("OrderShipped of %s at %d: %w", e.StreamID, e.Revision, err))
			}
			c.shipped, c.carrier = true, v.Carrier
		}
		c.lastEvent, c.lastAt = e.Type, e.CreatedAt
		c.events++
	}
	var (
		upd, ins       []string
		updLast, insLa []string
		updN, insN     []int64
		updShip        []bool
		updCar, insCar []*string
		updAt, insAt   []time.Time
	)
	for _, id := range ids {
		c := changes[id]
		if c.placed {
			ins, insLa, insN, insCar, insAt = append(ins, id), append(insLa, c.lastEvent), append(insN, c.events), append(insCar, c.carrier), append(insAt, c.lastAt)
			continue
		}
		upd, updLast, updN, updShip = append(upd, id), append(updLast, c.lastEvent), append(updN, c.events), append(updShip, c.shipped)
		updCar, updAt = append(updCar, c.carrier), append(updAt, c.lastAt)
	}
	t := b.Table(Name)
	if len(upd) > 0 {
		b.Queue(`UPDATE `+t+` AS a SET last_event = c.last_event, events = a.events + c.events,
				carrier = CASE WHEN c.shipped THEN c.carrier ELSE a.carrier END, last_at = c.last_at
			FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[], $5::text[], $6::timestamptz[]) AS c(order_id, last_event, events, shipped, carrier, last_at)
			WHERE a.order_id = c.order_id`,
			upd, updLast, updN, updShip, updCar, updAt)
	}
	if len(ins) > 0 {
		b.Queue(`INSERT INTO `+t+` (order_id, last_event, events, carrier, last_at)
			SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::timestamptz[])`,
			ins, insLa, insN, insCar, insAt)
	}
	return nil
}
