package projections

import (
	"cmp"
	"errors"
	"log/slog"
	"time"
)

// Defaults for Config.
const (
	BatchSizeDefault      = 2000
	StallAfterDefault     = 10 * time.Second
	FailAfterDefault      = 30 * time.Second
	StatusIntervalDefault = time.Second
	LiveLagDefault        = time.Second
	SourceDefault         = "postgres"
	MaxAttemptsDefault    = 5
	RetryInitialDefault   = 100 * time.Millisecond
	RetryMaxDefault       = 2 * time.Second
	RebuildBatchDefault   = 10000
	RetiredGraceDefault   = 10 * time.Minute
	CommitWaitDefault     = 2 * time.Millisecond
)

// Config configures a Runner.
type Config struct {
	// BatchSize is how many events one transaction applies at most; a batch
	// takes whatever has arrived, so live batches are small. Defaults to
	// BatchSizeDefault.
	BatchSize int
	// StallAfter is how long a projection may be behind without advancing
	// before its status is stalled. Defaults to StallAfterDefault.
	StallAfter time.Duration
	// StatusInterval is how often the status row in sightline.projections
	// and the lag metrics are refreshed. Defaults to StatusIntervalDefault.
	StatusInterval time.Duration
	// LiveLag is the lag under which a projection that is behind the head
	// still counts as live (keeping up with traffic) rather than
	// catching up. Defaults to LiveLagDefault.
	LiveLag time.Duration
	// FailAfter is how long batches may keep failing on something no
	// single event is to blame for (the database unreachable, a table
	// renamed under the projector, a serialization failure) before the
	// projection reports failed instead of stalled. A handler failing on
	// every event parks each one instead. Defaults to FailAfterDefault.
	FailAfter time.Duration
	// ProcessID names this process among those sharing the projections
	// (a Daemon's); its connections should carry ApplicationName(ProcessID)
	// as their application_name. Defaults to NewProcessID().
	ProcessID string
	// Lease is how long a Daemon holds a projection without renewing it;
	// it renews every sixth of it. Defaults to LeaseDefault.
	Lease time.Duration
	// ServeOnly makes a Daemon apply none of its projections: it follows
	// the checkpoints that the processes applying them commit, woken by
	// their notifications, so that its reads say how fresh they are and
	// wait for their writes.
	ServeOnly bool
	// Source names the event source in metrics. Defaults to SourceDefault.
	Source string
	// MaxAttempts is how many times an event whose handler fails is tried
	// before it is parked; errors marked Permanent park it at once.
	// Defaults to MaxAttemptsDefault.
	MaxAttempts int
	// RetryInitialInterval and RetryMaxInterval bound the jittered
	// exponential backoff between an event's attempts. Default to
	// RetryInitialDefault and RetryMaxDefault.
	RetryInitialInterval, RetryMaxInterval time.Duration
	// RebuildBatchSize is how many events one transaction of a rebuild (or a
	// verify's replay) applies at most. Defaults to RebuildBatchDefault.
	RebuildBatchSize int
	// RetiredGrace is how long a generation replaced by a rebuild keeps its
	// tables before they are dropped. Defaults to RetiredGraceDefault.
	RetiredGrace time.Duration
	// CommitWait is how long a Daemon's live batch may wait for the
	// batches its other projections have in hand, to commit with them in
	// one transaction: a projection with nothing in hand is not waited
	// for. Defaults to CommitWaitDefault; a negative CommitWait commits
	// every batch alone.
	CommitWait time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics defaults to a set registered nowhere.
	Metrics *Metrics
}

// WithDefaults returns c with its zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.BatchSize = cmp.Or(c.BatchSize, BatchSizeDefault)
	c.StallAfter = cmp.Or(c.StallAfter, StallAfterDefault)
	c.StatusInterval = cmp.Or(c.StatusInterval, StatusIntervalDefault)
	c.LiveLag = cmp.Or(c.LiveLag, LiveLagDefault)
	c.FailAfter = cmp.Or(c.FailAfter, FailAfterDefault)
	c.Lease = cmp.Or(c.Lease, LeaseDefault)
	if c.ProcessID == "" {
		c.ProcessID = NewProcessID()
	}
	c.Source = cmp.Or(c.Source, SourceDefault)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, MaxAttemptsDefault)
	c.RetryInitialInterval = cmp.Or(c.RetryInitialInterval, RetryInitialDefault)
	c.RetryMaxInterval = cmp.Or(c.RetryMaxInterval, RetryMaxDefault)
	c.RebuildBatchSize = cmp.Or(c.RebuildBatchSize, RebuildBatchDefault)
	c.RetiredGrace = cmp.Or(c.RetiredGrace, RetiredGraceDefault)
	c.CommitWait = cmp.Or(c.CommitWait, CommitWaitDefault)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
	return c
}

func (c Config) validate() error {
	if c.BatchSize < 1 || c.StallAfter <= 0 || c.FailAfter <= 0 || c.Lease <= 0 || c.StatusInterval <= 0 || c.LiveLag <= 0 ||
		c.MaxAttempts < 1 || c.RetryInitialInterval <= 0 || c.RetryMaxInterval < c.RetryInitialInterval ||
		c.RebuildBatchSize < 1 || c.RetiredGrace < 0 {
		return errors.New("projections: BatchSize, RebuildBatchSize, StallAfter, StatusInterval, LiveLag, MaxAttempts and the retry intervals must be positive, the maximum interval at least the initial one, RetiredGrace not negative")
	}
	return nil
}
