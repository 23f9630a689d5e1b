package redact_test

import (
	"bytes"
	"errors"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/internal/redact"
)

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://app:s3cret@db:5432/x?sslmode=disable":        "postgres://app:xxxxx@db:5432/x?sslmode=disable",
		"postgres://app@db/x":                                    "postgres://app@db/x",
		"postgres://db/x?password=s3cret&sslmode=require":        "postgres://db/x?password=xxxxx&sslmode=require",
		"esdb://admin:changeit@node1:2113?tls=false":             "esdb://admin:xxxxx@node1:2113?tls=false",
		"kurrentdb+discover://u:p%40ss@a,b,c:2113?tls=true":      "kurrentdb+discover://u:xxxxx@a,b,c:2113?tls=true",
		"esdb://node:2113?tlsCAFile=/ca.pem&userCertKeyFile=/k":  "esdb://node:2113?tlsCAFile=%2Fca.pem&userCertKeyFile=xxxxx",
		"host=db user=app password=s3cret dbname=x":              "host=db user=app password=xxxxx dbname=x",
		"host=db password='with space' dbname=x":                 "host=db password=xxxxx dbname=x",
		"postgres":                                               "postgres",
		"esdb://u:p@[bad":                                        "esdb://u:xxxxx@[bad",
		"postgres://app:s3cret@db/x?sslpassword=k&application=y": "postgres://app:xxxxx@db/x?application=y&sslpassword=xxxxx",
	} {
		require.Equal(t, want, redact.URL(in), in)
	}
}

func TestSecrets(t *testing.T) {
	got := redact.Secrets("postgres://app:p%40ssword@db/x", "esdb://node?token=abcdef", "host=db password=dsnpass", "postgres")
	require.Subset(t, got, []string{"p@ssword", "p%40ssword", "abcdef", "dsnpass"})
	require.Empty(t, redact.Secrets("postgres://app:ab@db/x"), "too short to mask safely")
}

func TestHandlerMasksEveryAttribute(t *testing.T) {
	var buf bytes.Buffer
	r := redact.NewReplacer(redact.Secrets("postgres://app:hunter22@db/x")...)
	log := slog.New(redact.Handler(slog.NewTextHandler(&buf, nil), r)).With("url", "postgres://app:hunter22@db/x")
	log.Info("connect hunter22 failed", "error", errors.New("dial postgres://app:hunter22@db/x: refused"),
		slog.Group("g", "v", "hunter22"), "n", 3, "any", struct{ S string }{"hunter22"})
	out := buf.String()
	require.NotContains(t, out, "hunter22")
	require.Contains(t, out, "xxxxx")
	require.Contains(t, out, "n=3")
}

func TestURLsIn(t *testing.T) {
	require.Equal(t, `connect "postgres://app:xxxxx@db/x": refused; esdb://u:xxxxx@h:2113 too`,
		redact.URLsIn(`connect "postgres://app:pw@db/x": refused; esdb://u:pw2@h:2113 too`))
}
