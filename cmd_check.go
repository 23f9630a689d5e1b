package sightline

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"github.com/sightlinehq/sightline/internal/migrate"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/query"
)

func newCheckCmd(c *Config) *cobra.Command {
	return &cobra.Command{
		Use:   "check [DIR]",
		Short: "Check projection files and their queries against the database, changing nothing; exit 1 naming each problem",
		Long: `check loads the declarative projections (*.yaml) of DIR (with the examples if --examples),
or without DIR every projection 'sightline run' would run, and checks them against the configured database in a
transaction it rolls back: each projection's tables are created in a scratch schema, its
handlers and declared queries prepared against them, and each query run once on no rows,
read-only. It creates the database if it is missing, and nothing in it. It prints every problem with its file, query and PostgreSQL's reason.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ps []projections.Projection
			var err error
			if len(args) == 1 {
				c.ProjectionDir = args[0] // what run --projections DIR would run (with the examples if --examples)
			}
			ps, err = c.projections()
			if err != nil {
				return exitError{code: exitFailure, msg: err.Error()}
			}
			if len(ps) == 0 {
				return usagef("no projections to check: give DIR, or --projections DIR, or --examples")
			}
			if err := migrate.EnsureDatabase(cmd.Context(), c.DatabaseURL); err != nil { // as every command does
				return err
			}
			pool, err := connect(cmd.Context(), c.DatabaseURL)
			if err != nil {
				return err
			}
			defer pool.Close()
			qs, err := projections.Check(cmd.Context(), pool, ps)
			var problems projections.Problems
			if errors.As(err, &problems) {
				for _, p := range problems {
					fmt.Fprintln(cmd.OutOrStdout(), p)
				}
				return exitError{code: exitFailure, msg: fmt.Sprintf("%d problem(s) in %s", len(problems), describe(ps))}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s, %d %s\n", describe(ps), len(qs), plural(len(qs), "query", "queries"))
			for _, q := range qs {
				fmt.Fprintf(cmd.OutOrStdout(), "  GET /v1/projections/%s/queries/%s%s\n", q.Projection, q.Name, routeNote(q))
			}
			return nil
		},
	}
}

func routeNote(q *query.Prepared) string {
	if q.Route == "" {
		return ""
	}
	return " (also " + q.Route + ")"
}

func describe(ps []projections.Projection) string {
	names := make([]string, len(ps))
	for i, p := range ps {
		names[i] = p.Name()
	}
	return fmt.Sprintf("%d %s (%s)", len(ps), plural(len(ps), "projection", "projections"), strings.Join(names, ", "))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// connect opens the database as it is: check creates nothing, not even
// the database.
func connect(ctx context.Context, databaseURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, usagef("database url: %v", err)
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err == nil {
		err = pool.Ping(ctx)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		return nil, migrate.Unreachable((*pgx.ConnConfig)(cfg.ConnConfig), err)
	}
	return pool, nil
}
