package projections

import (
	"fmt"
	"regexp"
)

// validName is what a projection's and a table's name must be: it names
// schemas (sl_<name>_g<n>) and readmodel views, whose identifiers
// PostgreSQL cuts at 63 bytes.
var validName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

// reservedViews are the readmodel views sightline itself keeps; no
// projection may declare a table of that name.
var reservedViews = map[string]bool{"projection_status": true}

// reservedNames are names no projection may take: GET
// /v1/projections/events is the status stream, not a projection's status.
var reservedNames = map[string]bool{"events": true}

// validate checks one projection's names and version.
func validate(p Projection) error {
	if !validName.MatchString(p.Name()) {
		return fmt.Errorf("projection name %q: want lower case letters, digits and _, starting with a letter, at most 40", p.Name())
	}
	if reservedNames[p.Name()] {
		return fmt.Errorf("projection name %q is reserved: /v1/projections/%s is the status stream", p.Name(), p.Name())
	}
	if p.Version() < 1 {
		return fmt.Errorf("projection %s: version must be at least 1", p.Name())
	}
	if n := SegmentsOf(p); n < 1 || n > MaxSegments {
		return fmt.Errorf("projection %s: segments must be from 1 to %d, not %d", p.Name(), MaxSegments, n)
	}
	seen := map[string]bool{}
	for _, t := range p.Tables() {
		switch {
		case !validName.MatchString(t):
			return fmt.Errorf("projection %s: table name %q: want lower case letters, digits and _, starting with a letter, at most 40", p.Name(), t)
		case reservedViews[t]:
			return fmt.Errorf("projection %s: table name %q is sightline's own view readmodel.%s", p.Name(), t, t)
		case seen[t]:
			return fmt.Errorf("projection %s: table %s is declared twice", p.Name(), t)
		}
		seen[t] = true
	}
	return nil
}

// Validate checks that projections can run side by side: each one's
// names are valid, and no two share a name or a table. Every table is a
// view of that name in the readmodel schema, so two projections declaring
// one would each repoint the other's view. Problems names both sources of
// each clash. NewDaemon and Check validate; so can a program before
// anything else.
func Validate(ps []Projection) error {
	var problems Problems
	names := map[string]string{}  // projection name → source
	tables := map[string]string{} // table → source
	for _, p := range ps {
		src := SourceOf(p)
		if err := validate(p); err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", src, err))
			continue
		}
		if other, dup := names[p.Name()]; dup {
			problems = append(problems, fmt.Errorf("%s: projection name %s is also %s's", src, p.Name(), other))
			continue
		}
		names[p.Name()] = src
		for _, t := range p.Tables() {
			if other, dup := tables[t]; dup {
				problems = append(problems, fmt.Errorf("%s: table %s (the view readmodel.%s) is also declared by %s", src, t, t, other))
				continue
			}
			tables[t] = src
		}
	}
	if len(problems) > 0 {
		return problems
	}
	return nil
}
