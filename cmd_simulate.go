package sightline

import (
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightlinehq/sightline/internal/simulate"
)

func newSimulateCmd(c *Config) *cobra.Command {
	var sim simulate.Config
	cmd := &cobra.Command{
		Use:   "simulate",
		Short: "Append realistic order traffic to the configured source, then exit",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sim.Validate(); err != nil {
				return usageError{err}
			}
			if sim.Seed == 0 {
				sim.Seed = uint64(time.Now().UnixNano())
			}
			a, err := openApp(cmd.Context(), c)
			if err != nil {
				return err
			}
			defer a.Close()
			var done atomic.Int64
			sim.Progress = func(n int64) { done.Store(n) }
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				t := time.NewTicker(time.Second)
				defer t.Stop()
				for {
					select {
					case <-t.C:
						c.logger.Info("simulating", "events", done.Load())
					case <-stop:
						return
					}
				}
			}()
			res, err := simulate.Run(cmd.Context(), a.store, sim)
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stdout, "appended %s events for %s orders in %s (%.0f events/s), seed %d\n",
				fmtCount(res.Events), fmtCount(int64(res.Orders)), res.Elapsed.Round(time.Millisecond),
				float64(res.Events)/res.Elapsed.Seconds(), sim.Seed)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&sim.Orders, "orders", simulate.OrdersDefault, "orders to create")
	f.IntVar(&sim.Customers, "customers", simulate.CustomersDefault, "customers placing them")
	f.Float64Var(&sim.Rate, "rate", 0, "events per second over all writers (0: as fast as possible)")
	f.IntVar(&sim.Writers, "writers", simulate.WritersDefault, "concurrent writers")
	f.Uint64Var(&sim.Seed, "seed", 0, "seed; the same seed writes the same events, so repeating a run writes nothing new (0: a new seed)")
	return cmd
}
