package esdb

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	client "github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/sightlinehq/sightline/internal/redact"
)

// schemes maps each connection-string scheme, lower-case, to the one the
// client (v4.2.0) parses: it knows only esdb and esdb+discover, and KurrentDB
// servers speak the same protocol. kurrent and kdb are the synonyms the
// KurrentDB clients accept.
var schemes = map[string]string{
	"esdb":               "esdb",
	"kurrentdb":          "esdb",
	"kurrent":            "esdb",
	"kdb":                "esdb",
	"esdb+discover":      "esdb+discover",
	"kurrentdb+discover": "esdb+discover",
	"kurrent+discover":   "esdb+discover",
	"kdb+discover":       "esdb+discover",
}

// IsURL reports whether s is an EventStoreDB or KurrentDB connection string
// by its scheme: esdb://, esdb+discover://, kurrentdb:// or
// kurrentdb+discover:// (or kurrent:// or kdb://, with or without
// +discover), in any case. It does not look at the rest; ParseURL does.
func IsURL(s string) bool {
	_, _, ok := cutScheme(s)
	return ok
}

// cutScheme splits s at "://" and returns the client's scheme for s's.
func cutScheme(s string) (scheme, rest string, ok bool) {
	name, rest, found := strings.Cut(s, "://")
	if !found {
		return "", "", false
	}
	scheme, ok = schemes[strings.ToLower(name)]
	return scheme, rest, ok
}

// ParseURL parses an EventStoreDB or KurrentDB connection string, of any of
// the schemes IsURL accepts, into the client's configuration, exactly as
// the client reads the same string with the scheme esdb:// or
// esdb+discover:// (New then sets its own default for maxDiscoverAttempts).
// A user name or password with a /, ?, # or @ must be percent-encoded.
//
// Its errors show the connection string without its password or secret
// parameters (redact.URL), and never quote any part of a password.
func ParseURL(s string) (*client.Configuration, error) {
	shown := redact.URL(s)
	scheme, rest, ok := cutScheme(s)
	if !ok {
		return nil, fmt.Errorf("esdb: connection string %q: want an esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover:// URL", shown)
	}
	// The last @ ends the user info. A /, ? or # before it means a user
	// name or password that was not percent-encoded: the client would read
	// part of it as the host, port or path, and name it in its errors.
	at := strings.LastIndexByte(rest, '@')
	userinfo := ""
	if at >= 0 {
		userinfo = rest[:at]
		if strings.ContainsAny(userinfo, "/?#") {
			return nil, fmt.Errorf("esdb: connection string %q: a /, ? or # before its last @: the user name and password must be percent-encoded (/ as %%2F, ? as %%3F, # as %%23, @ as %%40), and so must an @ after them", shown)
		}
	}
	_, password, hasPassword := strings.Cut(userinfo, ":")
	hasPassword = hasPassword && password != ""
	normalized := scheme + "://" + rest
	// Where the URL does not parse, the client reads a list of hosts by
	// turning its commas into slashes, and a comma of the password with
	// them.
	if _, err := url.Parse(normalized); err != nil && hasPassword && strings.Contains(userinfo, ",") {
		return nil, fmt.Errorf("esdb: connection string %q is not a valid URL (a comma in the password must be percent-encoded as %%2C)", shown)
	}
	settings, err := client.ParseConnectionString(normalized)
	if err != nil {
		var uerr *url.Error
		var eerr url.EscapeError
		switch {
		case errors.As(err, &eerr) && hasPassword:
			// It quotes the bad %-escape, which may be the password's.
			return nil, fmt.Errorf("esdb: connection string %q: a %% that does not begin a valid %%-escape (a %% in the user name or password must be encoded as %%25)", shown)
		case errors.As(err, &uerr):
			// It quotes the whole string. What it wraps quotes only the
			// host or port that failed: the checks above leave the user
			// info whole before the last @, where url.Parse looks for it.
			err = uerr.Err
		}
		return nil, fmt.Errorf("esdb: connection string %q: %w", shown, err)
	}
	return settings, nil
}
