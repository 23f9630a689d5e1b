package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/internal/testdb"
)

// TestTheProgramServesItsOwnProjection builds this program, runs it as a
// user would, appends through its API and reads its own declared query,
// fresh, with read-your-writes; no example table is created.
func TestTheProgramServesItsOwnProjection(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "go-projection")
	build := exec.Command("go", "build", "-race", "-o", bin, ".")
	build.Stderr = os.Stderr
	require.NoError(t, build.Run())
	db := testdb.New(t)

	cmd := exec.Command(bin, "run", "--http-addr", "127.0.0.1:0", "--database-url", db.URL)
	var logs lockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })

	listening := regexp.MustCompile(`http=http://(\S+)`)
	var base string
	require.Eventually(t, func() bool {
		m := listening.FindStringSubmatch(logs.String())
		if m != nil {
			base = "http://" + m[1]
		}
		return m != nil
	}, time.Minute, 20*time.Millisecond, "%s", &logs)

	var last struct {
		Position string `json:"position"`
	}
	for i, carrier := range []string{"DHL", "UPS", "DHL"} {
		body := `{"type":"OrderShipped","data":{"carrier":"` + carrier + `"}}`
		resp, err := http.Post(base+"/v1/streams/order-"+string(rune('a'+i)), "application/json", bytes.NewBufferString(body))
		require.NoError(t, err)
		require.Equal(t, http.StatusCreated, resp.StatusCode)
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&last))
		resp.Body.Close()
	}

	req, err := http.NewRequest(http.MethodGet, base+"/v1/carriers/DHL", nil)
	require.NoError(t, err)
	req.Header.Set("Projection-Min-Position", last.Position)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(raw))
	var dhl struct {
		Carrier string `json:"carrier"`
		Shipped int    `json:"shipped"`
	}
	require.NoError(t, json.Unmarshal(raw, &dhl))
	require.Equal(t, "DHL", dhl.Carrier)
	require.Equal(t, 2, dhl.Shipped)
	require.Equal(t, last.Position, resp.Header.Get("Projection-Position"))
	require.NotEmpty(t, resp.Header.Get("Projection-Lag-Ms"))

	resp, err = http.Get(base + "/v1/carriers")
	require.NoError(t, err)
	raw, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.JSONEq(t, `["DHL","UPS"]`, carriers(t, raw), string(raw))

	var examples int
	require.NoError(t, db.Pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sl\_%' AND nspname NOT LIKE 'sl\_carriers\_%'`).Scan(&examples))
	require.Zero(t, examples, "only the program's own projection")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	require.NoError(t, <-done, "stops cleanly on SIGTERM\n%s", &logs)
	done <- nil // for the cleanup
}

// carriers lists the carriers of a page of the busiest query, in order.
func carriers(t *testing.T, page []byte) string {
	var p struct {
		Items []struct {
			Carrier string `json:"carrier"`
		} `json:"items"`
	}
	require.NoError(t, json.Unmarshal(page, &p))
	names := []string{}
	for _, c := range p.Items {
		names = append(names, c.Carrier)
	}
	out, err := json.Marshal(names)
	require.NoError(t, err)
	return string(out)
}

// lockedBuffer collects the program's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
