// Package redact keeps secrets out of what sightline shows: it masks the
// password and token-like parameters of connection strings, and wraps a
// log handler so that no line carries a known secret, whoever wrote it.
package redact
