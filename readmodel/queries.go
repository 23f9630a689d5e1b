package readmodel

import (
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/query"
)

// The example read models' queries, declared as any projection declares
// its own: the API serves each at /v1/projections/{name}/queries/{query},
// and at the route it gives.

var (
	_ projections.Queryable = Orders{}
	_ projections.Queryable = CustomerStats{}
	_ projections.Queryable = DailySales{}
)

// Queries: one order by id, and orders by id with optional filters.
func (Orders) Queries() []query.Query {
	return []query.Query{
		{
			Name:        "by_id",
			Description: "One order and its processing state.",
			Params:      []query.Param{{Name: "id", Type: query.Text, Required: true, Description: "The order's id: its stream without " + OrderStreamPrefix + "."}},
			Stream:      "'" + OrderStreamPrefix + "' || :id",
			One:         true,
			Route:       "/v1/orders/:id",
			SQL:         `SELECT id, customer_id, status, total, paid, placed_at, updated_at, revision FROM orders WHERE id = :id`,
		},
		{
			Name:        "list",
			Description: "Orders by id, optionally of one status or one customer.",
			Params: []query.Param{
				{Name: "status", Type: query.Text, Enum: []string{StatusPlaced, StatusPaid, StatusShipped, StatusDelivered, StatusCancelled}},
				{Name: "customer_id", Type: query.Text},
			},
			PageBy: []string{"id"},
			Route:  "/v1/orders",
			// The filters a request leaves out are NULL. PostgreSQL plans
			// each request's values (custom plans stay cheaper than a generic
			// one here), so a filter given reads the (status, id) or
			// (customer_id, id) index from the cursor on.
			SQL: `SELECT id, customer_id, status, total, paid, placed_at, updated_at, revision FROM orders
				WHERE (:status::text IS NULL OR status = :status) AND (:customer_id::text IS NULL OR customer_id = :customer_id)`,
		},
	}
}

// Queries: one customer's totals.
func (CustomerStats) Queries() []query.Query {
	return []query.Query{{
		Name:        "by_customer",
		Description: "One customer's orders, lifetime total and cancellations.",
		Params:      []query.Param{{Name: "id", Type: query.Text, Required: true, Description: "The customer's id."}},
		One:         true,
		Route:       "/v1/customers/:id/stats",
		SQL:         `SELECT customer_id, orders, lifetime_total, cancelled FROM customer_stats WHERE customer_id = :id`,
	}}
}

// Queries: sales per UTC day over a range.
func (DailySales) Queries() []query.Query {
	return []query.Query{{
		Name:        "days",
		Description: "Sales per UTC day, from the first day to the last (by default the 30 days up to today).",
		Params: []query.Param{
			{Name: "from", Type: query.Date, Description: "The first day; by default 30 days before to."},
			{Name: "to", Type: query.Date, Description: "The last day; by default today (UTC)."},
		},
		PageBy: []string{"day"},
		Route:  "/v1/sales/daily",
		SQL: `SELECT day, orders, revenue, cancelled FROM daily_sales
			WHERE day BETWEEN coalesce(:from, coalesce(:to, (now() AT TIME ZONE 'UTC')::date) - 30) AND coalesce(:to, (now() AT TIME ZONE 'UTC')::date)`,
	}}
}
