package main

import (
	"github.com/spf13/cobra"
)

func newRootCmd() *cobra.Command {
	c := &config{}
	root := &cobra.Command{
		Use:           "sightline",
		Short:         "Keep PostgreSQL read models in step with an event store, and say how fresh they are",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return c.load(cmd)
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	c.bind(root.PersistentFlags())
	root.AddCommand(newRunCmd(c, false), newRunCmd(c, true), newSimulateCmd(c), newMigrateCmd(c), newStatusCmd(c), newParkedCmd(c),
		newRebuildCmd(c), newVerifyCmd(c), newCheckCmd(c))
	return root
}

// noArgs rejects positional arguments as a usage error.
func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}
