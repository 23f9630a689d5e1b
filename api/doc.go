// Package api is sightline's HTTP API, built on echo: health and
// readiness, Prometheus metrics and projection status. It reads what the
// projector and the database expose and never writes a read model itself.
package api
