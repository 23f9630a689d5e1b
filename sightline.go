package sightline

import (
	"context"
)

// Run does what `sightline run` does, for a program that fills cfg
// itself: it creates the database if missing and migrates it, checks the
// projections (refusing to start, with every problem named, if one is
// wrong), applies them from cfg.Source and serves the HTTP API on
// cfg.HTTPAddr until ctx ends; then it lets the requests and the batch in
// flight finish, within a grace period, and returns. Fields left zero take
// their defaults (see Config).
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.complete(); err != nil {
		return err
	}
	return serve(ctx, &cfg, nil)
}
