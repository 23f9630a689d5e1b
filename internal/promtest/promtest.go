package promtest

import (
	"bytes"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/VictoriaMetrics/metricsql"
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

// grafanaIntervals are Grafana's interval variables, which stand where
// PromQL has a duration; any duration does to read the selectors.
var grafanaIntervals = strings.NewReplacer("$__rate_interval", "5m", "${__rate_interval}", "5m",
	"$__interval", "1m", "${__interval}", "1m", "$__range", "1h", "${__range}", "1h")

// Selectors returns the selectors of expr in the order they appear (one
// per group of a MetricsQL "or" filter, which PromQL has not). Grafana's
// variables may appear in strings ($projection) and as durations
// ($__rate_interval).
func Selectors(expr string) ([]Selector, error) {
	e, err := metricsql.Parse(grafanaIntervals.Replace(expr))
	if err != nil {
		return nil, fmt.Errorf("%q: %w", expr, err)
	}
	var out []Selector
	var bad error
	metricsql.VisitAll(e, func(x metricsql.Expr) {
		me, ok := x.(*metricsql.MetricExpr)
		if !ok {
			return
		}
		for _, group := range me.LabelFilterss {
			var sel Selector
			for _, f := range group {
				if f.Label == "__name__" && !f.IsRegexp && !f.IsNegative {
					sel.Metric = f.Value
					continue
				}
				op := map[[2]bool]string{{false, false}: "=", {false, true}: "!=", {true, false}: "=~", {true, true}: "!~"}[[2]bool{f.IsRegexp, f.IsNegative}]
				sel.Matchers = append(sel.Matchers, Matcher{Label: f.Label, Op: op, Value: f.Value})
			}
			if sel.Metric == "" && bad == nil {
				bad = fmt.Errorf("%q: a selector without a metric name: %s", expr, me.AppendString(nil))
			}
			out = append(out, sel)
		}
	})
	if bad != nil {
		return nil, bad
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
