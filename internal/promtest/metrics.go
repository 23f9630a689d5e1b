package promtest

import (
	"io"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Families parses a /metrics page in the text exposition format.
func Families(r io.Reader) (map[string]*dto.MetricFamily, error) {
	var p expfmt.TextParser
	return p.TextToMetricFamilies(r)
}

// Family returns the family a selector of name reads: name's own for a
// counter, gauge or untyped metric, a histogram's for name_bucket, and a
// histogram's or summary's for name_sum and name_count. A histogram's or
// summary's own name selects nothing, and finds no family.
func Family(families map[string]*dto.MetricFamily, name string) (*dto.MetricFamily, bool) {
	if f, ok := families[name]; ok {
		switch f.GetType() {
		case dto.MetricType_COUNTER, dto.MetricType_GAUGE, dto.MetricType_UNTYPED:
			return f, true
		}
		return nil, false
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		f, ok := families[base]
		if !ok {
			return nil, false
		}
		switch t := f.GetType(); {
		case t == dto.MetricType_HISTOGRAM:
			return f, true
		case t == dto.MetricType_SUMMARY && suffix != "_bucket":
			return f, true
		}
		return nil, false
	}
	return nil, false
}

// Labels returns the label names the samples of f carry (a histogram's
// le and a summary's quantile are not labels of the parsed family).
func Labels(f *dto.MetricFamily) map[string]bool {
	labels := map[string]bool{}
	for _, m := range f.GetMetric() {
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = true
		}
	}
	return labels
}
