// Package api is sightline's HTTP API, built on echo: health and
// readiness, Prometheus metrics, projection status and each projection's
// last verify (verify.go), every projection's declared queries
// (queries.go) with their staleness headers and read-your-writes by
// position or by stream revision, the OpenAPI document of it all
// (openapi.go, built from the route table in routes.go), appends to the
// embedded store, and the admin routes: parked events and rebuilds.
// Every read-model response says how fresh it is (staleness.go); every
// error is an RFC 9457 problem document. It serves no read model of its
// own: the example endpoints are the example projections' declared
// queries. It never writes a read model; queries run on a read-only pool
// with a statement timeout, and no SQL is built from request text.
package api
