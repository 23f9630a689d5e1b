// Package chaos wraps an eventstore.Store so that its subscriptions deliver
// the way real networks and brokers do: events twice, out of order within a
// stream, late, lost (when a later event reveals the loss), after random
// delays, and subscriptions that fail. Tests and failure drills run the
// projector through it to prove the read models stay exact. It injects
// faults only into deliveries; it never changes what the store holds.
package chaos
