package api

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"

	"github.com/sightlinehq/sightline/readmodel"
)

// Order is an order as GET /v1/orders returns it.
type Order struct {
	ID         string     `json:"id"`
	CustomerID *string    `json:"customer_id"`
	Status     string     `json:"status"`
	Total      int64      `json:"total"`
	Paid       int64      `json:"paid"`
	PlacedAt   *time.Time `json:"placed_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	Revision   int64      `json:"revision"`
}

const orderColumns = `id, customer_id, status, total, paid, placed_at, updated_at, revision`

// Page sizes of GET /v1/orders.
const (
	LimitDefault = 50
	LimitMax     = 500
)

var orderStatuses = map[string]bool{
	readmodel.StatusPlaced: true, readmodel.StatusPaid: true, readmodel.StatusShipped: true,
	readmodel.StatusDelivered: true, readmodel.StatusCancelled: true,
}

// getOrder reads the order and whether a parked event holds its stream in
// one round trip.
func (s *Server) getOrder(c echo.Context) error {
	b := &pgx.Batch{}
	held := queueHeld(c, b)
	var o Order
	found := false
	b.Queue(`SELECT `+orderColumns+` FROM readmodel.orders WHERE id = $1`, c.Param("id")).Query(func(rows pgx.Rows) error {
		var err error
		o, err = pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[Order])
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		found = err == nil
		return err
	})
	if err := s.cfg.Pool.SendBatch(c.Request().Context(), b).Close(); err != nil {
		return err
	}
	if err := held.answer(c); err != nil {
		return err
	}
	if !found {
		return problem(c, http.StatusNotFound, "Order not found", "no order "+c.Param("id")+" in the read model (yet: see "+HeaderMinPosition+")")
	}
	return c.JSON(http.StatusOK, o)
}

// listOrders pages through orders by id: cursor is the opaque next_cursor
// of the previous page.
func (s *Server) listOrders(c echo.Context) error {
	status, customer := c.QueryParam("status"), c.QueryParam("customer_id")
	if status != "" && !orderStatuses[status] {
		return problem(c, http.StatusBadRequest, "Bad filter", "status must be placed, paid, shipped, delivered or cancelled")
	}
	if len(customer) > 200 {
		return problem(c, http.StatusBadRequest, "Bad filter", "customer_id is longer than 200 characters")
	}
	limit := LimitDefault
	if v := c.QueryParam("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > LimitMax {
			return problem(c, http.StatusBadRequest, "Bad limit", "limit must be a whole number from 1 to 500")
		}
		limit = n
	}
	after := ""
	if v := c.QueryParam("cursor"); v != "" {
		b, err := base64.RawURLEncoding.DecodeString(v)
		if err != nil || len(b) == 0 {
			return problem(c, http.StatusBadRequest, "Bad cursor", "cursor is not one this API returned")
		}
		after = string(b)
	}
	// Only the filters given, so that the plan (which pgx prepares once per
	// statement and connection) reads the (status, id) or (customer_id, id)
	// index from the cursor on, rather than walking every order by id and
	// testing each one, which gets slower with the table.
	where, args := []string{"id > $1"}, []any{after}
	if status != "" {
		args = append(args, status)
		where = append(where, fmt.Sprintf("status = $%d", len(args)))
	}
	if customer != "" {
		args = append(args, customer)
		where = append(where, fmt.Sprintf("customer_id = $%d", len(args)))
	}
	args = append(args, limit+1)
	rows, err := s.cfg.Pool.Query(c.Request().Context(), fmt.Sprintf(`SELECT `+orderColumns+` FROM readmodel.orders
		WHERE %s ORDER BY id LIMIT $%d`, strings.Join(where, " AND "), len(args)), args...)
	if err != nil {
		return err
	}
	orders, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Order])
	if err != nil {
		return err
	}
	page := map[string]any{"orders": orders}
	if len(orders) > limit {
		orders = orders[:limit]
		page["orders"] = orders
		page["next_cursor"] = base64.RawURLEncoding.EncodeToString([]byte(orders[limit-1].ID))
	}
	return c.JSON(http.StatusOK, page)
}

// CustomerStats is GET /v1/customers/{id}/stats.
type CustomerStats struct {
	CustomerID    string `json:"customer_id"`
	Orders        int64  `json:"orders"`
	LifetimeTotal int64  `json:"lifetime_total"`
	Cancelled     int64  `json:"cancelled"`
}

func (s *Server) customerStats(c echo.Context) error {
	rows, err := s.cfg.Pool.Query(c.Request().Context(), `SELECT customer_id, orders, lifetime_total, cancelled
		FROM readmodel.customer_stats WHERE customer_id = $1`, c.Param("id"))
	if err != nil {
		return err
	}
	st, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[CustomerStats])
	if errors.Is(err, pgx.ErrNoRows) {
		return problem(c, http.StatusNotFound, "Customer not found", "no orders of customer "+c.Param("id")+" in the read model")
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, st)
}

// DailySales is one day of GET /v1/sales/daily.
type DailySales struct {
	Day       string `json:"day"`
	Orders    int64  `json:"orders"`
	Revenue   int64  `json:"revenue"`
	Cancelled int64  `json:"cancelled"`
}

// MaxSalesDays bounds the range of GET /v1/sales/daily.
const MaxSalesDays = 366

func (s *Server) dailySales(c echo.Context) error {
	day := func(name string, def time.Time) (time.Time, error) {
		v := c.QueryParam(name)
		if v == "" {
			return def, nil
		}
		t, err := time.Parse(time.DateOnly, v)
		if err != nil {
			return t, &Problem{Status: http.StatusBadRequest, Title: "Bad date", Detail: name + " must be a date as YYYY-MM-DD"}
		}
		return t, nil
	}
	today := time.Now().UTC().Truncate(24 * time.Hour)
	to, err := day("to", today)
	if err != nil {
		return err
	}
	from, err := day("from", to.AddDate(0, 0, -30))
	if err != nil {
		return err
	}
	if to.Before(from) || to.Sub(from) >= MaxSalesDays*24*time.Hour {
		return problem(c, http.StatusBadRequest, "Bad range", "from must not be after to, and the range at most 366 days")
	}
	rows, err := s.cfg.Pool.Query(c.Request().Context(), `SELECT to_char(day, 'YYYY-MM-DD'), orders, revenue, cancelled
		FROM readmodel.daily_sales WHERE day BETWEEN $1::date AND $2::date ORDER BY day`, from.Format(time.DateOnly), to.Format(time.DateOnly))
	if err != nil {
		return err
	}
	days, err := pgx.CollectRows(rows, pgx.RowToStructByPos[DailySales])
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"from": from.Format(time.DateOnly), "to": to.Format(time.DateOnly), "days": days})
}
