package sightline

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/stretchr/testify/require"
)

func TestUsageErrorsExitTwo(t *testing.T) {
	dir := t.TempDir()
	badKey := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(badKey, []byte("databse_url: typo\n"), 0o600))
	for name, args := range map[string][]string{
		"unknown command":        {"bogus"},
		"unknown flag":           {"run", "--nope"},
		"stray argument":         {"migrate", "extra"},
		"unknown config key":     {"migrate", "--config", badKey},
		"missing config file":    {"migrate", "--config", filepath.Join(dir, "absent.yaml")},
		"bad log level":          {"migrate", "--log-level", "loud"},
		"non-loopback, no token": {"run", "--http-addr", "0.0.0.0:0"},
		"unsupported source":     {"run", "--source", "kafka://x"},
		"negative orders":        {"simulate", "--orders", "-5"},
		"bad esdb connection":    {"run", "--source", "esdb://127.0.0.1:2113?tls=maybe"},
		"retry without an id":    {"parked", "retry"},
		"skip with a bad id":     {"parked", "skip", "x"},
		"read token alone":       {"run", "--read-token", "read-only-token"},
		"short write timeout":    {"run", "--http-write-timeout", "20s"},
		"bad examples flag":      {"run", "--examples=maybe"},
	} {
		t.Run(name, func(t *testing.T) {
			require.Equal(t, exitUsage, Main(context.Background(), args), "%v", args)
		})
	}
}

func TestUnreachableDatabaseExitsOne(t *testing.T) {
	require.Equal(t, exitFailure, Main(context.Background(), []string{"migrate", "--database-url", "postgres://postgres@127.0.0.1:1/x?connect_timeout=2"}))
}

// loaded parses args as the root command would and returns the config.
func loaded(t *testing.T, args ...string) *Config {
	t.Helper()
	c := &Config{}
	cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
	c.bind(cmd.Flags())
	cmd.Flags().Bool("insecure", false, "")
	cmd.SetArgs(args)
	require.NoError(t, cmd.Execute())
	require.NoError(t, c.load(cmd))
	return c
}

func TestConfigPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	require.NoError(t, os.WriteFile(file, []byte("database_url: from-file\nhttp_addr: 127.0.0.1:1111\nsource: postgres\nbatch_size: 50\ncommit_wait: -1ms\napi_token: file-token\n"), 0o600))

	c := loaded(t)
	require.Equal(t, DatabaseURLDefault, c.DatabaseURL)
	require.Equal(t, "127.0.0.1:8080", c.HTTPAddr)

	c = loaded(t, "--config", file)
	require.Equal(t, "from-file", c.DatabaseURL)
	require.Equal(t, 50, c.BatchSize)
	require.Equal(t, -time.Millisecond, c.CommitWait)
	require.Equal(t, "file-token", c.APIToken)

	t.Setenv("SIGHTLINE_DATABASE_URL", "from-env")
	t.Setenv("SIGHTLINE_API_TOKEN", "env-token")
	c = loaded(t, "--config", file)
	require.Equal(t, "from-env", c.DatabaseURL, "env beats file")
	require.Equal(t, "env-token", c.APIToken)
	require.Equal(t, "127.0.0.1:1111", c.HTTPAddr, "file beats default")

	c = loaded(t, "--config", file, "--database-url", "from-flag")
	require.Equal(t, "from-flag", c.DatabaseURL, "flag beats env")
}

func TestListenNeedsTokenBeyondLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:8080": true, "[::1]:8080": true, "localhost:8080": true, "0.0.0.0:8080": false, ":8080": false, "10.1.2.3:80": false} {
		c := &Config{HTTPAddr: addr}
		require.Equal(t, ok, c.checkListen() == nil, addr)
		c.APIToken = "t"
		require.NoError(t, c.checkListen(), addr)
		c.APIToken, c.Insecure = "", true
		require.NoError(t, c.checkListen(), addr)
	}
}
