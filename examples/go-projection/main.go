// Command go-projection is a complete program that runs sightline with a
// read model of its own, written in Go: shipments per carrier, from the
// OrderShipped events of streams order-<id>. It is the whole of what a
// program needs: its projection, its declared queries, and sightline.Main,
// which gives it every command and flag of the sightline binary.
//
//	go run ./examples/go-projection run
//	curl -s -X POST localhost:8080/v1/streams/order-1 -d '{"type":"OrderShipped","data":{"carrier":"DHL"}}'
//	curl -si localhost:8080/v1/carriers/DHL
//
// Add --examples to run the example projections beside it, or
// --projections DIR for declarative ones.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/query"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := sightline.Main(ctx, os.Args[1:], sightline.WithProjections(Carriers{}))
	stop()
	os.Exit(code)
}

// Carriers counts the orders each carrier has shipped. It is incremental
// (shipped = shipped + 1), which is safe because sightline applies each
// stream revision once, whatever the source redelivers.
type Carriers struct{}

var _ projections.Queryable = Carriers{}

func (Carriers) Name() string     { return "carriers" }
func (Carriers) Version() int     { return 1 }
func (Carriers) Tables() []string { return []string{"carriers"} }
func (Carriers) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"order-"}}
}

// Setup creates the table in the schema of the generation being built;
// the readmodel.carriers view shows the active one.
func (Carriers) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "carriers"}.Sanitize()+` (
		carrier         text PRIMARY KEY,
		shipped         bigint NOT NULL,
		last_shipped_at timestamptz NOT NULL
	)`)
	return err
}

// Apply queues one upsert per shipment; they go to PostgreSQL with the
// checkpoint, in the batch's transaction.
func (Carriers) Apply(_ context.Context, b *projections.Batch) error {
	for _, e := range b.Events {
		if e.Type != "OrderShipped" {
			continue
		}
		var shipped struct {
			Carrier string `json:"carrier"`
		}
		if err := json.Unmarshal(e.Data, &shipped); err != nil || shipped.Carrier == "" {
			// Retrying cannot fix the event: park it, holding only its stream.
			return projections.Permanent(fmt.Errorf("OrderShipped of %s at %d: want {\"carrier\": \"...\"}, got %s", e.StreamID, e.Revision, e.Data))
		}
		b.Queue(`INSERT INTO `+b.Table("carriers")+` AS c VALUES ($1, 1, $2)
			ON CONFLICT (carrier) DO UPDATE SET shipped = c.shipped + 1, last_shipped_at = greatest(c.last_shipped_at, excluded.last_shipped_at)`,
			shipped.Carrier, e.CreatedAt)
	}
	return nil
}

// Queries are served at /v1/projections/carriers/queries/{name} and at
// their routes, with the staleness headers and read-your-writes.
func (Carriers) Queries() []query.Query {
	return []query.Query{
		{
			Name:        "by_carrier",
			Description: "One carrier's shipments.",
			Params:      []query.Param{{Name: "carrier", Type: query.Text, Required: true}},
			One:         true,
			Route:       "/v1/carriers/:carrier",
			SQL:         `SELECT carrier, shipped, last_shipped_at FROM carriers WHERE carrier = :carrier`,
		},
		{
			Name:        "busiest",
			Description: "Carriers, the busiest first.",
			PageBy:      []string{"shipped desc", "carrier"},
			Route:       "/v1/carriers",
			SQL:         `SELECT carrier, shipped, last_shipped_at FROM carriers`,
		},
	}
}
