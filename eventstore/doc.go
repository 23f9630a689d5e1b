// Package eventstore defines what sightline reads events from: the Store
// interface, positions, expected revisions, filters and subscriptions.
//
// It owns the value types shared by the stores and the projector, and nothing
// else: it talks to no database. Implementations live in subpackages
// (pgstore for the embedded PostgreSQL store, esdb for EventStoreDB and
// KurrentDB); storetest is the contract suite every implementation passes;
// chaos wraps a Store to inject the faults real deliveries have
// (duplicates, reordering, drops, delays) for tests and drills.
package eventstore
