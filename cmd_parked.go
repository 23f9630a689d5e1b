package sightline

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/projections"
)

func newParkedCmd(c *Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "parked",
		Short: "List, retry and skip parked events (dead letters); safe while 'sightline run' runs",
		Long: `An event whose handler fails its last attempt is parked, and the later events
of its stream are held behind it; every other stream goes on. 'retry' applies
the parked event again and then those held behind it, in order; 'skip' marks
it skipped and applies the held ones. Both work on the database directly, with
or without a running projector, and both are idempotent.`,
	}
	cmd.AddCommand(newParkedListCmd(c), newParkedReleaseCmd(c, "retry"), newParkedReleaseCmd(c, "skip"))
	return cmd
}

func newParkedListCmd(c *Config) *cobra.Command {
	var opts projections.ListOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List parked events and those held behind them",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := openDatabase(cmd.Context(), c)
			if err != nil {
				return err
			}
			defer pool.Close()
			list, err := projections.ListParked(cmd.Context(), pool, opts)
			if err != nil {
				return err
			}
			if asJSON {
				out := make([]api.ParkedEvent, 0, len(list))
				for _, p := range list {
					out = append(out, api.ParkedJSON(p))
				}
				return printJSON(map[string]any{"parked": out})
			}
			if len(list) == 0 {
				fmt.Println("no parked events")
				return nil
			}
			return printParked(os.Stdout, list)
		},
	}
	cmd.Flags().StringVar(&opts.Projection, "projection", "", "only this projection's")
	cmd.Flags().BoolVar(&opts.All, "all", false, "include events already applied or skipped")
	cmd.Flags().IntVar(&opts.Limit, "limit", 100, "at most this many")
	cmd.Flags().Int64Var(&opts.AfterID, "after", 0, "only ids above this one (paging)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, with each event's data")
	return cmd
}

func printParked(out io.Writer, list []projections.ParkedEvent) error {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tPROJECTION\tSTREAM\tREVISION\tTYPE\tSTATE\tATTEMPTS\tPARKED\tERROR")
	for _, p := range list {
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%s\t%s\t%d\t%s ago\t%s\n", p.ID, p.Projection, p.Event.StreamID, p.Event.Revision,
			p.Event.Type, p.State, p.Attempts, time.Since(p.ParkedAt).Round(time.Second), oneLine(p.Error, 120))
	}
	return w.Flush()
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		return s[:max-1] + "…"
	}
	return s
}

// newParkedReleaseCmd is "parked retry ID" or "parked skip ID".
func newParkedReleaseCmd(c *Config, action string) *cobra.Command {
	short := "Apply a parked event again, then the events held behind it, in order"
	do := projections.RetryParked
	if action == "skip" {
		short = "Mark a parked event skipped (never applied) and apply the events held behind it"
		do = projections.SkipParked
	}
	return &cobra.Command{
		Use:   action + " ID",
		Short: short,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("%s needs the id of one parked event (see 'sightline parked list')", action)
			}
			if id, err := strconv.ParseInt(args[0], 10, 64); err != nil || id < 1 {
				return usagef("%q is not the id of a parked event", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			id, _ := strconv.ParseInt(args[0], 10, 64)
			ps, err := c.projections()
			if err != nil {
				return err
			}
			pool, err := openDatabase(cmd.Context(), c)
			if err != nil {
				return err
			}
			defer pool.Close()
			target, err := projections.GetParked(cmd.Context(), pool, id)
			if err != nil {
				return err
			}
			var p projections.Projection
			for _, candidate := range ps {
				if candidate.Name() == target.Projection {
					p = candidate
				}
			}
			if p == nil {
				return fmt.Errorf("parked event %d belongs to projection %s, which this configuration does not run (see --projections and --examples)", id, target.Projection)
			}
			rel, err := do(cmd.Context(), pool, p, id)
			if errors.Is(err, projections.ErrParkedHeld) || errors.Is(err, projections.ErrParkedResolved) {
				return exitError{code: exitFailure, msg: err.Error()}
			}
			if err != nil {
				return err
			}
			e := rel.Event
			switch {
			case rel.Skipped:
				fmt.Printf("skipped %d (%s revision %d, %s)\n", e.ID, e.Event.StreamID, e.Event.Revision, e.Event.Type)
			case len(rel.Applied) == 0 && rel.Parked == nil:
				fmt.Printf("%d was already %s: nothing to do\n", e.ID, e.State)
			}
			if len(rel.Applied) > 0 {
				fmt.Printf("applied %d event(s) of %s to %s, through revision %d\n", len(rel.Applied), e.Event.StreamID, p.Name(),
					rel.Applied[len(rel.Applied)-1].Revision)
			}
			still := rel.Parked
			switch {
			case still == nil:
				return nil
			case still.ID == id: // the event asked about failed again, as the API's 422
				return exitError{code: exitFailure, msg: fmt.Sprintf("parked event %d (%s revision %d) failed again (attempt %d) and holds its stream: %s",
					still.ID, still.Event.StreamID, still.Event.Revision, still.Attempts, still.Error)}
			}
			// Done as asked; a later event of the stream holds it now.
			fmt.Fprintf(os.Stderr, "sightline: %s is held again, by parked event %d (revision %d, attempt %d): %s\n",
				still.Event.StreamID, still.ID, still.Event.Revision, still.Attempts, still.Error)
			return nil
		},
	}
}
