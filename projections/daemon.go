package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// Daemon runs a set of projections, one Runner each, and shares them with
// the other processes that run them on the same database: each projection
// is applied by the one process that holds its lease (sightline.owners);
// the others follow its checkpoint and serve its reads.
type Daemon struct {
	pool    *pgxpool.Pool
	runners []*Runner
	owners  *owners
	log     *slog.Logger

	cancel context.CancelFunc // ends following
	done   chan struct{}
}

// NewDaemon returns a Daemon for ps, all with the same configuration.
func NewDaemon(pool *pgxpool.Pool, store eventstore.Store, ps []Projection, cfg Config) (*Daemon, error) {
	if err := Validate(ps); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults() // one ProcessID for all
	d := &Daemon{pool: pool, log: cfg.Logger, done: make(chan struct{})}
	for _, p := range ps {
		r, err := NewRunner(pool, store, p, cfg)
		if err != nil {
			return nil, err
		}
		d.runners = append(d.runners, r)
	}
	var parts []*Runner
	for _, r := range d.runners {
		parts = append(parts, r.segmentRunners()...)
	}
	d.owners = newOwners(pool, parts, cfg)
	if cfg.CommitWait > 0 && len(parts) > 1 {
		newSharedCommits(cfg.CommitWait, parts)
	}
	return d, nil
}

// Start starts every projection; if one fails to start, those started are
// stopped again.
func (d *Daemon) Start(ctx context.Context) error {
	if err := d.owners.start(ctx); err != nil {
		return err
	}
	for i, r := range d.runners {
		if err := r.Start(ctx); err != nil {
			for _, started := range d.runners[:i] {
				_ = started.Stop(ctx)
			}
			d.owners.stop()
			_ = d.owners.release(ctx)
			_ = d.owners.leave(ctx)
			return err
		}
	}
	// Following starts once the runners have their checkpoints: a
	// notification is only ever a later one.
	followCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	go d.follow(followCtx)
	return nil
}

// Stop gives every projection up, so that another process takes them up
// at once (its claims wait for the batches in flight here), stops them
// (see Runner.Stop), and then leaves: the heartbeat goes on until then.
func (d *Daemon) Stop(ctx context.Context) error {
	d.owners.stop()
	if err := d.owners.release(ctx); err != nil {
		d.log.Warn("could not give the projections up; the others take them once the heartbeat stops", "error", err)
	}
	defer d.stopFollowing()
	defer func() { _ = d.owners.leave(ctx) }()
	return inParallel(d.runners, func(r *Runner) error { return r.Stop(ctx) })
}

// inParallel calls f on every runner at once and joins their errors.
func inParallel(runners []*Runner, f func(*Runner) error) error {
	errs := make(chan error, len(runners))
	for _, r := range runners {
		go func() { errs <- f(r) }()
	}
	var err error
	for range runners {
		err = errors.Join(err, <-errs)
	}
	return err
}

// Runners returns the daemon's runners, in the order given to NewDaemon.
func (d *Daemon) Runners() []*Runner { return d.runners }

// Runner returns the runner of the named projection, or nil.
func (d *Daemon) Runner(name string) *Runner {
	for _, r := range d.runners {
		if r.Name() == name {
			return r
		}
	}
	return nil
}

// follow listens for the checkpoints other processes commit and hands
// each to its runner, until ctx ends; it listens again after a lost
// connection (the status ticks read the checkpoints meanwhile).
func (d *Daemon) follow(ctx context.Context) {
	defer close(d.done)
	retry := backoff.NewExponentialBackOff(backoff.WithInitialInterval(100*time.Millisecond), backoff.WithMaxInterval(5*time.Second), backoff.WithMaxElapsedTime(0))
	for ctx.Err() == nil {
		err := d.listen(ctx, retry)
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("lost the checkpoints' notifications; listening again", "error", err)
		t := time.NewTimer(retry.NextBackOff())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
}

func (d *Daemon) listen(ctx context.Context, retry backoff.BackOff) error {
	conn, err := pgx.ConnectConfig(ctx, d.pool.Config().ConnConfig)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `LISTEN `+checkpointChannel); err != nil {
		return err
	}
	retry.Reset()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		var name string
		var p eventstore.Position
		var segment int // 0 from a process that does not say
		if got, _ := fmt.Sscan(n.Payload, &name, &p.Commit, &p.Prepare, &segment); got < 3 {
			continue // not one of ours
		}
		r := d.Runner(name)
		if r == nil || segment < 0 || segment >= r.Segments() || r.registration().segments != r.Segments() {
			// A generation split otherwise than the code (while a rebuild
			// changes the number) is followed by the status ticks, from
			// its lowest segment.
			continue
		}
		r.segmentRunners()[segment].follow(p)
	}
}

func (d *Daemon) stopFollowing() {
	if d.cancel != nil {
		d.cancel()
		<-d.done
	}
}
