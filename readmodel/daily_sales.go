package readmodel

import (
	"context"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
)

// DailySales keeps readmodel.daily_sales: per UTC day of the events' time,
// orders placed, the sum of payments and orders cancelled.
type DailySales struct{}

var _ projections.Projection = DailySales{}

func (DailySales) Name() string     { return "daily_sales" }
func (DailySales) Version() int     { return 1 }
func (DailySales) Tables() []string { return []string{"daily_sales"} }
func (DailySales) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{OrderStreamPrefix}}
}

func (DailySales) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `
		CREATE TABLE `+pgx.Identifier{schema, "daily_sales"}.Sanitize()+` (
			day       date PRIMARY KEY,
			orders    bigint NOT NULL DEFAULT 0,
			revenue   bigint NOT NULL DEFAULT 0,
			cancelled bigint NOT NULL DEFAULT 0
		);`)
	return err
}

func (DailySales) Apply(ctx context.Context, b *projections.Batch) error {
	type delta struct{ orders, revenue, cancelled int64 }
	deltas := map[string]*delta{}
	var days []string
	for _, e := range b.Events {
		day := e.CreatedAt.UTC().Format("2006-01-02")
		d := deltas[day]
		if d == nil {
			d = &delta{}
			deltas[day] = d
			days = append(days, day)
		}
		switch e.Type {
		case TypeOrderPlaced:
			if _, err := DecodeOrderPlaced(e); err != nil {
				return err
			}
			d.orders++
		case TypeOrderPaid:
			v, err := DecodeOrderPaid(e)
			if err != nil {
				return err
			}
			d.revenue += v.Amount
		case TypeOrderCancelled:
			if err := CheckOther(e); err != nil {
				return err
			}
			d.cancelled++
		}
	}
	if len(days) == 0 {
		return nil
	}
	orders, revenue, cancelled := make([]int64, len(days)), make([]int64, len(days)), make([]int64, len(days))
	for i, day := range days {
		d := deltas[day]
		orders[i], revenue[i], cancelled[i] = d.orders, d.revenue, d.cancelled
	}
	b.Queue(`INSERT INTO `+b.Table("daily_sales")+` AS s (day, orders, revenue, cancelled)
		SELECT * FROM unnest($1::text[]::date[], $2::bigint[], $3::bigint[], $4::bigint[])
		ON CONFLICT (day) DO UPDATE SET
			orders    = s.orders + excluded.orders,
			revenue   = s.revenue + excluded.revenue,
			cancelled = s.cancelled + excluded.cancelled`, days, orders, revenue, cancelled)
	return nil
}
