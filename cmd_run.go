package sightline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/internal/redact"
	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/projections"
)

// Grace periods of a stop: the batch in flight and the requests in flight
// may finish within them; past them they are abandoned (a batch rolls back
// whole).
const (
	stopProjectorsGrace = 10 * time.Second
	stopAPIGrace        = 5 * time.Second
)

func newRunCmd(c *Config, demo bool) *cobra.Command {
	sim := simulate.Config{Orders: 100_000, Customers: 500, Rate: 200, Writers: 4}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Migrate, then run the projections and the HTTP API until SIGINT or SIGTERM",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !demo {
				return serve(cmd.Context(), c, nil)
			}
			c.Examples = true
			return serve(cmd.Context(), c, &sim)
		},
	}
	cmd.Flags().Bool("insecure", false, "allow listening beyond loopback without an API token")
	if demo {
		cmd.Use = "demo"
		cmd.Short = "Run with the example projections on the embedded store, plus simulated order traffic"
		cmd.Flags().IntVar(&sim.Orders, "orders", sim.Orders, "orders to simulate")
		cmd.Flags().Float64Var(&sim.Rate, "rate", sim.Rate, "simulated events per second (0: as fast as possible)")
		cmd.Flags().Uint64Var(&sim.Seed, "seed", 0, "traffic seed (0: a new one each run)")
	}
	return cmd
}

// serve runs the projections and the API until ctx ends; with sim, it also
// simulates traffic.
func serve(ctx context.Context, c *Config, sim *simulate.Config) error {
	if err := c.checkListen(); err != nil {
		return err
	}
	ps, err := c.projections()
	if err != nil {
		return err
	}
	if len(ps) == 0 {
		return usagef("no projections to run: add your own (--projections DIR of *.yaml, or a Go program with sightline.WithProjections), or pass --examples for the example ones")
	}
	a, err := openApp(ctx, c)
	if err != nil {
		return err
	}
	defer a.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Checked before anything is created: a bad projection file or query
	// stops the start, with every problem named.
	queries, err := projections.Check(ctx, a.pool, ps)
	if err != nil {
		return fmt.Errorf("refusing to start; the projections have problems (sightline check lists them):\n%w", err)
	}
	daemon, err := projections.NewDaemon(a.pool, a.store, ps, c.projectorConfig(projections.NewMetrics(reg), a.sourceName))
	if err != nil {
		return err
	}
	if c.Role == RoleProject {
		queries = nil // another process serves them
	}
	srv, err := api.New(api.Config{Addr: c.HTTPAddr, Pool: a.pool, Store: a.store, Token: c.APIToken, ReadToken: c.ReadToken, Daemon: daemon,
		SourceReady: a.store.Connected, Gatherer: reg, Registerer: reg, Logger: c.logger, Queries: queries, QueryTimeout: c.QueryTimeout,
		Limits: c.HTTP, ReadyMaxLag: c.ReadyMaxLag, Version: Version()})
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := srv.Listen(); err != nil {
		return fmt.Errorf("listen on %s: %w", c.HTTPAddr, err)
	}
	if err := daemon.Start(ctx); err != nil {
		if ctx.Err() != nil { // stopped (SIGTERM) while starting: what was cut short is no failure
			c.logger.Info("stopped while starting", "error", err)
			return nil
		}
		return err
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve() }()
	c.logger.Info("sightline running", "http", "http://"+srv.Addr(), "source", c.sourceForLogs(), "process", c.processID, "role", c.Role)

	simDone := make(chan error, 1)
	if sim != nil {
		if sim.Seed == 0 {
			sim.Seed = uint64(time.Now().UnixNano())
		}
		printDemo(srv.Addr(), redact.URL(c.DatabaseURL), *sim)
		go func() {
			_, err := simulate.Run(ctx, a.store, *sim)
			if err == nil {
				c.logger.Info("simulated traffic finished; still serving")
			}
			simDone <- err
		}()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-serveErr:
	case err := <-simDone:
		if err != nil && ctx.Err() == nil {
			runErr = err
		} else if ctx.Err() == nil {
			<-ctx.Done()
		}
	}
	c.logger.Info("stopping")
	apiCtx, cancel := context.WithTimeout(context.Background(), stopAPIGrace)
	defer cancel()
	runErr = errors.Join(runErr, srv.Shutdown(apiCtx))
	stopCtx, cancel2 := context.WithTimeout(context.Background(), stopProjectorsGrace)
	defer cancel2()
	if err := daemon.Stop(stopCtx); err != nil {
		c.logger.Warn("projectors did not finish their batches in time; the batches rolled back", "error", err)
	}
	return runErr
}

func printDemo(addr, dbURL string, sim simulate.Config) {
	fmt.Fprintf(os.Stderr, `
sightline demo: %d orders at %.0f events/s into the embedded store, projected live.

  The console:          http://%[3]s/ui/
  Projections and lag:  curl -s http://%[3]s/v1/projections
  The same, live:       curl -sN http://%[3]s/v1/projections/events
  A read model, fresh:  curl -si 'http://%[3]s/v1/orders?status=paid&limit=3'
  Every route:          curl -s http://%[3]s/openapi.json
  Metrics:              curl -s http://%[3]s/metrics | grep ^sightline_
  Read models in SQL:   psql '%[4]s' \
                          -c 'SELECT * FROM readmodel.projection_status' \
                          -c 'SELECT status, count(*) FROM readmodel.orders GROUP BY 1' \
                          -c 'SELECT * FROM readmodel.daily_sales'
  From another shell:   sightline status

Ctrl-C stops it.

`, sim.Orders, sim.Rate, addr, dbURL)
}
