package projections

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/eventstore"
)

// Daemon runs a set of projections, one Runner each.
type Daemon struct {
	runners []*Runner
}

// NewDaemon returns a Daemon for ps, all with the same configuration.
func NewDaemon(pool *pgxpool.Pool, store eventstore.Store, ps []Projection, cfg Config) (*Daemon, error) {
	if err := Validate(ps); err != nil {
		return nil, err
	}
	d := &Daemon{}
	for _, p := range ps {
		r, err := NewRunner(pool, store, p, cfg)
		if err != nil {
			return nil, err
		}
		d.runners = append(d.runners, r)
	}
	return d, nil
}

// Start starts every projection; if one fails to start, those started are
// stopped again.
func (d *Daemon) Start(ctx context.Context) error {
	for i, r := range d.runners {
		if err := r.Start(ctx); err != nil {
			for _, started := range d.runners[:i] {
				_ = started.Stop(ctx)
			}
			return err
		}
	}
	return nil
}

// Stop stops every projection; see Runner.Stop.
func (d *Daemon) Stop(ctx context.Context) error {
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
