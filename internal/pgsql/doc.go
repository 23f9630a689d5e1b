// Package pgsql reads PostgreSQL's SQL as PostgreSQL's lexer does, far
// enough to find what sightline adds to it: the :name parameters of
// declarative handlers and declared queries, and where a statement ends.
// It knows string literals of every kind (standard, E'…' with backslash
// escapes, B, X, N and U& ones), quoted identifiers, dollar quoting, nested
// /* */ comments, -- comments, :: casts and positional $n parameters, so
// that a colon or a semicolon inside any of them is left alone.
//
// It owns no SQL and runs none: it only splits and rewrites the text it is
// given, which comes from the operator's projection files and Go code,
// never from requests.
package pgsql
