// Package simulate writes realistic order traffic for the example domain:
// orders placed by a set of customers, most of them paid, shipped and
// delivered, some cancelled, some paid in two instalments, their events
// interleaved across concurrent writers at a chosen rate. It only appends
// through eventstore.Store, with exact expected revisions.
package simulate
