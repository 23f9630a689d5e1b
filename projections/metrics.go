package projections

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the projector's Prometheus metrics, registered on the
// Registerer given to NewMetrics. Labels never carry stream or event ids.
type Metrics struct {
	EventsApplied    *prometheus.CounterVec
	EventsSkipped    *prometheus.CounterVec
	GapsRepaired     *prometheus.CounterVec
	Lag              *prometheus.GaugeVec
	CaughtUp         *prometheus.GaugeVec
	BatchDuration    *prometheus.HistogramVec
	BatchEvents      *prometheus.HistogramVec
	EndToEnd         *prometheus.HistogramVec
	Parked           *prometheus.GaugeVec
	EventsParked     *prometheus.CounterVec
	HandlerRetries   *prometheus.CounterVec
	BatchRetries     *prometheus.CounterVec
	RebuildProgress  *prometheus.GaugeVec
	SourceReconnects *prometheus.CounterVec
	// Status has a series per projection and status, 1 for the one the
	// projection is in and 0 for the others.
	Status *prometheus.GaugeVec
	// Owned is 1 for the projections (and segments) this process applies.
	Owned *prometheus.GaugeVec
	// OwnershipChanges counts the projections this process took up.
	OwnershipChanges *prometheus.CounterVec
	// BatchesShared counts the batches committed in one transaction with
	// other projections' (see Config.CommitWait), SharedCommits those
	// transactions.
	BatchesShared *prometheus.CounterVec
	SharedCommits prometheus.Counter
}

// Reasons an event is skipped, the values of the reason label.
const (
	SkipDuplicate   = "duplicate"
	SkipGapUnfilled = "gap_unfilled"
	SkipDeletedLink = "deleted_link"
	// SkipParkedEvent counts parked events an operator skipped.
	SkipParkedEvent = "parked"
)

// NewMetrics creates the metrics and registers them on reg.
// endToEndBuckets bound sightline_end_to_end_seconds: 1 ms to a minute,
// finest where freshness targets are set, with a bound at 10 ms and at
// 50 ms, so that the share of events visible within either is counted,
// not interpolated.
var endToEndBuckets = []float64{
	0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075,
	0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60,
}

func NewMetrics(reg prometheus.Registerer) *Metrics {
	name := func(n string) string { return prometheus.BuildFQName("sightline", "", n) }
	p := []string{"projection"}
	m := &Metrics{
		EventsApplied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("events_applied_total"),
			Help: "Events applied to a read model."}, p),
		EventsSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("events_skipped_total"),
			Help: "Events not applied: duplicates and late arrivals, revisions the store could not supply, links to deleted events."}, []string{"projection", "reason"}),
		GapsRepaired: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("gaps_repaired_total"),
			Help: "Revision gaps filled by reading the stream back from the store."}, p),
		Lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("projection_lag_seconds"),
			Help: "Age of the oldest event the read model does not reflect yet; 0 when caught up."}, p),
		CaughtUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("projection_caught_up"),
			Help: "1 when the projection has applied everything the store has, else 0."}, p),
		BatchDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name("batch_duration_seconds"),
			Help: "Time to apply one batch, from taking it to commit.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, p),
		BatchEvents: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name("batch_events"),
			Help: "Events per applied batch.", Buckets: prometheus.ExponentialBuckets(1, 4, 8)}, p),
		EndToEnd: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name("end_to_end_seconds"),
			Help: "Time from an event's write to its visibility in the read model.", Buckets: endToEndBuckets}, p),
		Parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("parked_events"),
			Help: "Events in the dead-letter table not yet retried or skipped: those that failed and those held behind them."}, p),
		EventsParked: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("events_parked_total"),
			Help: "Events parked after their handler failed its last attempt (each holds its stream)."}, p),
		HandlerRetries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("handler_retries_total"),
			Help: "Failed handler attempts on one event that were tried again before parking."}, p),
		BatchRetries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("batch_retries_total"),
			Help: "Batches retried whole from the checkpoint after a failure no event caused (connection lost, server restarting, serialization failure)."}, p),
		RebuildProgress: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("rebuild_progress_ratio"),
			Help: "Progress of the rebuild under way, by position, 0 to 1; 1 when none is."}, p),
		SourceReconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("source_reconnects_total"),
			Help: "Subscriptions to the event source opened again after a failure."}, []string{"source"}),
		Status: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("projection_status"),
			Help: "1 for the status the projection is in (live, catching-up, rebuilding, stalled, failed, degraded, stopped), 0 for the others."}, []string{"projection", "status"}),
		Owned: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name("projection_owned"),
			Help: "1 while this process applies the projection's segment, else 0 (another process does, or none)."}, []string{"projection", "segment"}),
		OwnershipChanges: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("ownership_changes_total"),
			Help: "Times this process took a projection up: at start, from a process that gave it up, or from one that stopped renewing."}, p),
		BatchesShared: prometheus.NewCounterVec(prometheus.CounterOpts{Name: name("batches_shared_total"),
			Help: "Live batches committed in one transaction with other projections' batches."}, p),
		SharedCommits: prometheus.NewCounter(prometheus.CounterOpts{Name: name("shared_commits_total"),
			Help: "Transactions that committed the live batches of several projections at once."}),
	}
	if reg != nil {
		reg.MustRegister(m.EventsApplied, m.EventsSkipped, m.GapsRepaired, m.Lag, m.CaughtUp, m.BatchDuration,
			m.BatchEvents, m.EndToEnd, m.Parked, m.EventsParked, m.HandlerRetries, m.BatchRetries, m.RebuildProgress, m.SourceReconnects, m.Status, m.Owned, m.OwnershipChanges,
			m.BatchesShared, m.SharedCommits)
	}
	return m
}

// forProjection resolves the label values once per projector.
type projectionMetrics struct {
	applied, duplicate, gapUnfilled, gapsRepaired prometheus.Counter
	deletedLink, skippedParked                    prometheus.Counter
	parked, handlerRetries, batchRetries          prometheus.Counter
	lag, caughtUp, parkedNow, rebuildProgress     prometheus.Gauge
	batchDuration, batchEvents, endToEnd          prometheus.Observer
	reconnects                                    prometheus.Counter
	status                                        map[string]prometheus.Gauge
	owned                                         prometheus.Gauge
	ownershipChanges                              prometheus.Counter
	batchesShared, sharedCommits                  prometheus.Counter
}

// setStatus marks status as the projection's, and no other.
func (pm projectionMetrics) setStatus(status string) {
	for s, g := range pm.status {
		if s == status {
			g.Set(1)
		} else {
			g.Set(0)
		}
	}
}

func (m *Metrics) forProjection(name, source string, segment int) projectionMetrics {
	pm := projectionMetrics{
		applied:        m.EventsApplied.WithLabelValues(name),
		duplicate:      m.EventsSkipped.WithLabelValues(name, SkipDuplicate),
		gapUnfilled:    m.EventsSkipped.WithLabelValues(name, SkipGapUnfilled),
		deletedLink:    m.EventsSkipped.WithLabelValues(name, SkipDeletedLink),
		skippedParked:  m.EventsSkipped.WithLabelValues(name, SkipParkedEvent),
		parked:         m.EventsParked.WithLabelValues(name),
		handlerRetries: m.HandlerRetries.WithLabelValues(name),
		batchRetries:   m.BatchRetries.WithLabelValues(name),
		parkedNow:      m.Parked.WithLabelValues(name),
		gapsRepaired:   m.GapsRepaired.WithLabelValues(name),
		lag:            m.Lag.WithLabelValues(name),
		caughtUp:       m.CaughtUp.WithLabelValues(name),
		batchDuration:  m.BatchDuration.WithLabelValues(name),
		batchEvents:    m.BatchEvents.WithLabelValues(name),
		endToEnd:       m.EndToEnd.WithLabelValues(name),
		reconnects:     m.SourceReconnects.WithLabelValues(source),

		rebuildProgress: m.RebuildProgress.WithLabelValues(name),
	}
	pm.rebuildProgress.Set(1) // no rebuild running: the read model is whole
	pm.owned = m.Owned.WithLabelValues(name, strconv.Itoa(segment))
	pm.ownershipChanges = m.OwnershipChanges.WithLabelValues(name)
	pm.batchesShared, pm.sharedCommits = m.BatchesShared.WithLabelValues(name), m.SharedCommits
	pm.status = map[string]prometheus.Gauge{}
	for _, s := range Statuses {
		pm.status[s] = m.Status.WithLabelValues(name, s)
	}
	return pm
}
