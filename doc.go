// Package sightline runs sightline: it keeps PostgreSQL read models in
// step with an event store and serves them with their freshness.
//
// A program that brings its own projections runs the whole command line
// with them, every command and flag of the sightline binary included:
//
//	func main() {
//		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//		code := sightline.Main(ctx, os.Args[1:], sightline.WithProjections(Carriers{}))
//		stop()
//		os.Exit(code)
//	}
//
// or configures itself and calls Run, which does what `sightline run`
// does until its context ends. examples/go-projection is a complete
// program; cmd/sightline is this package's command line with nothing
// added.
//
// The package owns the command line (cmd_*.go), its configuration from
// flags, environment and YAML (config.go), and the wiring of the event
// source, the projections (package projections) and the HTTP API
// (package api) into one process (source.go, cmd_run.go). It keeps
// secrets out of what it prints: connection strings' passwords and the
// tokens are masked in every log line, error and status (internal/redact).
//
// The example projections (package readmodel) run only when asked for,
// with Config.Examples or --examples; the demo always runs them.
package sightline
