package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// runCLI runs the binary to completion and returns its stdout, stderr
// and exit code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return stdout.String(), stderr.String(), exit.ExitCode()
	}
	require.NoError(t, err)
	return stdout.String(), stderr.String(), 0
}

// TestParkedCommands lists, retries and skips a parked event from the
// command line while 'sightline run' projects.
func TestParkedCommands(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 2*time.Minute)
	_, err := store.Append(ctx, "order-q", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":100}`),
		storetest.Event(readmodel.TypeOrderPaid, `{"amount":{"cents":100}}`),
		storetest.Event(readmodel.TypeOrderCancelled, `{"reason":"changed mind"}`))
	require.NoError(t, err)
	db2 := []string{"--database-url", db.URL, "--examples"}
	p := start(t, append([]string{"run", "--http-addr", "127.0.0.1:0"}, db2...)...)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)

	out, _, code := runCLI(t, append([]string{"parked", "list", "--projection", "orders", "--json"}, db2...)...)
	require.Zero(t, code)
	var list struct {
		Parked []struct {
			ID    int64  `json:"id"`
			State string `json:"state"`
			Error string `json:"error"`
		} `json:"parked"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &list), out)
	require.Len(t, list.Parked, 2)
	head := list.Parked[0]
	require.Equal(t, "parked", head.State)
	require.Contains(t, head.Error, "amount")

	out, _, code = runCLI(t, append([]string{"parked", "list"}, db2...)...)
	require.Zero(t, code)
	require.Contains(t, out, "ID  ")
	require.Equal(t, 3*2+1, strings.Count(out, "\n"), "orders, customer_stats and daily_sales each park the payment and hold the cancellation:\n%s", out)

	id := fmt.Sprint(head.ID)
	_, stderr, code := runCLI(t, append([]string{"parked", "retry", id}, db2...)...)
	require.Equal(t, exitFailure, code, "the event fails again")
	require.Contains(t, stderr, "holds its stream")
	_, stderr, code = runCLI(t, append([]string{"parked", "retry", fmt.Sprint(list.Parked[1].ID)}, db2...)...)
	require.Equal(t, exitFailure, code)
	require.Contains(t, stderr, "waits behind parked event "+id)

	out, _, code = runCLI(t, append([]string{"parked", "skip", id}, db2...)...)
	require.Zero(t, code)
	require.Contains(t, out, "skipped "+id)
	require.Contains(t, out, "applied 1 event(s) of order-q to orders, through revision 2")
	out, stderr, code = runCLI(t, append([]string{"parked", "skip", id}, db2...)...)
	require.Zero(t, code, "skipping twice is fine: %s", stderr)
	require.Contains(t, out, "already skipped")

	var status string
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT status FROM readmodel.orders WHERE id = 'q'`).Scan(&status))
	require.Equal(t, "cancelled", status)
	require.Eventually(t, func() bool {
		out, _, code := runCLI(t, append([]string{"status"}, db2...)...)
		return code == 0 && strings.Contains(out, "PARKED") && strings.Contains(out, "orders") &&
			strings.Fields(lineOf(out, "orders "))[6] == "0"
	}, 10*time.Second, 100*time.Millisecond, "status shows no parked event left for orders")
	select {
	case <-p.done:
		t.Fatalf("sightline run exited: %v\n%s", p.err, p.stderr.String())
	default:
	}
}

func lineOf(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return strings.Repeat("? ", 8)
}
