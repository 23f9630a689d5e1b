// Package storetest is the contract every eventstore.Store implementation
// passes: appends with expected revisions and idempotent retries, stream
// reads, subscriptions (exclusive starts, filters, a filter that matches
// nothing still advancing, catch-up then live) and position tokens. Each
// implementation's tests call Run with a constructor for an empty store.
package storetest
