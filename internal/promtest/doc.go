// Package promtest is for the tests of the Prometheus and Grafana files
// under deploy/: it runs promtool, which they need (they fail, not skip,
// without it), and reads the metric selectors out of PromQL expressions
// (with the metricsql parser) so that the tests can hold them against a
// live /metrics. It knows nothing of
// sightline's metrics and is imported by tests only.
package promtest
