package sightline

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/sightlinehq/sightline/projections"
)

func newRebuildCmd(c *Config) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "rebuild NAME",
		Short: "Rebuild a projection blue/green: replay into new tables while the active ones serve, then swap",
		Long: `A rebuild replays the store from the start into a new generation of the
projection's tables while the active generation keeps serving (and keeps
projecting live). Once caught up, the new generation takes over in one
transaction: readmodel.* and the API switch together. The replaced tables
are dropped after rebuild_grace (default 10m).

Without --wait, a running 'sightline run' builds it; 'sightline status' and
GET /v1/projections/NAME show its progress. With --wait, this process builds
it and shows a progress bar until the swap; interrupted, it resumes from where
it stopped the next time either runs. One rebuild runs at a time.`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, a, err := openProjection(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			defer a.Close()
			if wait {
				return rebuildHere(cmd.Context(), c, a, p)
			}
			rb, err := projections.RequestRebuild(cmd.Context(), a.pool, p)
			if err != nil {
				return err
			}
			switch {
			case rb.Created:
				fmt.Printf("%s: rebuild requested: generation %d (version %d).\n", rb.Projection, rb.Generation, rb.Version)
			case rb.Resumed:
				fmt.Printf("%s: generation %d (version %d) was left half built; it goes on from where it stopped.\n", rb.Projection, rb.Generation, rb.Version)
			default:
				fmt.Printf("%s: generation %d (version %d) was requested already and waits for a projector.\n", rb.Projection, rb.Generation, rb.Version)
			}
			if !projectorRunning(cmd.Context(), a, p.Name()) {
				fmt.Printf("No projector of %s seems to run: start 'sightline run', or build it here with 'sightline rebuild %s --wait'.\n", p.Name(), p.Name())
				return nil
			}
			fmt.Println("The running projector builds it and swaps it in; 'sightline status' shows its progress.")
			return nil
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", false, "build here, showing a progress bar, until the new generation takes over")
	return cmd
}

// openProjection finds the configured projection named name and opens the
// database and the event source; the caller closes the app.
func openProjection(ctx context.Context, c *Config, name string) (projections.Projection, *app, error) {
	p, err := c.projection(name)
	if err != nil {
		return nil, nil, err
	}
	a, err := openApp(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	return p, a, nil
}

func exactlyOneName(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usagef("want one projection name, got %d arguments", len(args))
	}
	return nil
}

// projectorRunning says whether a process wrote the projection's status in
// the last few seconds.
func projectorRunning(ctx context.Context, a *app, name string) bool {
	var running bool
	err := a.pool.QueryRow(ctx, `SELECT status <> 'stopped' AND updated_at > now() - interval '10 seconds'
		FROM sightline.projections WHERE name = $1`, name).Scan(&running)
	return err == nil && running
}

// rebuildHere builds the rebuild of p in this process with a progress bar.
func rebuildHere(ctx context.Context, c *Config, a *app, p projections.Projection) error {
	started := make(chan projections.Rebuild, 1)
	done := make(chan error, 1)
	go func() {
		done <- projections.RunRebuild(ctx, a.pool, a.store, p, c.projectorConfig(nil, a.sourceName), func(rb projections.Rebuild) { started <- rb })
	}()
	var rb projections.Rebuild
	select {
	case rb = <-started:
	case err := <-done:
		return err
	}
	verb := "building"
	if rb.Resumed {
		verb = "resuming"
	}
	unit := "events"
	if a.sourceName != "postgres" {
		unit = "positions" // EventStoreDB positions are log offsets, not counts
	}
	// The bar counts from where this process starts, so that a resumed
	// build's rate and ETA are this run's. It is made with a length: one
	// without starts a spinner goroutine that races with updates.
	var from, to uint64
	if st, err := projections.ReadRebuild(ctx, a.pool, a.store, rb.Projection, rb.Generation); err == nil {
		from, to = st.Position.Commit, st.Head.Commit
	}
	bar := progressbar.NewOptions64(int64(max(to, from+1)-from),
		progressbar.OptionSetDescription(fmt.Sprintf("%s %s generation %d", verb, rb.Projection, rb.Generation)),
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString(unit),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(200*time.Millisecond),
		progressbar.OptionSetWidth(30),
	)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				_ = bar.Exit() // leaves the bar where the build stopped
			} else {
				_ = bar.Finish()
			}
			fmt.Fprintln(os.Stderr)
			if err != nil {
				if ctx.Err() != nil {
					return fmt.Errorf("interrupted; generation %d resumes from where it stopped the next time 'sightline run' or 'sightline rebuild %s --wait' runs", rb.Generation, rb.Projection)
				}
				return err
			}
			fmt.Printf("%s: generation %d (version %d) is active; a running projector (or the next rebuild) drops the replaced tables after %s.\n",
				rb.Projection, rb.Generation, rb.Version, cmp.Or(c.RebuildGrace, projections.RetiredGraceDefault))
			return nil
		case <-tick.C:
			st, err := projections.ReadRebuild(ctx, a.pool, a.store, rb.Projection, rb.Generation)
			if err != nil {
				continue
			}
			if st.Head.Commit > from && int64(st.Head.Commit-from) != bar.GetMax64() {
				bar.ChangeMax64(int64(st.Head.Commit - from))
			}
			if st.Position.Commit >= from {
				_ = bar.Set64(int64(st.Position.Commit - from))
			}
		}
	}
}

func newVerifyCmd(c *Config) *cobra.Command {
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify NAME",
		Short: "Compare a projection's read model with a clean replay; exit 1 on drift",
		Long: `verify replays the store from the start into a scratch copy of the
projection's tables and compares it with the read model, row by row by primary
key: rows missing or extra first, then rows whose values differ. Both sides are
compared at the same position, so it is safe while the projection runs live.
It prints the first differing rows and exits 1 on drift, 0 when equal; as a
cron job it is a reconciliation check.`,
		Args: exactlyOneName,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 1 {
				return usagef("--limit must be at least 1")
			}
			p, a, err := openProjection(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			defer a.Close()
			report, err := projections.Verify(cmd.Context(), a.pool, a.store, p, limit, c.projectorConfig(nil, a.sourceName))
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(map[string]any{
					"projection": report.Projection, "generation": report.Generation, "position": report.Position.String(),
					"rows": report.Rows, "drifted": report.Drifted, "drift": report.Drift, "took_ms": report.Took.Milliseconds(),
				}); err != nil {
					return err
				}
			} else {
				printVerify(os.Stdout, report)
			}
			if report.Drifted > 0 {
				return exitError{code: exitFailure}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&limit, "limit", projections.VerifyLimitDefault, "print at most this many differing rows")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func printVerify(w io.Writer, r projections.VerifyReport) {
	var rows int64
	for _, n := range r.Rows {
		rows += n
	}
	if r.Drifted == 0 {
		fmt.Fprintf(w, "%s: no drift: %s rows equal a clean replay at position %s (took %s)\n",
			r.Projection, fmtCount(rows), r.Position, r.Took.Round(time.Millisecond))
		return
	}
	fmt.Fprintf(w, "%s: %s of %s rows differ from a clean replay at position %s (first %d below)\n",
		r.Projection, fmtCount(r.Drifted), fmtCount(rows), r.Position, len(r.Drift))
	for _, d := range r.Drift {
		key := renderRow(d.Key, nil)
		switch d.Kind {
		case projections.DriftMissing:
			fmt.Fprintf(w, "  %s %s: missing from the read model; replay has %s\n", d.Table, key, renderRow(d.Replay, d.Key))
		case projections.DriftExtra:
			fmt.Fprintf(w, "  %s %s: in the read model only: %s\n", d.Table, key, renderRow(d.Live, d.Key))
		default:
			var cols []string
			for _, col := range d.Columns {
				cols = append(cols, fmt.Sprintf("%s: live %s, replay %s", col, jsonValue(d.Live[col]), jsonValue(d.Replay[col])))
			}
			fmt.Fprintf(w, "  %s %s: %s\n", d.Table, key, strings.Join(cols, "; "))
		}
	}
}

// renderRow renders a row's columns, leaving out those in skip, by name.
func renderRow(row, skip map[string]any) string {
	var cols []string
	for k := range row {
		if _, ok := skip[k]; !ok {
			cols = append(cols, k)
		}
	}
	sort.Strings(cols)
	parts := make([]string, 0, len(cols))
	for _, k := range cols {
		parts = append(parts, k+"="+jsonValue(row[k]))
	}
	return strings.Join(parts, " ")
}

func jsonValue(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
