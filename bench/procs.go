package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/procfs"
)

// sightlineProc is a 'sightline run' process the bench started, with its
// log in a file of its own.
type sightlineProc struct {
	cmd     *exec.Cmd
	addr    string // host:port of its API
	pid     int
	logPath string
	done    chan struct{} // closed once it has exited
	err     error         // how it exited, once done
}

// procs starts and stops the sightline processes of a part; stopAll ends
// those still running.
type procs struct {
	binary string
	dir    string // the logs
	mu     sync.Mutex
	n      int
	all    []*sightlineProc
}

func newProcs(binary string) (*procs, error) {
	dir, err := os.MkdirTemp("", "sightline-bench-owners-")
	if err != nil {
		return nil, err
	}
	return &procs{binary: binary, dir: dir}, nil
}

// freePort is a port nothing listens on now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// start runs 'sightline run args...' on a port of its own, and waits until
// its API answers.
func (ps *procs) start(ctx context.Context, args ...string) (*sightlineProc, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	ps.mu.Lock()
	ps.n++
	logPath := filepath.Join(ps.dir, fmt.Sprintf("sightline-%02d.log", ps.n))
	ps.mu.Unlock()
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(ps.binary, append([]string{"run", "--http-addr", addr, "--log-level", "info"}, args...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	p := &sightlineProc{cmd: cmd, addr: addr, pid: cmd.Process.Pid, logPath: logPath, done: make(chan struct{})}
	ps.mu.Lock()
	ps.all = append(ps.all, p)
	ps.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("sightline %s exited: %v\n%s", strings.Join(args, " "), p.err, p.logTail())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("sightline %s: no answer on %s within 30 s\n%s", strings.Join(args, " "), addr, p.logTail())
		}
	}
}

// running says whether p has not exited yet.
func (p *sightlineProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill ends p with SIGKILL and waits for it.
func (p *sightlineProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to 20 s before it kills; it returns how p
// exited.
func (p *sightlineProc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	return p.wait()
}

// wait waits for p, signalled to stop, up to 20 s before it kills it; it
// returns how p exited.
func (p *sightlineProc) wait() error {
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.kill()
		return fmt.Errorf("sightline (pid %d) still running 20 s after SIGTERM; killed", p.pid)
	}
	var exit *exec.ExitError
	if errors.As(p.err, &exit) && exit.ExitCode() != 0 {
		return fmt.Errorf("sightline (pid %d) exited %d after SIGTERM\n%s", p.pid, exit.ExitCode(), p.logTail())
	}
	return nil
}

// logTail is the end of p's log, for an error.
func (p *sightlineProc) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stopAll stops every process still running, at once, and waits for them.
func (ps *procs) stopAll() {
	for _, p := range ps.all {
		if p.running() {
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range ps.all {
		select {
		case <-p.done:
		case <-time.After(20 * time.Second):
			p.kill()
		}
	}
}

// finish stops every process still running and removes their logs,
// unless err: then it says where they are.
func (ps *procs) finish(err error) {
	ps.stopAll()
	if err == nil {
		os.RemoveAll(ps.dir)
		return
	}
	fmt.Fprintf(os.Stderr, "bench: the sightline processes' logs are in %s\n", ps.dir)
}

// alive is the pids of the processes not killed or stopped, by the bench's
// account: a process it signalled counts as gone at once.
func alive(ps []*sightlineProc) map[int]bool {
	out := map[int]bool{}
	for _, p := range ps {
		out[p.pid] = true
	}
	return out
}

// without is ps without p.
func without(ps []*sightlineProc, p *sightlineProc) []*sightlineProc {
	var out []*sightlineProc
	for _, q := range ps {
		if q != p {
			out = append(out, q)
		}
	}
	return out
}

// seg is a projection's segment, a row of sightline.owners.
type seg struct {
	projection string
	segment    int
}

func (s seg) String() string {
	if s.segment == 0 {
		return s.projection
	}
	return fmt.Sprintf("%s/%d", s.projection, s.segment)
}

// holders reads which process (by pid) holds each segment and has not
// given it up, whether or not its heart still beats.
func holders(ctx context.Context, pool *pgxpool.Pool) (map[seg]int, error) {
	rows, err := pool.Query(ctx, `SELECT o.projection, o.segment, p.pid FROM sightline.owners o JOIN sightline.processes p ON p.id = o.owner
		WHERE NOT o.released`)
	if err != nil {
		return nil, err
	}
	out := map[seg]int{}
	var s seg
	var pid int
	_, err = pgx.ForEachRow(rows, []any{&s.projection, &s.segment, &pid}, func() error { out[s] = pid; return nil })
	return out, err
}

// heldBy says whether every segment of want is held by one of the live
// pids, and by how many of them in all.
func heldBy(h map[seg]int, want []seg, live map[int]bool) (bool, int) {
	by := map[int]bool{}
	for _, s := range want {
		pid, ok := h[s]
		if !ok || !live[pid] {
			return false, 0
		}
		by[pid] = true
	}
	return true, len(by)
}

// checkpoint is the lowest checkpoint of the active generation of the
// projection over its segments, and how many segments have one.
func checkpoint(ctx context.Context, pool *pgxpool.Pool, projection string) (int64, int, error) {
	var pos *int64
	var n int
	err := pool.QueryRow(ctx, `SELECT min(c.commit_position), count(*) FROM sightline.checkpoints c
		JOIN sightline.projections p ON p.name = c.projection AND p.generation = c.generation WHERE c.projection = $1`, projection).Scan(&pos, &n)
	if pos == nil {
		return 0, n, err
	}
	return *pos, n, err
}

// procCPU is the CPU time, in seconds, the processes pids have used so far.
func procCPU(pids []int) float64 {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0
	}
	var total float64
	for _, pid := range pids {
		p, err := fs.Proc(pid)
		if err != nil {
			continue
		}
		st, err := p.Stat()
		if err != nil {
			continue
		}
		total += st.CPUTime()
	}
	return total
}

// cpuOf runs f and says how the machine's cores were used meanwhile, by
// the sightline processes pids gives too (those it gives before f, then
// after: a process started meanwhile counts whole, one gone meanwhile not
// at all).
func cpuOf(pids func() []int, f func() error) (string, error) {
	from, err := sampleCPU()
	if err != nil {
		return "", err
	}
	slFrom := procCPU(pids())
	if err := f(); err != nil {
		return "", err
	}
	to, err := sampleCPU()
	if err != nil {
		return "", err
	}
	sl := (procCPU(pids()) - slFrom) / to.at.Sub(from.at).Seconds()
	return fmt.Sprintf("sightline processes %.2f, %s", sl, cpuSplit(from, to)), nil
}

func pidsOf(ps []*sightlineProc) []int {
	var out []int
	for _, p := range ps {
		out = append(out, p.pid)
	}
	return out
}
