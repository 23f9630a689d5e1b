package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/projections/declarative"
	"github.com/sightlinehq/sightline/readmodel"
)

// DatabaseURLDefault is the database sightline uses unless told otherwise;
// it is created if missing.
const DatabaseURLDefault = "postgres://postgres@127.0.0.1:5432/sightline?sslmode=disable"

// config is what every command shares. Each value comes from, in order of
// precedence: its flag, its environment variable, the --config YAML file,
// the default.
type config struct {
	DatabaseURL string `yaml:"database_url"`
	Source      string `yaml:"source"`
	HTTPAddr    string `yaml:"http_addr"`
	APIToken    string `yaml:"api_token"`
	Insecure    bool   `yaml:"insecure"`
	LogLevel    string `yaml:"log_level"`
	LogFormat   string `yaml:"log_format"`
	BatchSize   int    `yaml:"batch_size"`
	MaxAttempts int    `yaml:"max_attempts"`
	Projections string `yaml:"projections"`
	// RebuildBatchSize bounds the events of one rebuild transaction;
	// RebuildGrace is how long replaced tables are kept after a rebuild.
	RebuildBatchSize int           `yaml:"rebuild_batch_size"`
	RebuildGrace     time.Duration `yaml:"rebuild_grace"`
	// QueryTimeout bounds each declared query.
	QueryTimeout time.Duration `yaml:"query_timeout"`

	file         string
	cpuProfile   string
	queryTimeout string // --query-timeout or SIGHTLINE_QUERY_TIMEOUT, parsed into QueryTimeout
	logger       *slog.Logger
}

// setting ties a config field to its flag and environment variable.
type setting struct {
	flag, env, usage string
	str              *string
}

func (c *config) settings() []setting {
	return []setting{
		{"database-url", "SIGHTLINE_DATABASE_URL", "PostgreSQL for the read models (and the embedded event store); created if missing", &c.DatabaseURL},
		{"source", "SIGHTLINE_SOURCE", `event source: "postgres" (the embedded store) or an esdb:// connection string`, &c.Source},
		{"http-addr", "SIGHTLINE_HTTP_ADDR", "address the HTTP API listens on", &c.HTTPAddr},
		{"log-level", "SIGHTLINE_LOG_LEVEL", "debug, info, warn or error", &c.LogLevel},
		{"log-format", "SIGHTLINE_LOG_FORMAT", "text or json", &c.LogFormat},
		{"projections", "SIGHTLINE_PROJECTIONS", "directory of declarative projections (*.yaml) to run besides the examples", &c.Projections},
		{"query-timeout", "SIGHTLINE_QUERY_TIMEOUT", "how long a declared query may run before it is cut off, e.g. 5s (default 5s)", &c.queryTimeout},
	}
}

func (c *config) bind(flags *pflag.FlagSet) {
	for _, s := range c.settings() {
		flags.String(s.flag, "", fmt.Sprintf("%s (env %s)", s.usage, s.env))
	}
	flags.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the command to this file (go tool pprof reads it)")
	flags.StringVar(&c.file, "config", "", "YAML file with any of: database_url, source, http_addr, api_token, insecure, log_level, log_format, batch_size, max_attempts, rebuild_batch_size, rebuild_grace, query_timeout, projections")
}

// load resolves the configuration for cmd.
func (c *config) load(cmd *cobra.Command) error {
	if c.file != "" {
		raw, err := os.ReadFile(c.file)
		if err != nil {
			return usagef("config file: %v", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		dec.KnownFields(true)
		if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) { // an empty file sets nothing
			return usagef("config file %s: %v", c.file, err)
		}
	}
	for _, s := range c.settings() {
		if v, ok := os.LookupEnv(s.env); ok && v != "" {
			*s.str = v
		}
		if f := cmd.Flags().Lookup(s.flag); f != nil && f.Changed {
			*s.str = f.Value.String()
		}
	}
	if v := os.Getenv("SIGHTLINE_API_TOKEN"); v != "" {
		c.APIToken = v
	}
	if f := cmd.Flags().Lookup("insecure"); f != nil && f.Changed {
		c.Insecure = f.Value.String() == "true"
	}
	if c.queryTimeout != "" {
		d, err := time.ParseDuration(c.queryTimeout)
		if err != nil || d <= 0 {
			return usagef("query timeout %q: want a duration such as 5s", c.queryTimeout)
		}
		c.QueryTimeout = d
	}
	if c.QueryTimeout < 0 {
		return usagef("query_timeout must not be negative")
	}
	if c.DatabaseURL == "" {
		c.DatabaseURL = DatabaseURLDefault
	}
	if c.Source == "" {
		c.Source = "postgres"
	}
	if c.HTTPAddr == "" {
		c.HTTPAddr = api.AddrDefault
	}
	if c.cpuProfile != "" {
		if err := startCPUProfile(c.cpuProfile); err != nil {
			return usagef("cpu profile: %v", err)
		}
	}
	logger, err := newLogger(c.LogLevel, c.LogFormat)
	if err != nil {
		return err
	}
	c.logger = logger
	slog.SetDefault(logger)
	return nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if level != "" {
		if err := l.UnmarshalText([]byte(level)); err != nil {
			return nil, usagef("log level %q: want debug, info, warn or error", level)
		}
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, usagef("log format %q: want text or json", format)
}

// checkListen refuses to serve beyond loopback without a token unless
// the user said --insecure.
func (c *config) checkListen() error {
	host, _, err := net.SplitHostPort(c.HTTPAddr)
	if err != nil {
		return usagef("http address %q: %v", c.HTTPAddr, err)
	}
	if c.APIToken != "" || c.Insecure {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return usagef("refusing to listen on %s without SIGHTLINE_API_TOKEN: set a token, listen on 127.0.0.1, or pass --insecure", c.HTTPAddr)
}

// projectorConfig is the projections.Config the configuration asks for.
func (c *config) projectorConfig(metrics *projections.Metrics, source string) projections.Config {
	return projections.Config{
		Logger: c.logger, Metrics: metrics, Source: source, BatchSize: c.BatchSize, MaxAttempts: c.MaxAttempts,
		RebuildBatchSize: c.RebuildBatchSize, RetiredGrace: c.RebuildGrace,
	}
}

// projection is the configured projection named name.
func (c *config) projection(name string) (projections.Projection, error) {
	ps, err := c.projections()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, p := range ps {
		if p.Name() == name {
			return p, nil
		}
		names = append(names, p.Name())
	}
	return nil, usagef("no projection named %q; there are: %s", name, strings.Join(names, ", "))
}

// projections are the projections the configuration runs: the examples,
// and the declarative ones in the --projections directory.
func (c *config) projections() ([]projections.Projection, error) {
	ps := readmodel.All()
	if c.Projections == "" {
		return ps, nil
	}
	more, err := declarative.LoadDir(c.Projections)
	if err != nil {
		return nil, usageError{err}
	}
	if len(more) == 0 {
		return nil, usagef("no *.yaml projections in %s", c.Projections)
	}
	return append(ps, more...), nil
}
