package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/labstack/echo/v4"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
)

// handOrder is the orders row as a hand-written handler scans it.
type handOrder struct {
	ID         string    `json:"id"`
	CustomerID string    `json:"customer_id"`
	Status     string    `json:"status"`
	Total      int64     `json:"total"`
	Paid       int64     `json:"paid"`
	PlacedAt   time.Time `json:"placed_at"`
	UpdatedAt  time.Time `json:"updated_at"`
	Revision   int64     `json:"revision"`
}

// serveHandWritten serves GET /orders/:id as a team would write it by hand
// to give the declared query orders.by_id's answer: the row and whether a
// parked event holds its stream, in one round trip, scanned into a struct
// and encoded with encoding/json, with the same staleness headers. It is
// the reference the declared query is measured against. It returns the
// base URL and a func that stops it.
func serveHandWritten(pool *pgxpool.Pool, store eventstore.Store, r *projections.Runner) (string, func(), error) {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	keeper, _ := store.(eventstore.HeadKeeper)
	e.GET("/orders/:id", func(c echo.Context) error {
		id := c.Param("id")
		st := r.Status()
		if keeper != nil {
			if head, ok := keeper.KnownHead(); ok {
				st = r.StatusAt(head)
			}
		}
		h := c.Response().Header()
		h.Set(api.HeaderPosition, st.Position.String())
		h.Set(api.HeaderHead, st.Head.String())
		h.Set(api.HeaderLagMs, strconv.FormatInt(st.Lag.Milliseconds(), 10))
		h.Set(api.HeaderStatus, st.Status)
		var o handOrder
		var parked *int64
		found := true
		b := &pgx.Batch{}
		b.Queue(`SELECT id, customer_id, status, total, paid, placed_at, updated_at, revision FROM readmodel.orders WHERE id = $1`, id).
			QueryRow(func(row pgx.Row) error {
				err := row.Scan(&o.ID, &o.CustomerID, &o.Status, &o.Total, &o.Paid, &o.PlacedAt, &o.UpdatedAt, &o.Revision)
				if err == pgx.ErrNoRows {
					found = false
					return nil
				}
				return err
			})
		b.Queue(`SELECT min(id) FROM sightline.parked
			WHERE projection = 'orders' AND generation = (SELECT generation FROM sightline.projections WHERE name = 'orders')
				AND stream_id = $1 AND state IN ('parked', 'held')`, "order-"+id).
			QueryRow(func(row pgx.Row) error { return row.Scan(&parked) })
		if err := pool.SendBatch(c.Request().Context(), b).Close(); err != nil {
			return err
		}
		if parked != nil {
			h.Set(api.HeaderStreamParked, strconv.FormatInt(*parked, 10))
		}
		if !found {
			return c.JSON(http.StatusNotFound, map[string]string{"title": "Not found"})
		}
		return c.JSON(http.StatusOK, o)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	e.Listener = ln
	go e.Start("") //nolint:errcheck // ends with Shutdown
	return fmt.Sprintf("http://%s", ln.Addr()), func() { _ = e.Shutdown(context.Background()) }, nil
}

// byIDLoad is one order read by id three ways, interleaved in one load:
// the declared query, the hand-written handler, and the declared query
// asked to wait for a revision of the order that is already applied.
type byIDLoad struct {
	declared, hand, revision []time.Duration // sorted
	rate                     float64
}

// compareByID sends the three kinds of request round robin at 1 000
// requests/s in all for warmUp, then measures them for d.
func compareByID(ctx context.Context, pool *pgxpool.Pool, store eventstore.Store, r *projections.Runner, base string, d time.Duration) (byIDLoad, error) {
	rows, err := pool.Query(ctx, `SELECT id, revision FROM readmodel.orders ORDER BY id LIMIT 200`)
	if err != nil {
		return byIDLoad{}, err
	}
	type row struct {
		ID  string
		Rev int64
	}
	orders, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	if err != nil {
		return byIDLoad{}, err
	}
	if len(orders) == 0 {
		return byIDLoad{}, fmt.Errorf("no orders to read")
	}
	hand, stop, err := serveHandWritten(pool, store, r)
	if err != nil {
		return byIDLoad{}, err
	}
	defer stop()
	var targets []vegeta.Target
	for _, o := range orders {
		targets = append(targets,
			vegeta.Target{Method: http.MethodGet, URL: base + "/v1/projections/orders/queries/by_id?id=" + o.ID},
			vegeta.Target{Method: http.MethodGet, URL: hand + "/orders/" + o.ID},
			vegeta.Target{Method: http.MethodGet, URL: fmt.Sprintf("%s/v1/projections/orders/queries/by_id?id=%s&min_revision=%d", base, o.ID, o.Rev)})
	}
	attacker := vegeta.NewAttacker(vegeta.Timeout(5*time.Second), vegeta.KeepAlive(true), vegeta.Workers(32))
	var out byIDLoad
	began := time.Now()
	sent := 0
	for res := range attacker.Attack(vegeta.NewStaticTargeter(targets...), vegeta.Rate{Freq: 1000, Per: time.Second}, warmUp+d, "by id") {
		if res.Timestamp.Sub(began) < warmUp {
			continue
		}
		sent++
		if res.Code != http.StatusOK {
			return byIDLoad{}, fmt.Errorf("%s: %d %s", res.URL, res.Code, res.Error)
		}
		switch {
		case strings.HasPrefix(res.URL, hand):
			out.hand = append(out.hand, res.Latency)
		case strings.Contains(res.URL, "min_revision="):
			out.revision = append(out.revision, res.Latency)
		default:
			out.declared = append(out.declared, res.Latency)
		}
	}
	for _, ls := range [][]time.Duration{out.declared, out.hand, out.revision} {
		slices.Sort(ls)
	}
	out.rate = float64(sent) / d.Seconds()
	return out, nil
}

// addByID reports a compareByID load, with floor, PostgreSQL's bare reads
// under the same traffic, as the queries' reference.
func addByID(rep *report, l byIDLoad, f floor, under string) {
	p := func(ls []time.Duration) string { return fmt.Sprintf("%s / %s", ms(pct(ls, 0.50)), ms(pct(ls, 0.99))) }
	decl, hand, rev, bare := pct(l.declared, 0.99), pct(l.hand, 0.99), pct(l.revision, 0.99), pct(f.reads, 0.99)
	rep.add(fmt.Sprintf("one order by id, %s: the declared query orders.by_id against the same read hand-written (row and parked check in one round trip, encoding/json, the same headers), interleaved with the next row's at %.0f requests/s in all for the three, %d each (p50 / p99)", under, l.rate, len(l.declared)),
		p(l.declared), p(l.hand), fmt.Sprintf("p99 %.2f×", float64(decl)/float64(hand)), "p99 ≤ 1.1× hand-written", float64(decl) <= 1.1*float64(hand))
	rep.add(fmt.Sprintf("one order by id, %s: with Projection-Min-Revision of a revision already applied, against the same without (p50 / p99)", under),
		p(l.revision), p(l.declared), fmt.Sprintf("adds %s at p99", ms(rev-decl)), "adds ≤ 1 ms at p99", rev-decl <= time.Millisecond)
	rep.add(fmt.Sprintf("one order by id, %s: the declared and hand-written queries' p99 against PostgreSQL's bare primary-key read at 1000/s from the bench's pool right after, under the same conditions (p99; CPU of that read: %s)", under, f.cpu),
		fmt.Sprintf("%s / %s", ms(decl), ms(hand)), ms(bare), fmt.Sprintf("%.1f× / %.1f×", float64(decl)/float64(bare), float64(hand)/float64(bare)), "", true)
}
