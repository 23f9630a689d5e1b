// Command sightline keeps PostgreSQL read models in step with an event
// store and serves them with their freshness. See README.md.
//
// It is the sightline package's command line with nothing added: a
// program that brings its own Go projections runs sightline.Main the same
// way (see examples/go-projection).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sightlinehq/sightline"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := sightline.Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
