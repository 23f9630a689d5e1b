package sightline

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/sightlinehq/sightline/internal/migrate"
)

func newMigrateCmd(c *Config) *cobra.Command {
	downTo := -1
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the schema (creating the database if missing), then exit",
		Long: `migrate creates the database if it is missing and applies the migrations it lacks.

With --down-to N it rolls back, newest first, each applied migration above N instead,
to step back to an older sightline: what those migrations created is dropped, with its
data (below 2 the projections' bookkeeping, below 1 the embedded store's events). Stop
every sightline process on the database first.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if downTo >= 0 {
				if err := migrate.EnsureDatabase(cmd.Context(), c.DatabaseURL); err != nil {
					return err
				}
				pool, err := connect(cmd.Context(), c.DatabaseURL)
				if err != nil {
					return err
				}
				defer pool.Close()
				if err := migrate.Down(cmd.Context(), pool, downTo, c.logger); err != nil {
					return err
				}
				fmt.Printf("schema rolled back to migration %d\n", downTo)
				return nil
			}
			pool, err := openDatabase(cmd.Context(), c)
			if err != nil {
				return err
			}
			pool.Close()
			fmt.Println("schema is up to date")
			return nil
		},
	}
	cmd.Flags().IntVar(&downTo, "down-to", -1, "roll the migrations above this version back (0: all of them), dropping what they hold")
	return cmd
}
