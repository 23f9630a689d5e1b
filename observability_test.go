package sightline

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/sightlinehq/sightline/internal/promtest"
)

// The observability pack: deploy/prometheus (scrape config, alert rules
// and their unit tests) and deploy/grafana (data source, dashboard). That
// the metrics they name are the ones sightline exports is checked against
// a running binary, in cmd/sightline's TestMetricsServeTheDashboardAndAlerts.

var (
	prometheusDir = filepath.Join("deploy", "prometheus")
	grafanaDir    = filepath.Join("deploy", "grafana")
)

// alertRule is a rule of alerts.yml.
type alertRule struct {
	Alert       string
	Expr        string
	For         string
	Labels      map[string]string
	Annotations map[string]string
}

func readAlertRules(t *testing.T) []alertRule {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(prometheusDir, "alerts.yml"))
	require.NoError(t, err)
	var file struct {
		Groups []struct{ Rules []alertRule }
	}
	require.NoError(t, yaml.Unmarshal(raw, &file))
	var rules []alertRule
	for _, g := range file.Groups {
		rules = append(rules, g.Rules...)
	}
	require.NotEmpty(t, rules)
	return rules
}

// TestPrometheusConfigAndAlerts: promtool accepts the scrape config and
// the rules and passes the rules' unit tests; every alert has a severity,
// a for, and annotations that say what it means and where to look; and
// the unit tests show each alert, at each severity, firing, and each alert
// not firing.
func TestPrometheusConfigAndAlerts(t *testing.T) {
	t.Parallel()
	promtest.Run(t, nil, "check", "config", filepath.Join(prometheusDir, "prometheus.yml"))
	promtest.Run(t, nil, "check", "rules", filepath.Join(prometheusDir, "alerts.yml"))
	promtest.Run(t, nil, "test", "rules", filepath.Join(prometheusDir, "alerts_test.yml"))

	rules := readAlertRules(t)
	places := []string{"sightline status", "/v1/projections", "sightline parked", "/ui/", "logs"}
	for _, r := range rules {
		require.NotEmpty(t, r.Alert, "only alerts: %+v", r)
		require.Contains(t, []string{"warning", "critical"}, r.Labels["severity"], r.Alert)
		require.NotEmpty(t, r.For, r.Alert)
		for _, a := range []string{"summary", "description", "runbook"} {
			require.NotEmpty(t, strings.TrimSpace(r.Annotations[a]), "%s: %s", r.Alert, a)
		}
		require.True(t, slices.ContainsFunc(places, func(p string) bool { return strings.Contains(r.Annotations["runbook"], p) }),
			"%s: the runbook says where to look first (one of %q)", r.Alert, places)
	}

	raw, err := os.ReadFile(filepath.Join(prometheusDir, "alerts_test.yml"))
	require.NoError(t, err)
	var tests struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				AlertName string `yaml:"alertname"`
				ExpAlerts []struct {
					ExpLabels map[string]string `yaml:"exp_labels"`
				} `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		}
	}
	require.NoError(t, yaml.Unmarshal(raw, &tests))
	require.Equal(t, []string{"alerts.yml"}, tests.RuleFiles)
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, at := range tc.AlertRuleTest {
			if len(at.ExpAlerts) == 0 {
				silent[at.AlertName] = true
			}
			for _, e := range at.ExpAlerts {
				fires[at.AlertName+" "+e.ExpLabels["severity"]] = true
			}
		}
	}
	for _, r := range rules {
		require.True(t, fires[r.Alert+" "+r.Labels["severity"]], "a test where %s fires at severity %s", r.Alert, r.Labels["severity"])
		require.True(t, silent[r.Alert], "a test where %s does not fire", r.Alert)
	}
}

// dashboard is what the tests read of deploy/grafana/dashboards/sightline.json.
type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasourceRef  `json:"datasource"`
			Multi      bool            `json:"multi"`
			IncludeAll bool            `json:"includeAll"`
		} `json:"list"`
	} `json:"templating"`
	Panels []dashboardPanel `json:"panels"`
}

type dashboardPanel struct {
	ID         int                      `json:"id"`
	Type       string                   `json:"type"`
	Title      string                   `json:"title"`
	Datasource *datasourceRef           `json:"datasource"`
	GridPos    struct{ X, Y, W, H int } `json:"gridPos"`
	Targets    []struct {
		RefID        string         `json:"refId"`
		Expr         string         `json:"expr"`
		LegendFormat string         `json:"legendFormat"`
		Datasource   *datasourceRef `json:"datasource"`
	} `json:"targets"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// grafanaVariables stand for the dashboard's variables in its expressions
// when promtool reads them.
var grafanaVariables = strings.NewReplacer(`$projection`, `.+`, `$__rate_interval`, `1m`)

// TestGrafanaDashboard: the dashboard parses; every panel reads the
// data source variable's Prometheus; the projection variable is a
// multi-value one of the projections sightline exports, and every
// panel broken down by projection follows it; panels do not overlap; and
// promtool reads every expression.
func TestGrafanaDashboard(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join(grafanaDir, "dashboards", "sightline.json"))
	require.NoError(t, err)
	var d dashboard
	require.NoError(t, json.Unmarshal(raw, &d))
	require.Equal(t, "sightline", d.UID)
	require.GreaterOrEqual(t, d.SchemaVersion, 39)

	vars := map[string]int{}
	for i, v := range d.Templating.List {
		vars[v.Name] = i
	}
	require.Contains(t, vars, "datasource")
	ds := d.Templating.List[vars["datasource"]]
	require.Equal(t, "datasource", ds.Type)
	require.JSONEq(t, `"prometheus"`, string(ds.Query))
	require.Contains(t, vars, "projection")
	pv := d.Templating.List[vars["projection"]]
	require.Equal(t, "query", pv.Type)
	const values = "label_values(sightline_events_applied_total, projection)"
	require.Equal(t, values, pv.Definition)
	require.Contains(t, string(pv.Query), values)
	require.Equal(t, &datasourceRef{Type: "prometheus", UID: "${datasource}"}, pv.Datasource)
	require.True(t, pv.Multi && pv.IncludeAll, "multi-value, with All")

	want := &datasourceRef{Type: "prometheus", UID: "${datasource}"}
	var records strings.Builder
	records.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	usesProjection := 0
	for i, p := range d.Panels {
		require.NotEmpty(t, p.Title, "panel %d", i)
		require.Equal(t, want, p.Datasource, p.Title)
		require.NotEmpty(t, p.Targets, p.Title)
		follows := false
		for _, tg := range p.Targets {
			require.Equal(t, want, tg.Datasource, "%s %s", p.Title, tg.RefID)
			require.NotEmpty(t, tg.Expr, "%s %s", p.Title, tg.RefID)
			sels, err := promtest.Selectors(tg.Expr)
			require.NoError(t, err, p.Title)
			require.NotEmpty(t, sels, "%s: %s", p.Title, tg.Expr)
			for _, s := range sels {
				for _, m := range s.Matchers {
					if m.Label == "projection" {
						require.Equal(t, promtest.Matcher{Label: "projection", Op: "=~", Value: "$projection"}, m,
							"%s: a multi-value variable wants =~", p.Title)
						follows = true
					}
				}
				if strings.Contains(tg.LegendFormat, "{{projection}}") {
					require.True(t, s.Has("projection", "=~", "$projection"), "%s: %s follows the projection variable", p.Title, s.Metric)
				}
			}
			expr, err := json.Marshal(grafanaVariables.Replace(tg.Expr)) // JSON strings are YAML's too
			require.NoError(t, err)
			fmt.Fprintf(&records, "      - record: dashboard:panel_%d_%s\n        expr: %s\n", p.ID, tg.RefID, expr)
		}
		if follows {
			usesProjection++
		}
		for _, q := range d.Panels[:i] {
			overlap := p.GridPos.X < q.GridPos.X+q.GridPos.W && q.GridPos.X < p.GridPos.X+p.GridPos.W &&
				p.GridPos.Y < q.GridPos.Y+q.GridPos.H && q.GridPos.Y < p.GridPos.Y+p.GridPos.H
			require.False(t, overlap, "%q overlaps %q", p.Title, q.Title)
		}
		require.LessOrEqual(t, p.GridPos.X+p.GridPos.W, 24, p.Title)
	}
	require.GreaterOrEqual(t, usesProjection, len(d.Panels)/2, "the panels follow the projection variable")

	rules := filepath.Join(t.TempDir(), "dashboard.yml")
	require.NoError(t, os.WriteFile(rules, []byte(records.String()), 0o600))
	promtest.Run(t, nil, "check", "rules", rules)
}

// TestComposeObservability: the compose file runs Prometheus and Grafana
// at pinned versions, on the files of deploy/prometheus and deploy/grafana,
// and they point at each other and at the sightline replicas.
func TestComposeObservability(t *testing.T) {
	t.Parallel()
	services := readCompose(t)
	require.Contains(t, services, "prometheus")
	require.Contains(t, services, "grafana")
	prom, graf := services["prometheus"], services["grafana"]
	require.Regexp(t, `^prom/prometheus:v\d+\.\d+\.\d+$`, prom.Image)
	require.Regexp(t, `^grafana/grafana:\d+\.\d+\.\d+$`, graf.Image)
	require.Contains(t, prom.Ports, "9090:9090")
	require.Contains(t, graf.Ports, "3000:3000")

	// mounts maps each container path of s to its host path, which exists.
	mounts := func(name string, s composeService) map[string]string {
		m := map[string]string{}
		for _, v := range s.Volumes {
			parts := strings.Split(v, ":")
			require.GreaterOrEqual(t, len(parts), 2, "%s: %s", name, v)
			host := filepath.Join("deploy", parts[0])
			_, err := os.Stat(host)
			require.NoError(t, err, "%s mounts %s", name, v)
			m[parts[1]] = host
		}
		return m
	}
	promMounts, grafMounts := mounts("prometheus", prom), mounts("grafana", graf)
	require.Equal(t, prometheusDir, promMounts["/etc/prometheus"], "the image reads /etc/prometheus/prometheus.yml")
	require.Equal(t, filepath.Join(grafanaDir, "provisioning"), grafMounts["/etc/grafana/provisioning"])
	require.Equal(t, "true", graf.Environment["GF_AUTH_ANONYMOUS_ENABLED"])
	require.Equal(t, "Viewer", graf.Environment["GF_AUTH_ANONYMOUS_ORG_ROLE"])

	// inContainer is the host path of a file in the Grafana container.
	inContainer := func(path string) string {
		for dir, host := range grafMounts {
			if rel, ok := strings.CutPrefix(path, dir+"/"); ok {
				return filepath.Join(host, rel)
			}
		}
		t.Fatalf("%s is in no volume of grafana", path)
		return ""
	}
	if home := graf.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]; home != "" {
		_, err := os.Stat(inContainer(home))
		require.NoError(t, err)
	}

	read := func(path string, v any) {
		raw, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, yaml.Unmarshal(raw, v), path)
	}
	var providers struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		}
	}
	read(filepath.Join(grafanaDir, "provisioning", "dashboards", "sightline.yml"), &providers)
	require.Len(t, providers.Providers, 1)
	require.Equal(t, "file", providers.Providers[0].Type)
	_, err := os.Stat(inContainer(providers.Providers[0].Options.Path + "/sightline.json"))
	require.NoError(t, err, "the provider loads the dashboard")

	var datasources struct {
		Datasources []struct{ Type, URL, UID string }
	}
	read(filepath.Join(grafanaDir, "provisioning", "datasources", "prometheus.yml"), &datasources)
	require.Len(t, datasources.Datasources, 1)
	require.Equal(t, "prometheus", datasources.Datasources[0].Type)
	require.Equal(t, "http://prometheus:9090", datasources.Datasources[0].URL, "the compose service, at the port it listens on")

	var config struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string                       `yaml:"job_name"`
			StaticConfigs []struct{ Targets []string } `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	read(filepath.Join(prometheusDir, "prometheus.yml"), &config)
	require.Equal(t, []string{"alerts.yml"}, config.RuleFiles)
	var targets []string
	for _, sc := range config.ScrapeConfigs {
		if sc.JobName == "sightline" {
			for _, s := range sc.StaticConfigs {
				targets = append(targets, s.Targets...)
			}
		}
	}
	var replicas []string
	addr := regexp.MustCompile(`^--http-addr=[^:]*:(\d+)$`)
	for name, s := range services {
		if len(s.Command) == 0 || s.Command[0] != "run" {
			continue
		}
		for _, arg := range s.Command {
			if m := addr.FindStringSubmatch(arg); m != nil {
				replicas = append(replicas, name+":"+m[1])
			}
		}
	}
	require.ElementsMatch(t, replicas, targets, "job sightline scrapes every replica")
}
