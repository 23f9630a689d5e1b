package sightline

import (
	"github.com/spf13/cobra"

	"github.com/sightlinehq/sightline/projections"
)

// Option adds to what Main runs.
type Option func(*Config)

// WithProjections adds the program's own Go projections. Every command
// knows them: run applies them and serves their queries, status, rebuild,
// verify, parked and check name them.
func WithProjections(ps ...projections.Projection) Option {
	return func(c *Config) { c.Projections = append(c.Projections, ps...) }
}

func newRootCmd(opts ...Option) (*cobra.Command, *Config) {
	c := &Config{}
	for _, o := range opts {
		o(c)
	}
	root := &cobra.Command{
		Use:           "sightline",
		Version:       Version(),
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
	return root, c
}

// noArgs rejects positional arguments as a usage error.
func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}
