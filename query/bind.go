package query

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"
)

// ParamError is a request's value that does not fit its parameter.
type ParamError struct {
	Param string
	// Type is what the parameter takes; empty for a parameter the query
	// does not have.
	Type   Type
	Reason string
}

func (e *ParamError) Error() string {
	if e.Type == "" {
		return fmt.Sprintf("param %s: %s", e.Param, e.Reason)
	}
	return fmt.Sprintf("param %s (%s): %s", e.Param, e.Type, e.Reason)
}

// MaxValueLen bounds a parameter's value.
const MaxValueLen = 4096

// Args are a request's parameter values, bound and typed.
type Args struct {
	byParam []any // by index in Params; nil for NULL
}

// Bind reads each parameter from values (a request's query string, and
// the path segments of a route). A value given empty counts as not given.
// Names that are neither a parameter nor reserved are refused, so that a
// typo does not silently read everything.
func (c *Compiled) Bind(values map[string][]string) (Args, error) {
	var unknown []string
	for name := range values {
		if !slices.Contains(Reserved, name) && !slices.ContainsFunc(c.Params, func(p Param) bool { return p.Name == name }) {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return Args{}, &ParamError{Param: unknown[0], Reason: fmt.Sprintf("query %s has no such param (it takes: %s)", c.Name, c.paramList())}
	}
	args := Args{byParam: make([]any, len(c.Params))}
	for i, p := range c.Params {
		vs := values[p.Name]
		if len(vs) > 1 {
			return Args{}, &ParamError{Param: p.Name, Type: p.Type, Reason: "given more than once"}
		}
		v := ""
		if len(vs) == 1 {
			v = vs[0]
		}
		if v == "" {
			if p.Required {
				return Args{}, &ParamError{Param: p.Name, Type: p.Type, Reason: "required"}
			}
			v = p.Default
		}
		if v == "" {
			continue // NULL
		}
		if len(v) > MaxValueLen {
			return Args{}, &ParamError{Param: p.Name, Type: p.Type, Reason: fmt.Sprintf("longer than %d bytes", MaxValueLen)}
		}
		if len(p.Enum) > 0 && !slices.Contains(p.Enum, v) {
			return Args{}, &ParamError{Param: p.Name, Type: p.Type, Reason: "want one of " + strings.Join(p.Enum, ", ")}
		}
		x, err := parse(p.Type, v)
		if err != nil {
			return Args{}, &ParamError{Param: p.Name, Type: p.Type, Reason: err.Error()}
		}
		args.byParam[i] = x
	}
	return args, nil
}

// of returns the values for a statement whose $n are the params order.
func (a Args) of(order []int) []any {
	out := make([]any, len(order))
	for i, p := range order {
		out[i] = a.byParam[p]
	}
	return out
}

var numericText = regexp.MustCompile(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$`)

// parse reads a value of type t as a request writes it, into what pgx
// binds for that type.
func parse(t Type, v string) (any, error) {
	switch t {
	case Text:
		if strings.IndexByte(v, 0) >= 0 {
			return nil, errors.New("contains a NUL byte")
		}
		return v, nil
	case Integer:
		n, err := strconv.ParseInt(v, 10, 32)
		if err != nil {
			return nil, errors.New("want a whole number from -2147483648 to 2147483647")
		}
		return int32(n), nil
	case Bigint:
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, errors.New("want a whole number that fits 64 bits")
		}
		return n, nil
	case Numeric:
		if !numericText.MatchString(v) {
			return nil, errors.New("want a decimal number such as 12.50")
		}
		var n pgtype.Numeric
		if err := n.Scan(v); err != nil {
			return nil, errors.New("want a decimal number such as 12.50")
		}
		return n, nil
	case Boolean:
		switch strings.ToLower(v) {
		case "true", "t", "1", "yes":
			return true, nil
		case "false", "f", "0", "no":
			return false, nil
		}
		return nil, errors.New("want true or false")
	case Date:
		d, err := time.Parse(time.DateOnly, v)
		if err != nil {
			return nil, errors.New("want a date as YYYY-MM-DD")
		}
		return pgtype.Date{Time: d, Valid: true}, nil
	case Timestamptz:
		ts, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return nil, errors.New("want an RFC 3339 time such as 2026-12-06T19:30:00Z")
		}
		return pgtype.Timestamptz{Time: ts, Valid: true}, nil
	case UUID:
		u, err := uuid.Parse(v)
		if err != nil || len(v) != 36 {
			return nil, errors.New("want a UUID such as 5f0c7d42-9a3e-4c1b-8d2f-3a4b5c6d7e8f")
		}
		return pgtype.UUID{Bytes: u, Valid: true}, nil
	}
	return nil, fmt.Errorf("unknown type %q", t)
}
