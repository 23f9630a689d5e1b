package promtest

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSelectors(t *testing.T) {
	sels, err := Selectors(`max by (projection) (
  sightline_projection_lag_seconds{projection=~"$projection", status!="a\"}b"}
  and on (job, instance) (max by (job, instance, projection) (sightline_projection_owned) == 1)
) > 60 unless absent(up{job='x'} offset 5m)
+ histogram_quantile(0.99, sum by (url, le) (rate(http_seconds_bucket[$__rate_interval])))
+ rate(recorded:rule_total[5m:1m]) * 1e3 # a comment with not_a_metric`)
	require.NoError(t, err)
	require.Equal(t, []Selector{
		{Metric: "sightline_projection_lag_seconds", Matchers: []Matcher{{"projection", "=~", "$projection"}, {"status", "!=", `a"}b`}}},
		{Metric: "sightline_projection_owned"},
		{Metric: "up", Matchers: []Matcher{{"job", "=", "x"}}},
		{Metric: "http_seconds_bucket"},
		{Metric: "recorded:rule_total"},
	}, sels)
	require.True(t, sels[0].Has("projection", "=~", "$projection"))
	require.False(t, sels[0].Has("projection", "=", "$projection"))

	names, err := MetricNames(`sum(rate(a_total[1m])) / sum(rate(a_total[1m])) + b`)
	require.NoError(t, err)
	require.Equal(t, []string{"a_total", "b"}, names)

	sels, err = Selectors(`{__name__="a", b="c"}`)
	require.NoError(t, err)
	require.Equal(t, []Selector{{Metric: "a", Matchers: []Matcher{{"b", "=", "c"}}}}, sels)

	for _, bad := range []string{`{job="a"}`, `a{b="c"`, `a{b}`, `rate(a[5m)`, `a{b="c}`} {
		_, err := Selectors(bad)
		require.Error(t, err, bad)
	}
}

func TestFamily(t *testing.T) {
	fams, err := Families(strings.NewReader(`# TYPE c_total counter
c_total{projection="p"} 1
# TYPE h_seconds histogram
h_seconds_bucket{le="+Inf"} 1
h_seconds_sum 1
h_seconds_count 1
# TYPE s summary
s{quantile="0.5"} 1
s_sum 1
s_count 1
`))
	require.NoError(t, err)
	for name, want := range map[string]string{
		"c_total": "c_total", "h_seconds_bucket": "h_seconds", "h_seconds_sum": "h_seconds", "h_seconds_count": "h_seconds",
		"s_sum": "s", "s_count": "s",
	} {
		f, ok := Family(fams, name)
		require.True(t, ok, name)
		require.Equal(t, want, f.GetName())
	}
	for _, name := range []string{"h_seconds", "s", "s_bucket", "c", "c_total_count", "missing"} {
		_, ok := Family(fams, name)
		require.False(t, ok, name)
	}
	f, _ := Family(fams, "c_total")
	require.Equal(t, map[string]bool{"projection": true}, Labels(f))
}
