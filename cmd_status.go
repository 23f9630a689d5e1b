package sightline

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/sightlinehq/sightline/projections"
)

type statusRow struct {
	Projection string    `json:"projection"`
	Version    int       `json:"version"`
	Status     string    `json:"status"`
	Position   string    `json:"position"`
	Head       string    `json:"head"`
	LagMs      int64     `json:"lag_ms"`
	UpdatedAt  time.Time `json:"updated_at"`
	Parked     int64     `json:"parked"`
	// Reason says why the status is failed, degraded or stalled.
	Reason string `json:"reason,omitempty"`
	// The process that applies it, if one holds its lease.
	Owner      *string    `json:"owner"`
	OwnerHost  *string    `json:"owner_host"`
	OwnerPID   *int       `json:"owner_pid"`
	OwnerSince *time.Time `json:"owner_since"`
	// The rebuild under way, if any: its generation and how far it is.
	RebuildGeneration *int     `json:"rebuild_generation"`
	RebuildPercent    *float64 `json:"rebuild_percent"`
	// A segmented projection's segments, each with its position and
	// owner; its own position is the lowest of theirs, and its owner
	// above is empty.
	Segments []segmentRow `json:"segments,omitempty"`
}

type segmentRow struct {
	Segment    int        `json:"segment"`
	Position   string     `json:"position"`
	Owner      *string    `json:"owner"`
	OwnerHost  *string    `json:"owner_host"`
	OwnerPID   *int       `json:"owner_pid"`
	OwnerSince *time.Time `json:"owner_since"`
}

// ownerText says who holds a projection or a segment, for the table.
func ownerText(id, host *string, pid *int, since *time.Time) string {
	switch {
	case id != nil && pid != nil:
		return fmt.Sprintf("%s (pid %d on %s, since %s ago)", *id, *pid, *host, time.Since(*since).Round(time.Second))
	case id != nil:
		return *id
	}
	return "-"
}

func newStatusCmd(c *Config) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show each projection's status, position, head, lag and parked events (from readmodel.projection_status)",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pool, err := openDatabase(cmd.Context(), c)
			if err != nil {
				return err
			}
			defer pool.Close()
			rows, err := pool.Query(cmd.Context(), `SELECT s.projection, s.version, s.status, coalesce(s.position, '0'), s.head, s.lag_ms, s.updated_at, s.parked, s.reason,
					o.owner, p.host, p.pid, o.since,
					b.generation, b.percent::float8, seg.list
				FROM readmodel.projection_status s
				LEFT JOIN (sightline.owners o JOIN sightline.processes p ON p.id = o.owner
					AND p.heartbeat_at > now() - $1::interval) ON o.projection = s.projection AND o.segment = 0 AND NOT o.released AND s.segments = 1
				LEFT JOIN LATERAL (
					SELECT g.generation, CASE WHEN h.head > 0 THEN round(100.0 * least(min(c.commit_position), h.head) / h.head, 1) ELSE 0 END AS percent
					FROM sightline.generations g
					JOIN sightline.checkpoints c USING (projection, generation),
					LATERAL (SELECT split_part(s.head, '/', 1)::numeric AS head) h
					WHERE g.projection = s.projection AND g.state = 'building'
					GROUP BY g.generation, h.head
				) b ON true
				LEFT JOIN LATERAL (
					SELECT json_agg(json_build_object('segment', c.segment,
							'position', CASE WHEN c.commit_position = c.prepare_position THEN c.commit_position::text
								ELSE c.commit_position::text || '/' || c.prepare_position::text END,
							'owner', so.owner, 'owner_host', sp.host, 'owner_pid', sp.pid, 'owner_since', so.since) ORDER BY c.segment) AS list
					FROM sightline.projections pr
					JOIN sightline.checkpoints c ON c.projection = pr.name AND c.generation = pr.generation
					LEFT JOIN (sightline.owners so JOIN sightline.processes sp ON sp.id = so.owner
						AND sp.heartbeat_at > now() - $1::interval) ON so.projection = c.projection AND so.segment = c.segment AND NOT so.released
					WHERE pr.name = s.projection AND s.segments > 1
				) seg ON true
				ORDER BY s.projection`, cmp.Or(c.Lease, projections.LeaseDefault).String())
			if err != nil {
				return err
			}
			list, err := pgx.CollectRows(rows, pgx.RowToStructByPos[statusRow])
			if err != nil {
				return err
			}
			for i := range list {
				list[i].Reason = c.secrets.String(list[i].Reason)
			}
			if asJSON {
				return printJSON(map[string]any{"projections": list})
			}
			if len(list) == 0 {
				fmt.Println("no projections yet: start one with 'sightline run'")
				return nil
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "PROJECTION\tVERSION\tSTATUS\tPOSITION\tHEAD\tLAG\tPARKED\tREBUILD\tUPDATED\tOWNER\tREASON")
			for _, r := range list {
				rebuild := "-"
				if r.RebuildGeneration != nil {
					rebuild = fmt.Sprintf("generation %d at %.1f%%", *r.RebuildGeneration, *r.RebuildPercent)
				}
				owner := ownerText(r.Owner, r.OwnerHost, r.OwnerPID, r.OwnerSince)
				if r.Segments != nil {
					owner = fmt.Sprintf("%d segments:", len(r.Segments))
				}
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s ago\t%s\t%s\n", r.Projection, r.Version, r.Status, r.Position, r.Head,
					(time.Duration(r.LagMs) * time.Millisecond).String(), r.Parked, rebuild, time.Since(r.UpdatedAt).Round(time.Second), owner, cmp.Or(c.secrets.String(r.Reason), "-"))
				for _, seg := range r.Segments {
					fmt.Fprintf(w, "  segment %d\t\t\t%s\t\t\t\t\t\t%s\t\n", seg.Segment, seg.Position, ownerText(seg.Owner, seg.OwnerHost, seg.OwnerPID, seg.OwnerSince))
				}
			}
			return w.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printJSON prints v as indented JSON on stdout.
func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
