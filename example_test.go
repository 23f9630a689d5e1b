package sightline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/sightlinehq/sightline"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/query"
)

// exampleDB is the database the examples run on: sightline_example, on
// the server of TEST_DATABASE_URL if it is set.
var exampleDB = func() string {
	u, err := url.Parse(os.Getenv("TEST_DATABASE_URL"))
	if err != nil || u.Host == "" {
		u, _ = url.Parse("postgres://postgres@127.0.0.1:5432/?sslmode=disable")
	}
	u.Path = "/sightline_example"
	return u.String()
}()

// Signups counts sign-ups per day from the streams user-<id>.
type Signups struct{}

func (Signups) Name() string     { return "signups" }
func (Signups) Version() int     { return 1 }
func (Signups) Tables() []string { return []string{"signups"} }
func (Signups) Filter() eventstore.Filter {
	return eventstore.Filter{StreamPrefixes: []string{"user-"}}
}
func (Signups) Setup(ctx context.Context, tx pgx.Tx, schema string) error {
	_, err := tx.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "signups"}.Sanitize()+` (day date PRIMARY KEY, users bigint NOT NULL)`)
	return err
}
func (Signups) Apply(_ context.Context, b *projections.Batch) error {
	for _, e := range b.Events {
		if e.Type == "UserSignedUp" {
			b.Queue(`INSERT INTO `+b.Table("signups")+` AS s VALUES (($1::timestamptz AT TIME ZONE 'UTC')::date, 1)
				ON CONFLICT (day) DO UPDATE SET users = s.users + 1`, e.CreatedAt)
		}
	}
	return nil
}
func (Signups) Queries() []query.Query {
	return []query.Query{{Name: "days", PageBy: []string{"day desc"}, Route: "/v1/signups", SQL: `SELECT day, users FROM signups`}}
}

// A program that configures itself runs sightline with Run, until its
// context ends.
func ExampleRun() {
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- sightline.Run(ctx, sightline.Config{
			DatabaseURL: exampleDB,
			HTTPAddr:    "127.0.0.1:18089",
			Projections: []projections.Projection{Signups{}},
			Logger:      slog.New(slog.DiscardHandler),
		})
	}()

	// Every read says how fresh it is.
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://127.0.0.1:18089/v1/projections/signups")
		if err != nil {
			continue
		}
		var st struct {
			Name   string `json:"name"`
			Status string `json:"status"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err == nil && st.Status == projections.StatusLive {
			fmt.Println(st.Name, st.Status)
			break
		}
	}
	stop()
	fmt.Println("stopped:", <-done)
	// Output:
	// signups live
	// stopped: <nil>
}

// A program runs sightline's command line with its own projections: every
// command (run, check, status, rebuild, verify, parked) and flag of the
// sightline binary then knows them.
func ExampleMain() {
	// In a program's main: os.Exit(sightline.Main(ctx, os.Args[1:], ...)).
	code := sightline.Main(context.Background(), []string{"check", "--database-url", exampleDB, "--log-level", "error"},
		sightline.WithProjections(Signups{}))
	fmt.Println("exit", code)
	// Output:
	// ok: 1 projection (signups), 1 query
	//   GET /v1/projections/signups/queries/days (also /v1/signups)
	// exit 0
}
