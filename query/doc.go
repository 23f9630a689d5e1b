// Package query owns declared queries: the named reads of a projection's
// tables that the API serves at /v1/projections/{name}/queries/{query}.
// A query is declared the same way in Go (projections.Queryable) and in
// YAML (package declarative): a name, typed parameters, one SELECT, and
// either one row or pages ordered by a unique key.
//
// Its path, in the order the code runs it: Compile checks a declaration on
// its own (names, types, defaults, the statement's shape, which :name
// parameters it uses; internal/pgsql lexes the SQL); Check prepares it in
// the caller's transaction against the projection's tables and runs it
// once, read-only and on no rows, so that what is not one read statement
// or does not plan is refused at load with PostgreSQL's reason; Bind reads
// a request's values into typed arguments, refusing what does not parse;
// Queue puts the page's statement (the query as a subquery, a keyset
// condition after the cursor, the ordering and the limit) on a pgx.Batch;
// the Result holds the rows encoded as JSON or CSV and the next cursor.
//
// Values are always bound, never spliced: every statement it builds comes
// from the declaration alone, and a request chooses only among them and
// gives the values. It does not decide how fresh an answer is, which
// transaction a query runs in or whom it answers: the API runs queries on
// a read-only pool with a statement timeout, and package projections says
// how far each projection has got.
package query
