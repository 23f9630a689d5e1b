package sightline

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/sightlinehq/sightline/projections/declarative"
)

// TestKubernetesManifests: the manifests parse, run three replicas whose
// probes are the server's own routes, and carry a configuration and
// projection files that sightline accepts.
func TestKubernetesManifests(t *testing.T) {
	read := func(name string, v any) {
		raw, err := os.ReadFile(filepath.Join("deploy", "kubernetes", name))
		require.NoError(t, err)
		require.NoError(t, yaml.Unmarshal(raw, v), name)
	}
	var deployment struct {
		Kind string
		Spec struct {
			Replicas int
			Template struct {
				Spec struct {
					Containers []struct {
						Args           []string
						ReadinessProbe struct {
							HTTPGet struct{ Path string } `yaml:"httpGet"`
						} `yaml:"readinessProbe"`
						LivenessProbe struct {
							HTTPGet struct{ Path string } `yaml:"httpGet"`
						} `yaml:"livenessProbe"`
					}
				}
			}
		}
	}
	read("deployment.yaml", &deployment)
	require.Equal(t, "Deployment", deployment.Kind)
	require.Equal(t, 3, deployment.Spec.Replicas)
	c := deployment.Spec.Template.Spec.Containers[0]
	require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
	require.Equal(t, "/livez", c.LivenessProbe.HTTPGet.Path)
	require.Equal(t, []string{"run", "--config", "/etc/sightline/sightline.yaml"}, c.Args)

	var pdb, svc struct{ Kind string }
	read("pdb.yaml", &pdb)
	read("service.yaml", &svc)
	require.Equal(t, "PodDisruptionBudget", pdb.Kind)
	require.Equal(t, "Service", svc.Kind)

	var cm struct{ Data map[string]string }
	read("configmap.yaml", &cm)
	dec := yaml.NewDecoder(bytes.NewReader([]byte(cm.Data["sightline.yaml"])))
	dec.KnownFields(true)
	var cfg Config
	require.NoError(t, dec.Decode(&cfg), "every key is one sightline knows")
	cfg.ProjectionDir = ""
	require.NoError(t, cfg.complete())
	dir := t.TempDir()
	for name, body := range cm.Data {
		if name != "sightline.yaml" {
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600))
		}
	}
	ps, err := declarative.LoadDir(dir)
	require.NoError(t, err)
	require.NotEmpty(t, ps)
}

// composeService is what the tests read of a service of
// deploy/docker-compose.yml.
type composeService struct {
	Image       string
	Command     []string
	Volumes     []string
	Ports       []string
	Environment map[string]string
}

func readCompose(t *testing.T) map[string]composeService {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("deploy", "docker-compose.yml"))
	require.NoError(t, err)
	var compose struct{ Services map[string]composeService }
	require.NoError(t, yaml.Unmarshal(raw, &compose))
	return compose.Services
}

// TestComposeRunsTwoReplicas: the compose file runs two sightline
// replicas on one database.
func TestComposeRunsTwoReplicas(t *testing.T) {
	n := 0
	for _, s := range readCompose(t) {
		if len(s.Command) > 0 && s.Command[0] == "run" {
			n++
		}
	}
	require.Equal(t, 2, n)
}
