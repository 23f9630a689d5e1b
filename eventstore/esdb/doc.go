// Package esdb reads events from EventStoreDB or KurrentDB through the
// official Go client (github.com/EventStore/EventStore-Client-Go/v4), as an
// eventstore.Store: catch-up subscriptions to $all with a server-side filter
// or to a category stream ($ce-<category>, links resolved), resumed from a
// checkpoint of commit and prepare positions; the server's checkpoint
// messages advance a subscription whose filter matches nothing; links to
// deleted events are counted and passed over; appends with expected
// revisions; stream reads for gap repair; the head of $all.
//
// Its connection strings are URLs of the schemes esdb://, esdb+discover://,
// kurrentdb:// and kurrentdb+discover:// (IsURL, ParseURL); the client knows
// only the first two, and KurrentDB speaks the same protocol, so the others
// are read as those. Errors show a connection string without its password.
//
// It owns the client and its connection. The client does not resubscribe
// after a drop; Recv returns the error and the projector subscribes again
// from its checkpoint. When the client gives up connecting for good, the
// Store replaces it. esdbtest is a test double of the server's wire protocol
// for the tests; the same contract suite runs against a real server when
// SIGHTLINE_TEST_ESDB_URL is set, and that test skips when it is not. The
// other tests, the rebuild and the drops and restarts among them, run only
// against esdbtest.
package esdb
