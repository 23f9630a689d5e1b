// Package declarative builds projections from YAML: stream prefixes,
// tables as CREATE TABLE statements and, per event type, the SQL to run for
// each event, naming the event's fields as :data, :stream_id, :revision and
// so on. They run on the same projector, with the same guarantees, as
// projections written in Go: each batch's statements are pipelined in one
// round trip and commit with the checkpoint.
//
// It owns the parsing and checking of the YAML and the translation of
// named parameters; it trusts the SQL it is given, which comes from the
// operator's files, never from requests.
package declarative
