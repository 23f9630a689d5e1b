package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.yaml.in/yaml/v3"

	"github.com/sightlinehq/sightline/bench/goactivity"
	"github.com/sightlinehq/sightline/internal/pgsql"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/projections/declarative"
)

// activityName is the YAML example's projection, and its table's.
const activityName = "order_activity"

// activityYAML is examples/projections/order_activity.yaml of the sightline
// module the bench is built with.
func activityYAML(ctx context.Context) (string, error) {
	dir, err := sightlineDir(ctx)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "examples", "projections", activityName+".yaml"), nil
}

// benchDeclarative measures the rebuild of the YAML example, order_activity,
// by the sightline binary on the rebuild part's store, against two
// references in the same run: plain batching (plainBatching: the same SQL
// of its handlers, the same bindings, pipelined, a transaction per batch of
// a rebuild's size) and the same read model as a Go projection
// (goactivity), rebuilt the same way by a binary that holds both. It checks
// that the three read models are the same rows, and the YAML one against a
// fold of the events.
func benchDeclarative(ctx context.Context, cfg config, rep *report) error {
	path, err := activityYAML(ctx)
	if err != nil {
		return err
	}
	yp, err := declarative.Load(path)
	if err != nil {
		return err
	}
	spec, err := loadSpec(path)
	if err != nil {
		return err
	}
	binDir, err := os.MkdirTemp("", "sightline-bench-activity")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)
	binary, err := buildActivity(ctx, binDir)
	if err != nil {
		return err
	}

	db, err := openDatabase(ctx, cfg, fmt.Sprintf("sightline_bench_%d", cfg.events), false)
	if err != nil {
		return err
	}
	defer db.Close()
	events, err := seed(ctx, db.pool, db.store, cfg.events)
	if err == nil {
		err = register(ctx, cfg, db.pool, db.store, []projections.Projection{yp, goactivity.OrderActivity{}})
	}
	db.store.Close() // the rebuilds run in processes of their own
	if err != nil {
		return err
	}
	conf, err := rebuildConfig()
	if err != nil {
		return err
	}
	defer os.Remove(conf)

	flags := []string{"--projections", filepath.Dir(path)}
	var yamlRates, goRates, plainRates, cpu, pgCores []float64
	var yamlRSS, goRSS int64
	for range cfg.runs {
		r, err := rebuildOnce(ctx, binary, flags, db.url, conf, db.pool, activityName, events)
		if err != nil {
			return err
		}
		yamlRates, cpu, pgCores = append(yamlRates, r.rate), append(cpu, r.cpuShare), append(pgCores, r.pgCores)
		yamlRSS = max(yamlRSS, r.rssKB)
		r, err = rebuildOnce(ctx, binary, flags, db.url, conf, db.pool, goactivity.Name, events)
		if err != nil {
			return err
		}
		goRates = append(goRates, r.rate)
		goRSS = max(goRSS, r.rssKB)
		d, err := plainBatching(ctx, db.pool, db.url, spec, yp, projections.RebuildBatchDefault)
		if err != nil {
			return fmt.Errorf("plain batching: %w", err)
		}
		plainRates = append(plainRates, float64(events)/d.Seconds())
	}
	if err := exact(ctx, db, activityName); err != nil {
		return err
	}
	for _, other := range []pgx.Identifier{{"readmodel", goactivity.Name}, {plainSchema, activityName}} {
		if err := sameRows(ctx, db.pool, pgx.Identifier{"readmodel", activityName}, other); err != nil {
			return err
		}
	}
	yamlRate, goRate, plainRate := median(yamlRates), median(goRates), median(plainRates)
	pg := "PostgreSQL not measured"
	if median(pgCores) >= 0 {
		pg = fmt.Sprintf("PostgreSQL %.2f cores", median(pgCores))
	}
	label := fmt.Sprintf("%.1fM events", float64(events)/1e6)
	rep.add(fmt.Sprintf("rebuild %s (YAML: a statement per event), %s (median of %d; RSS peak %d MiB; sightline process CPU %.0f%% of wall, %s); reference: plain batching, its handlers' SQL with the same bindings pipelined (pgx.Batch), a transaction of %d events each and a checkpoint UPDATE",
		activityName, label, cfg.runs, yamlRSS/1024, 100*median(cpu), pg, projections.RebuildBatchDefault),
		perSecond(yamlRate), "plain batching "+perSecond(plainRate), fmt.Sprintf("%.0f%% of plain batching", 100*yamlRate/plainRate),
		"≥ 50k/s and ≥ 80% of plain batching", yamlRate >= 50_000 && yamlRate >= 0.8*plainRate)
	rep.add(fmt.Sprintf("rebuild %s against the same read model as a Go projection (%s: two set-based statements per batch; RSS peak %d MiB), rebuilt the same way by the same binary, %s (median of %d)",
		activityName, goactivity.Name, goRSS/1024, label, cfg.runs),
		perSecond(yamlRate), "Go projection "+perSecond(goRate), fmt.Sprintf("YAML %.2f× the Go projection; the Go one %.0f%% of plain batching", yamlRate/goRate, 100*goRate/plainRate),
		"", true)
	if cfg.events >= 5_000_000 {
		rep.add(fmt.Sprintf("rebuild %s (YAML), %s: RSS peak", activityName, label), fmt.Sprintf("%d MiB", yamlRSS/1024), "", "", "< 256 MiB", yamlRSS < 256*1024)
	}
	return nil
}

// buildActivity builds cmd/sightline-activity, the sightline binary with
// goactivity's projection, into dir.
func buildActivity(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/sightlinehq/sightline/bench").Output()
	benchDir := strings.TrimSpace(string(out))
	if err != nil || benchDir == "" {
		return "", fmt.Errorf("find the bench module to build cmd/sightline-activity (run the bench from it, cd bench && go run .): %v", errors.Join(err, exitStderr(err)))
	}
	bin := filepath.Join(dir, "sightline-activity")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sightline-activity")
	build.Dir = benchDir
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build cmd/sightline-activity: %w", err)
	}
	return bin, nil
}

// loadSpec reads a declarative projection's file as declarative.Load does,
// for its handlers' SQL.
func loadSpec(path string) (declarative.Spec, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return declarative.Spec{}, err
	}
	var spec declarative.Spec
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&spec); err != nil {
		return declarative.Spec{}, fmt.Errorf("%s: %w", path, err)
	}
	return spec, nil
}

// plainSchema holds plain batching's tables.
const plainSchema = "bench_plain"

// plainParams are the event fields plain batching binds, with the types
// the declarative projection casts them to.
var plainParams = map[string]string{"stream_id": "text", "type": "text", "data": "jsonb", "created_at": "timestamptz"}

// batchedEvent is an event as plain batching reads it: what the handlers
// name, and the position for the checkpoint.
type batchedEvent struct {
	position  int64
	streamID  string
	typ       string
	data      []byte
	createdAt time.Time
}

func (e *batchedEvent) value(name string) any {
	switch name {
	case "stream_id":
		return e.streamID
	case "type":
		return e.typ
	case "data":
		return string(e.data) // as the declarative projection binds it
	default:
		return e.createdAt
	}
}

// plainBatching is the best a user could write by hand for a declarative
// projection's read model without set-based statements: it reads every
// event in position order, as the ceiling does, in one query on one
// connection, while another applies them a batch of batchSize at a time:
// the handlers' statements, with :names bound as the declarative
// projection binds them, each event's statement queued in one pgx.Batch
// with an UPDATE of a checkpoint, in one transaction. It creates the tables
// in plainSchema with the projection's own Setup, and returns the time from
// the first read to the last commit.
func plainBatching(ctx context.Context, pool *pgxpool.Pool, dbURL string, spec declarative.Spec, p *declarative.Projection, batchSize int) (time.Duration, error) {
	type handler struct {
		sql    string
		params []string
	}
	handlers := map[string]handler{}
	for typ, sql := range spec.Handlers {
		toks, err := pgsql.Scan(sql)
		if err != nil {
			return 0, err
		}
		n, err := pgsql.Bind(toks, func(name string) (string, error) {
			if t, ok := plainParams[name]; ok {
				return t, nil
			}
			return "", fmt.Errorf("handler %s: plain batching does not bind :%s", typ, name)
		})
		if err != nil {
			return 0, err
		}
		handlers[typ] = handler{sql: n.SQL, params: n.Params}
	}
	if _, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS `+plainSchema+` CASCADE`); err != nil {
		return 0, err
	}
	connCfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return 0, err
	}
	connCfg.RuntimeParams["search_path"] = plainSchema + ", public" // the handlers name their tables unqualified
	conn, err := pgx.ConnectConfig(ctx, connCfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))

	start := time.Now()
	if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+plainSchema+`;
			CREATE TABLE `+plainSchema+`.checkpoint (id int PRIMARY KEY, position bigint NOT NULL);
			INSERT INTO `+plainSchema+`.checkpoint VALUES (1, 0)`); err != nil {
			return err
		}
		return p.Setup(ctx, tx, plainSchema)
	}); err != nil {
		return 0, err
	}

	read, stop := context.WithCancel(ctx)
	defer stop()
	batches := make(chan []batchedEvent, 2) // reading overlaps with writing
	readErr := make(chan error, 1)
	go func() {
		defer close(batches)
		rows, err := pool.Query(read, `SELECT position, stream_id, type, data, created_at FROM sightline.events ORDER BY position`)
		if err != nil {
			readErr <- err
			return
		}
		var e batchedEvent
		batch := make([]batchedEvent, 0, batchSize)
		_, err = pgx.ForEachRow(rows, []any{&e.position, &e.streamID, &e.typ, &e.data, &e.createdAt}, func() error {
			batch = append(batch, e)
			if len(batch) == batchSize {
				select {
				case batches <- batch:
				case <-read.Done():
					return read.Err()
				}
				batch = make([]batchedEvent, 0, batchSize)
			}
			return nil
		})
		if err == nil && len(batch) > 0 {
			select {
			case batches <- batch:
			case <-read.Done():
				err = read.Err()
			}
		}
		readErr <- err
	}()
	for batch := range batches {
		b := &pgx.Batch{}
		for i := range batch {
			e := &batch[i]
			h, ok := handlers[e.typ]
			if !ok {
				continue
			}
			args := make([]any, len(h.params))
			for j, name := range h.params {
				args[j] = e.value(name)
			}
			b.Queue(h.sql, args...)
		}
		b.Queue(`UPDATE `+plainSchema+`.checkpoint SET position = $1 WHERE id = 1`, batch[len(batch)-1].position)
		if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return tx.SendBatch(ctx, b).Close() }); err != nil {
			stop()
			for range batches { // let the reader end
			}
			return 0, err
		}
	}
	if err := <-readErr; err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// sameRows fails unless tables a and b hold the same rows.
func sameRows(ctx context.Context, pool *pgxpool.Pool, a, b pgx.Identifier) error {
	var differ, rows int64
	if err := pool.QueryRow(ctx, fmt.Sprintf(`SELECT (SELECT count(*) FROM ((TABLE %[1]s EXCEPT ALL TABLE %[2]s) UNION ALL (TABLE %[2]s EXCEPT ALL TABLE %[1]s)) d), (SELECT count(*) FROM %[1]s)`,
		a.Sanitize(), b.Sanitize())).Scan(&differ, &rows); err != nil {
		return err
	}
	if differ > 0 {
		return fmt.Errorf("%s differs from %s in %d rows (of %d): one of them is wrong", b.Sanitize(), a.Sanitize(), differ, rows)
	}
	return nil
}
