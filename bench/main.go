package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/migrate"
)

type config struct {
	server string // a database URL; the bench creates its databases on that server
	events int
	runs   int
	only   map[string]bool
	phase  time.Duration
	binary string
	logger *slog.Logger
	// The owners part's.
	leases        []time.Duration
	kills         int
	handovers     int
	segments      int
	segmentEvents int
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var cfg config
	var only string
	flag.StringVar(&cfg.server, "database-url", envOr("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
		"a PostgreSQL database URL; the bench creates its own databases (sightline_bench_*) on that server (env BENCH_DATABASE_URL)")
	flag.IntVar(&cfg.events, "events", 1_000_000, "events in the store that rebuilds replay (5000000 for the memory bound)")
	flag.IntVar(&cfg.runs, "runs", 3, "runs of each rebuild and append measurement; the median is reported")
	flag.StringVar(&only, "only", "rebuild,declarative,append,live,idle", "which parts to run: rebuild, declarative (the YAML example's rebuild against plain batching of its SQL and a Go projection of the same read model), append, live (live includes the query load), idle (PostgreSQL commits per appended event at 250 events/s), owners (several processes: failover, a serve-only node, segments; about 3 minutes, not in the default set)")
	flag.DurationVar(&cfg.phase, "phase", 15*time.Second, "length of each timed phase (append rounds, live latency, query load)")
	flag.StringVar(&cfg.binary, "binary", "", "sightline binary to rebuild with (default: built from the sightline module's ./cmd/sightline)")
	leases := flag.String("leases", "3s", "owners: the --lease values to kill processes with, comma-separated (3s is sightline's default)")
	flag.IntVar(&cfg.kills, "kills", 20, "owners: kill -9 rounds per lease")
	flag.IntVar(&cfg.handovers, "handovers", 10, "owners: SIGTERM rounds per lease")
	flag.IntVar(&cfg.segments, "segments", 4, "owners: the segments of the segmented projection (0 omits the key: a test of the bench on a binary without segments)")
	flag.IntVar(&cfg.segmentEvents, "segment-events", 300_000, "owners: events appended in bulk, then rebuilt, for each segments measurement")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the bench process (appends, and the live part's projector, API and load) to this file")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	for _, l := range strings.Split(*leases, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(l))
		if err != nil || d <= 0 {
			fmt.Fprintf(os.Stderr, "bench: --leases: %q is not a duration\n", l)
			os.Exit(2)
		}
		cfg.leases = append(cfg.leases, d)
	}
	cfg.only = map[string]bool{}
	for _, part := range strings.Split(only, ",") {
		cfg.only[strings.TrimSpace(part)] = true
	}
	cfg.logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// sightlineDir returns the directory of the sightline module the bench is
// built with (bench/go.mod replaces it with the directory above).
func sightlineDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/sightlinehq/sightline").Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		return "", fmt.Errorf("find the sightline module to build (run the bench from its module, cd bench && go run ., or give --binary): %v", errors.Join(err, exitStderr(err)))
	}
	return dir, nil
}

// exitStderr returns what a failed command wrote to its standard error.
func exitStderr(err error) error {
	var exit *exec.ExitError
	if errors.As(err, &exit) && len(exit.Stderr) > 0 {
		return errors.New(strings.TrimSpace(string(exit.Stderr)))
	}
	return nil
}

func run(ctx context.Context, cfg config) error {
	if cfg.binary == "" {
		dir, err := os.MkdirTemp("", "sightline-bench")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.binary = filepath.Join(dir, "sightline")
		root, err := sightlineDir(ctx)
		if err != nil {
			return err
		}
		build := exec.CommandContext(ctx, "go", "build", "-o", cfg.binary, "./cmd/sightline")
		build.Dir = root // built in its own module, with its own go.mod, as make build builds it
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build sightline: %w", err)
		}
	}
	rep := &report{}
	fmt.Fprintf(os.Stderr, "bench: %s, %d CPUs, %s\n", runtime.Version(), runtime.NumCPU(), serverVersion(ctx, cfg.server))
	if cfg.only["rebuild"] {
		if err := benchRebuild(ctx, cfg, rep); err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
	}
	if cfg.only["declarative"] {
		if err := settle(ctx, cfg); err != nil {
			return err
		}
		if err := benchDeclarative(ctx, cfg, rep); err != nil {
			return fmt.Errorf("declarative: %w", err)
		}
	}
	if cfg.only["append"] {
		if err := settle(ctx, cfg); err != nil {
			return err
		}
		if err := benchAppend(ctx, cfg, rep); err != nil {
			return fmt.Errorf("append: %w", err)
		}
	}
	if cfg.only["live"] {
		if err := settle(ctx, cfg); err != nil {
			return err
		}
		if err := benchLive(ctx, cfg, rep); err != nil {
			return fmt.Errorf("live: %w", err)
		}
	}
	if cfg.only["idle"] {
		if err := settle(ctx, cfg); err != nil {
			return err
		}
		if err := benchIdle(ctx, cfg, rep); err != nil {
			return fmt.Errorf("idle: %w", err)
		}
	}
	if cfg.only["owners"] {
		if err := settle(ctx, cfg); err != nil {
			return err
		}
		if err := benchOwners(ctx, cfg, rep); err != nil {
			return fmt.Errorf("owners: %w", err)
		}
	}
	rep.print(os.Stdout)
	return nil
}

// settle lets the server finish what the parts before left it, so that a
// timed part does not share the machine with it: a checkpoint of the
// rebuilds' WAL, and autovacuum of their tables (up to two minutes).
func settle(ctx context.Context, cfg config) error {
	admin, err := pgxpool.New(ctx, cfg.server)
	if err != nil {
		return err
	}
	defer admin.Close()
	start := time.Now()
	if _, err := admin.Exec(ctx, `CHECKPOINT`); err != nil {
		cfg.logger.Warn("could not checkpoint before the next part", "error", err)
	}
	for time.Since(start) < 2*time.Minute {
		var vacuuming int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'`).Scan(&vacuuming); err != nil {
			return err
		}
		if vacuuming == 0 {
			break
		}
		time.Sleep(time.Second)
	}
	fmt.Fprintf(os.Stderr, "bench: server settled in %s\n", time.Since(start).Round(100*time.Millisecond))
	return nil
}

// report is the table the bench prints.
type report struct{ rows [][]string }

func (r *report) add(measure, sightline, reference, ratio, target string, met bool) {
	verdict := "yes"
	if !met {
		verdict = "**no**"
	}
	if target == "" {
		verdict = ""
	}
	r.rows = append(r.rows, []string{measure, sightline, reference, ratio, target, verdict})
	fmt.Fprintf(os.Stderr, "bench: %s: %s (reference %s, %s)\n", measure, sightline, reference, ratio)
}

func (r *report) print(w io.Writer) {
	fmt.Fprintln(w, "| measure | sightline | reference | ratio | SPEC §7 target | met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, row := range r.rows {
		fmt.Fprintln(w, "| "+strings.Join(row, " | ")+" |")
	}
}

// databaseURL is server's URL with the database name replaced.
func databaseURL(server, name string) (string, error) {
	u, err := url.Parse(server)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

// benchDB is a bench database with the embedded store on it.
type benchDB struct {
	pool  *pgxpool.Pool
	url   string
	store *pgstore.Store
}

// Close closes the store, then the pool.
func (db *benchDB) Close() {
	db.store.Close()
	db.pool.Close()
}

// openDatabase creates (or, with fresh, drops and creates) the database
// name on the server, migrates it, connects and opens the embedded store.
func openDatabase(ctx context.Context, cfg config, name string, fresh bool) (*benchDB, error) {
	dbURL, err := databaseURL(cfg.server, name)
	if err != nil {
		return nil, err
	}
	if fresh {
		admin, err := pgxpool.New(ctx, cfg.server)
		if err != nil {
			return nil, err
		}
		_, err = admin.Exec(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`)
		admin.Close()
		if err != nil {
			return nil, err
		}
	}
	pool, err := migrate.Open(ctx, dbURL, 24, cfg.logger)
	if err != nil {
		return nil, err
	}
	store, err := pgstore.New(pool, pgstore.Config{})
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &benchDB{pool: pool, url: dbURL, store: store}, nil
}

func serverVersion(ctx context.Context, server string) string {
	pool, err := pgxpool.New(ctx, server)
	if err != nil {
		return "PostgreSQL unreachable"
	}
	defer pool.Close()
	var v string
	if err := pool.QueryRow(ctx, `SHOW server_version`).Scan(&v); err != nil {
		return "PostgreSQL ?"
	}
	return "PostgreSQL " + v
}

// median of xs, which it sorts.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	slices.Sort(xs)
	if len(xs)%2 == 0 {
		return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	return xs[len(xs)/2]
}

func perSecond(n float64) string {
	switch {
	case n >= 1000:
		return fmt.Sprintf("%.1fk/s", n/1000)
	default:
		return fmt.Sprintf("%.0f/s", n)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
