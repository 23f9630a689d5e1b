// Package console is the operator console the binary serves at /ui/: an
// overview of every projection (status, position, lag, rate, parked
// events, owner, rebuild progress) and a page per projection (lag and rate
// over the last minutes, parked events with Retry and Skip, Rebuild, the
// last verify, the declared queries with a form to try each).
//
// It owns the pages and their assets, embedded in the binary, and the
// headers they are served with: a strict Content-Security-Policy, no
// inline script, nothing from elsewhere. The pages hold no data: their
// script reads the HTTP API (the status stream, GET /v1/projections/events,
// keeps them live) with the token the operator gives, kept in the tab's
// sessionStorage and sent as a Bearer token, never as a cookie.
package console
