package eventstore

import (
	"cmp"
	"fmt"
	"strconv"
	"strings"
)

// Position is a point in a store's global order. Positions of one store are
// totally ordered; comparing positions of different stores means nothing.
//
// The embedded store uses one number and sets Commit and Prepare to it;
// EventStoreDB has a commit and a prepare position. A position renders as
// "N" when both are equal and as "C/P" otherwise, and parses back exactly.
// The zero Position is the start of the store, before every event.
type Position struct {
	Commit  uint64
	Prepare uint64
}

// Start is the position before every event.
var Start = Position{}

// At returns the single-number position n.
func At(n uint64) Position { return Position{Commit: n, Prepare: n} }

// Compare returns -1, 0 or +1 as p is before, equal to or after q.
func (p Position) Compare(q Position) int {
	if c := cmp.Compare(p.Commit, q.Commit); c != 0 {
		return c
	}
	return cmp.Compare(p.Prepare, q.Prepare)
}

// Before reports whether p comes before q.
func (p Position) Before(q Position) bool { return p.Compare(q) < 0 }

// IsStart reports whether p is the start of the store.
func (p Position) IsStart() bool { return p == Start }

// String renders p as a token that ParsePosition reads back.
func (p Position) String() string {
	if p.Commit == p.Prepare {
		return strconv.FormatUint(p.Commit, 10)
	}
	return strconv.FormatUint(p.Commit, 10) + "/" + strconv.FormatUint(p.Prepare, 10)
}

// ParsePosition reads a token rendered by Position.String.
func ParsePosition(token string) (Position, error) {
	c, p, two := strings.Cut(token, "/")
	commit, err := strconv.ParseUint(c, 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("%w: %q is not N or C/P with non-negative integers", ErrInvalidPosition, token)
	}
	if !two {
		return At(commit), nil
	}
	prepare, err := strconv.ParseUint(p, 10, 64)
	if err != nil {
		return Position{}, fmt.Errorf("%w: %q is not N or C/P with non-negative integers", ErrInvalidPosition, token)
	}
	return Position{Commit: commit, Prepare: prepare}, nil
}
