// Package promtest is for the tests of the Prometheus and Grafana files
// under deploy/: it runs promtool, which they need (they fail, not skip,
// without it), and reads the metric selectors out of PromQL expressions so
// that the tests can hold them against a live /metrics. It knows nothing of
// sightline's metrics and is imported by tests only.
package promtest

import (
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// Promtool is the path of promtool; the test fails when it is not
// installed.
func Promtool(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: apt-get install -y prometheus")
	}
	return path
}

// Run runs promtool with args, and stdin when it is not nil, and returns
// its output; the test fails with that output when promtool exits with an
// error.
func Run(t testing.TB, stdin io.Reader, args ...string) string {
	t.Helper()
	cmd := exec.Command(Promtool(t), args...)
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// A Selector is one vector or range selector of an expression: the metric
// it names and its label matchers.
type Selector struct {
	Metric   string
	Matchers []Matcher
}

// A Matcher is one label matcher of a selector, such as
// projection=~"$projection".
type Matcher struct {
	Label, Op, Value string
}

// Has reports whether s has the matcher label op value.
func (s Selector) Has(label, op, value string) bool {
	for _, m := range s.Matchers {
		if m.Label == label && m.Op == op && m.Value == value {
			return true
		}
	}
	return false
}

// keywords are PromQL's words that are not metric names: aggregation
// operators, binary operators and modifiers, and the number words.
var keywords = map[string]bool{
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true, "offset": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true,
}

// labelLists are the keywords followed by a list of label names.
var labelLists = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// Selectors returns the selectors of expr in the order they appear. It
// reads just enough PromQL for that (strings, label matchers, ranges,
// label lists, function calls) and leaves checking the rest to promtool.
// Grafana's variables ($projection, ${datasource}, $__rate_interval) may
// appear where PromQL has strings or durations.
func Selectors(expr string) ([]Selector, error) {
	var out []Selector
	s := expr
	i := 0
	skipSpace := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			end, err := stringEnd(s, i)
			if err != nil {
				return nil, err
			}
			i = end
		case c == '#': // a comment, to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '[': // a range or a subquery's
			end := strings.IndexByte(s[i:], ']')
			if end < 0 {
				return nil, fmt.Errorf("unclosed [ at %d in %q", i, expr)
			}
			i += end + 1
		case c == '{':
			return nil, fmt.Errorf("a selector without a metric name at %d in %q", i, expr)
		case c == '$': // a Grafana variable: $name or ${name}
			i++
			if i < len(s) && s[i] == '{' {
				end := strings.IndexByte(s[i:], '}')
				if end < 0 {
					return nil, fmt.Errorf("unclosed ${ at %d in %q", i, expr)
				}
				i += end + 1
				continue
			}
			for i < len(s) && isNameChar(s[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.': // a number or a duration
			for i < len(s) && (isNameChar(s[i]) || s[i] == '.') {
				i++
			}
		case isNameStart(c):
			start := i
			for i < len(s) && isNameChar(s[i]) {
				i++
			}
			name := s[start:i]
			skipSpace()
			switch {
			case labelLists[strings.ToLower(name)]:
				if i < len(s) && s[i] == '(' {
					end := strings.IndexByte(s[i:], ')')
					if end < 0 {
						return nil, fmt.Errorf("unclosed label list after %s in %q", name, expr)
					}
					i += end + 1
				}
			case keywords[strings.ToLower(name)]:
			case i < len(s) && s[i] == '(': // a function call
			default:
				sel := Selector{Metric: name}
				if i < len(s) && s[i] == '{' {
					ms, end, err := matchers(s, i)
					if err != nil {
						return nil, fmt.Errorf("%w in %q", err, expr)
					}
					sel.Matchers, i = ms, end
				}
				out = append(out, sel)
			}
		default:
			i++
		}
	}
	return out, nil
}

// MetricNames returns the metric names expr selects, each once, in the
// order they first appear.
func MetricNames(expr string) ([]string, error) {
	sels, err := Selectors(expr)
	if err != nil {
		return nil, err
	}
	var names []string
	seen := map[string]bool{}
	for _, s := range sels {
		if !seen[s.Metric] {
			seen[s.Metric] = true
			names = append(names, s.Metric)
		}
	}
	return names, nil
}

// matchers reads the label matchers of the braces at s[i] and returns
// them and the index past the closing brace.
func matchers(s string, i int) ([]Matcher, int, error) {
	var out []Matcher
	i++ // {
	for {
		for i < len(s) && strings.IndexByte(" \t\r\n,", s[i]) >= 0 {
			i++
		}
		if i >= len(s) {
			return nil, 0, fmt.Errorf("unclosed {")
		}
		if s[i] == '}' {
			return out, i + 1, nil
		}
		start := i
		for i < len(s) && isNameChar(s[i]) {
			i++
		}
		label := s[start:i]
		for i < len(s) && s[i] == ' ' {
			i++
		}
		opStart := i
		for i < len(s) && strings.IndexByte("=!~", s[i]) >= 0 {
			i++
		}
		op := s[opStart:i]
		for i < len(s) && s[i] == ' ' {
			i++
		}
		if label == "" || (op != "=" && op != "!=" && op != "=~" && op != "!~") || i >= len(s) {
			return nil, 0, fmt.Errorf("bad label matcher at %d", start)
		}
		end, err := stringEnd(s, i)
		if err != nil {
			return nil, 0, err
		}
		value := s[i+1 : end-1]
		if s[i] != '`' {
			value = strings.NewReplacer(`\\`, `\`, `\"`, `"`, `\'`, `'`).Replace(value)
		}
		out = append(out, Matcher{Label: label, Op: op, Value: value})
		i = end
	}
}

// stringEnd returns the index past the string literal that starts at
// s[i].
func stringEnd(s string, i int) (int, error) {
	q := s[i]
	if q != '"' && q != '\'' && q != '`' {
		return 0, fmt.Errorf("want a string at %d", i)
	}
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unclosed string at %d", i)
}

func isNameStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isNameChar(c byte) bool { return isNameStart(c) || c >= '0' && c <= '9' }
