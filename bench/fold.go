package main

import (
	"time"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/readmodel"
)

// fold computes an example projection's final rows in memory, the way its
// Apply does over the whole history.
type fold interface {
	add(e eventstore.RecordedEvent) error
	// rows returns the table, its columns and its rows.
	rows() (string, []string, [][]any)
}

func newFold(projection string) fold {
	switch projection {
	case "orders":
		return &ordersFold{orders: map[string]*orderRow{}}
	case "customer_stats":
		return &customersFold{customerOf: map[string]string{}, stats: map[string]*[3]int64{}}
	default:
		return &dailyFold{days: map[time.Time]*[3]int64{}}
	}
}

type orderRow struct {
	customer  *string
	status    string
	total     int64
	paid      int64
	placedAt  *time.Time
	updatedAt time.Time
	revision  int64
}

type ordersFold struct {
	orders map[string]*orderRow
	ids    []string
}

func (f *ordersFold) add(e eventstore.RecordedEvent) error {
	status, ok := readmodel.OrderStatusOf(e.Type)
	if !ok {
		return nil
	}
	id := readmodel.OrderID(e.StreamID)
	o := f.orders[id]
	if o == nil {
		o = &orderRow{}
		f.orders[id] = o
		f.ids = append(f.ids, id)
	}
	switch e.Type {
	case readmodel.TypeOrderPlaced:
		v, err := readmodel.DecodeOrderPlaced(e)
		if err != nil {
			return err
		}
		at := e.CreatedAt
		o.customer, o.total, o.placedAt = &v.CustomerID, v.Total, &at
	case readmodel.TypeOrderPaid:
		v, err := readmodel.DecodeOrderPaid(e)
		if err != nil {
			return err
		}
		o.paid += v.Amount
	default:
		if err := readmodel.CheckOther(e); err != nil {
			return err
		}
	}
	o.status = readmodel.LaterStatus(o.status, status)
	if e.CreatedAt.After(o.updatedAt) {
		o.updatedAt = e.CreatedAt
	}
	o.revision = max(o.revision, int64(e.Revision))
	return nil
}

func (f *ordersFold) rows() (string, []string, [][]any) {
	out := make([][]any, 0, len(f.ids))
	for _, id := range f.ids {
		o := f.orders[id]
		out = append(out, []any{id, o.customer, o.status, o.total, o.paid, o.placedAt, o.updatedAt, o.revision})
	}
	return "orders", []string{"id", "customer_id", "status", "total", "paid", "placed_at", "updated_at", "revision"}, out
}

type customersFold struct {
	customerOf map[string]string
	stats      map[string]*[3]int64 // orders, lifetime total, cancelled
	ids        []string
}

func (f *customersFold) stat(customer string) *[3]int64 {
	s := f.stats[customer]
	if s == nil {
		s = &[3]int64{}
		f.stats[customer] = s
		f.ids = append(f.ids, customer)
	}
	return s
}

func (f *customersFold) add(e eventstore.RecordedEvent) error {
	id := readmodel.OrderID(e.StreamID)
	switch e.Type {
	case readmodel.TypeOrderPlaced:
		v, err := readmodel.DecodeOrderPlaced(e)
		if err != nil {
			return err
		}
		f.customerOf[id] = v.CustomerID
		f.stat(v.CustomerID)[0]++
	case readmodel.TypeOrderPaid:
		v, err := readmodel.DecodeOrderPaid(e)
		if err != nil {
			return err
		}
		f.stat(f.customerOf[id])[1] += v.Amount
	case readmodel.TypeOrderCancelled:
		if err := readmodel.CheckOther(e); err != nil {
			return err
		}
		f.stat(f.customerOf[id])[2]++
	}
	return nil
}

func (f *customersFold) rows() (string, []string, [][]any) {
	out := make([][]any, 0, len(f.ids))
	for _, c := range f.ids {
		s := f.stats[c]
		out = append(out, []any{c, s[0], s[1], s[2]})
	}
	return "customer_stats", []string{"customer_id", "orders", "lifetime_total", "cancelled"}, out
}

type dailyFold struct {
	days  map[time.Time]*[3]int64 // orders, revenue, cancelled
	order []time.Time
}

func (f *dailyFold) add(e eventstore.RecordedEvent) error {
	t := e.CreatedAt.UTC()
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	d := f.days[day]
	if d == nil {
		d = &[3]int64{}
		f.days[day] = d
		f.order = append(f.order, day)
	}
	switch e.Type {
	case readmodel.TypeOrderPlaced:
		if _, err := readmodel.DecodeOrderPlaced(e); err != nil {
			return err
		}
		d[0]++
	case readmodel.TypeOrderPaid:
		v, err := readmodel.DecodeOrderPaid(e)
		if err != nil {
			return err
		}
		d[1] += v.Amount
	case readmodel.TypeOrderCancelled:
		if err := readmodel.CheckOther(e); err != nil {
			return err
		}
		d[2]++
	}
	return nil
}

func (f *dailyFold) rows() (string, []string, [][]any) {
	out := make([][]any, 0, len(f.order))
	for _, day := range f.order {
		d := f.days[day]
		out = append(out, []any{day, d[0], d[1], d[2]})
	}
	return "daily_sales", []string{"day", "orders", "revenue", "cancelled"}, out
}
