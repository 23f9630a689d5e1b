// Package migrate owns sightline's database schema: the numbered
// migrations under migrations/ (embedded into the binary) and the one
// migrator that both `sightline migrate` and the tests run. It also creates
// the database when it is missing, and opens the connection pool the
// commands run on (Open). It knows nothing of projections' own
// read-model tables, which the projector creates per generation.
package migrate
