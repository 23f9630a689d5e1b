package sightline

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newMigrateCmd(c *Config) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the schema (creating the database if missing), then exit",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := openDatabase(cmd.Context(), c)
			if err != nil {
				return err
			}
			pool.Close()
			fmt.Println("schema is up to date")
			return nil
		},
	}
}
