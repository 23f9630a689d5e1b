// Package testdb gives each test a fresh, migrated PostgreSQL database,
// copied from a template that is migrated once per schema version, and
// drops it when the test ends. Tests never mock PostgreSQL: when the server
// in TEST_DATABASE_URL (default: the local one) cannot be reached they fail
// with a message that says so; they do not skip. (The one test that does
// skip, eventstore/esdb's TestContractOnRealServer, skips for want of a
// real EventStoreDB, when SIGHTLINE_TEST_ESDB_URL is unset, not of
// PostgreSQL.)
package testdb
