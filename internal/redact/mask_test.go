package redact_test

import (
	"bytes"
	"errors"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/internal/redact"
)

func TestSecrets(t *testing.T) {
	got := redact.Secrets("postgres://app:p%40ssword@db/x", "esdb://node?token=abcdef", "host=db password=dsnpass", "host=db password='q uoted'", "postgres")
	require.Subset(t, got, []string{"p@ssword", "p%40ssword", "abcdef", "dsnpass", "q uoted"})
	require.Empty(t, redact.Secrets("postgres://app:ab@db/x"), "too short to mask safely")
	require.Empty(t, redact.Secrets("postgres://app@db/x?sslmode=disable"))
}

func TestReplacer(t *testing.T) {
	r := redact.NewReplacer("hunter22", "", "ab")
	require.Equal(t, "pw xxxxx, ab stays", r.String("pw hunter22, ab stays"))
	require.Equal(t, "as is", (*redact.Replacer)(nil).String("as is"))
	require.Equal(t, "token xxxxx, password xxxxx", redact.NewReplacer("abc", "abcdef").String("token abcdef, password abc"), "the longest first")
}

func TestHandlerMasksEveryAttribute(t *testing.T) {
	var buf bytes.Buffer
	r := redact.NewReplacer(redact.Secrets("postgres://app:hunter22@db/x")...)
	log := slog.New(redact.Handler(slog.NewTextHandler(&buf, nil), r)).With("url", "postgres://app:hunter22@db/x")
	log.Info("connect hunter22 failed", "error", errors.New("dial esdb://u:other-secret@h:2113: refused"),
		slog.Group("g", "v", "hunter22"), "n", 3, "any", struct{ S string }{"hunter22"})
	out := buf.String()
	require.NotContains(t, out, "hunter22")
	require.NotContains(t, out, "other-secret", "a URL's password is masked even when not configured")
	require.Contains(t, out, "xxxxx")
	require.Contains(t, out, "n=3")
}

func TestURLsIn(t *testing.T) {
	require.Equal(t, `connect "postgres://app:xxxxx@db/x": refused; esdb://u:xxxxx@h:2113 too`,
		redact.URLsIn(`connect "postgres://app:pw@db/x": refused; esdb://u:pw2@h:2113 too`))
}
