// Package api is sightline's HTTP API, built on echo: health and
// readiness, Prometheus metrics, projection status, the example read
// models with their staleness headers and read-your-writes, appends to the
// embedded store, and the admin routes: parked events and rebuilds. Every read-model response says how fresh it is
// (staleness.go); every error is an RFC 9457 problem document. It reads
// what the projector and the database expose and never writes a read model
// itself; no SQL is built from request text.
package api
