package projections

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// Daemon runs a set of projections, one Runner each, and shares them with
// the other processes that run them on the same database: each projection
// is applied by the one process that holds its lease (sightline.owners);
// the others follow its checkpoint and serve its reads.
type Daemon struct {
	runners []*Runner
	owners  *owners
}

// NewDaemon returns a Daemon for ps, all with the same configuration.
func NewDaemon(pool *pgxpool.Pool, store eventstore.Store, ps []Projection, cfg Config) (*Daemon, error) {
	if err := Validate(ps); err != nil {
		return nil, err
	}
	d := &Daemon{}
	cfg = cfg.WithDefaults() // one ProcessID for all
	for _, p := range ps {
		r, err := NewRunner(pool, store, p, cfg)
		if err != nil {
			return nil, err
		}
		d.runners = append(d.runners, r)
	}
	d.owners = newOwners(pool, d.runners, cfg)
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
			return err
		}
	}
	return nil
}

// Stop stops every projection (see Runner.Stop), then gives them up, so
// that another process takes them up at once.
func (d *Daemon) Stop(ctx context.Context) error {
	d.owners.stop()
	defer func() { _ = d.owners.release(ctx) }()
	errs := make(chan error, len(d.runners))
	for _, r := range d.runners {
		go func() { errs <- r.Stop(ctx) }()
	}
	var err error
	for range d.runners {
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
