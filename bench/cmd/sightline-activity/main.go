// Command sightline-activity is the sightline binary with one projection
// of its own, goactivity.OrderActivity (order_activity_go), as
// examples/go-projection is: the bench rebuilds it, and the YAML
// order_activity, with this program, by the same engine path.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sightlinehq/sightline"
	"github.com/sightlinehq/sightline/bench/goactivity"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := sightline.Main(ctx, os.Args[1:], sightline.WithProjections(goactivity.OrderActivity{}))
	stop()
	os.Exit(code)
}
