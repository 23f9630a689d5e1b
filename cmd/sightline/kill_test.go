package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/internal/simulate"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// proc is one run of the sightline binary.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // its exit status, once done is closed
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, args...)
}

// startEnv is start with env added to the environment.
func startEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	p := &proc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	require.NoError(t, cmd.Start())
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	return p
}

// TestKillNineLosesNothing runs the binary while events are appended,
// kills it with SIGKILL at random points, during catch-up and live
// traffic, restarts it each time, and proves the read models equal the
// fold of the events: nothing lost, nothing applied twice.
func TestKillNineLosesNothing(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 4*time.Minute)

	// A backlog to catch up on.
	_, err := simulate.Run(ctx, store, simulate.Config{Orders: 1500, Customers: 100, Writers: 4, Seed: 11})
	require.NoError(t, err)

	conf := filepath.Join(t.TempDir(), "sightline.yaml")
	require.NoError(t, os.WriteFile(conf, []byte("batch_size: 100\n"), 0o600))
	args := []string{"run", "--database-url", db.URL, "--http-addr", "127.0.0.1:0", "--config", conf, "--examples"}

	// Live traffic throughout.
	live := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, store, simulate.Config{Orders: 1500, Customers: 100, Writers: 4, Rate: 1500, Seed: 12})
		live <- err
	}()

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	kills := 0
	for i := 0; i < 8 || kills < 5; i++ {
		p := start(t, args...)
		// Up to 1.5 s: the first runs die during catch-up, the later ones live.
		time.Sleep(time.Duration(100+rng.IntN(1400)) * time.Millisecond)
		select {
		case <-p.done:
			t.Fatalf("sightline exited by itself: %v\n%s", p.err, p.stderr.String())
		default:
		}
		require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
		<-p.done
		kills++
		if strings.Contains(p.stderr.String(), "panic") || strings.Contains(p.stderr.String(), "DATA RACE") {
			t.Fatalf("sightline run %d:\n%s", i, p.stderr.String())
		}
	}
	require.NoError(t, <-live)

	// A last run catches up and stops gracefully on SIGTERM.
	p := start(t, args...)
	readmodeltest.WaitCaughtUp(t, ctx, db.Pool, readmodeltest.Names()...)
	readmodeltest.RequireExact(t, ctx, db.Pool)
	// The killed runs' leases lapse with their heartbeats; then this one
	// holds everything, and its stop writes the final status.
	last := p.cmd.Process.Pid
	waitHeld(t, ctx, db.Pool, time.Minute, func(h map[string]int) bool { return holds(h, last) == 3 })
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.done:
		require.NoError(t, p.err, "graceful stop exits 0\n%s", p.stderr.String())
	case <-ctx.Done():
		t.Fatal("sightline did not stop on SIGTERM")
	}
	var status string
	require.NoError(t, db.Pool.QueryRow(ctx, `SELECT string_agg(DISTINCT status, ',') FROM readmodel.projection_status`).Scan(&status))
	require.Equal(t, "stopped", status)
	t.Logf("killed %d times; read models exact", kills)
}
