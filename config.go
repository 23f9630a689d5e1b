package sightline

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/internal/redact"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/projections/declarative"
	"github.com/sightlinehq/sightline/readmodel"
)

// DatabaseURLDefault is the database sightline uses unless told otherwise;
// it is created if missing.
const DatabaseURLDefault = "postgres://postgres@127.0.0.1:5432/sightline?sslmode=disable"

// SourcePostgres is the Source of the embedded event store.
const SourcePostgres = "postgres"

// Roles of a process among those sharing one database (Config.Role).
const (
	RoleAll     = "all"
	RoleServe   = "serve"
	RoleProject = "project"
)

// Config is what sightline runs: the database, the event source, the
// projections and the HTTP API. The command line fills it from, in order
// of precedence, each value's flag, its environment variable, the
// --config YAML file (the keys are the yaml tags), and the default. A
// program calling Run fills it itself; the zero value of a field is its
// default.
type Config struct {
	// DatabaseURL is the PostgreSQL of the read models (and of the
	// embedded event store); created if missing. Default
	// DatabaseURLDefault.
	DatabaseURL string `yaml:"database_url"`
	// Source is the event source: SourcePostgres (the default), or an
	// esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover://
	// connection string.
	Source string `yaml:"source"`
	// HTTPAddr is where the API listens. Default api.AddrDefault, on
	// loopback: beyond it, an APIToken (or Insecure) is required.
	HTTPAddr string `yaml:"http_addr"`
	// APIToken, when set, is the bearer token of the routes that write or
	// change state; it reads too.
	APIToken string `yaml:"api_token"`
	// ReadToken, when set, is the bearer token of the reads: queries,
	// status and /metrics.
	ReadToken string `yaml:"read_token"`
	// Insecure allows listening beyond loopback without an APIToken.
	Insecure bool `yaml:"insecure"`
	// Examples adds the example projections (orders, customer_stats,
	// daily_sales); off unless asked, on for the demo.
	Examples bool `yaml:"examples"`
	// Projections are the program's own Go projections.
	Projections []projections.Projection `yaml:"-"`
	// ProjectionDir is a directory of declarative projections (*.yaml).
	ProjectionDir string `yaml:"projections"`

	LogLevel  string `yaml:"log_level"`  // debug, info (default), warn or error
	LogFormat string `yaml:"log_format"` // text (default) or json
	// Logger, when set, is used instead of one made from LogLevel and
	// LogFormat.
	Logger *slog.Logger `yaml:"-"`

	BatchSize   int `yaml:"batch_size"`   // events of one live batch
	MaxAttempts int `yaml:"max_attempts"` // tries of a failing event before it is parked
	// RebuildBatchSize bounds the events of one rebuild transaction;
	// RebuildGrace is how long replaced tables are kept after a rebuild.
	RebuildBatchSize int           `yaml:"rebuild_batch_size"`
	RebuildGrace     time.Duration `yaml:"rebuild_grace"`
	// CommitWait is how long a live batch may wait for the batches other
	// projections have in hand, to commit with them in one transaction;
	// negative commits every batch alone. Default
	// projections.CommitWaitDefault.
	CommitWait time.Duration `yaml:"commit_wait"`
	// QueryTimeout bounds each declared query. Default
	// api.QueryTimeoutDefault.
	QueryTimeout time.Duration `yaml:"query_timeout"`
	// HTTP bounds the API's connections and waits.
	HTTP api.Limits `yaml:"http"`
	// ReadyMaxLag, when set, makes /readyz fail while a projection lags
	// more than this behind the head.
	ReadyMaxLag time.Duration `yaml:"ready_max_lag"`
	// Lease is how long a process holds a projection without renewing it:
	// when it dies, another takes its projections up this long (and a tick)
	// after. Default projections.LeaseDefault.
	Lease time.Duration `yaml:"lease"`
	// Role is what this process does of what the processes on the
	// database share: RoleAll (the default; "both" says the same) applies its share of the
	// projections and serves them all; RoleServe serves only, following
	// the others' checkpoints; RoleProject applies its share and serves no
	// queries (status, metrics and the admin routes stay).
	Role string `yaml:"role"`

	file       string
	cpuProfile string
	processID  string           // this process among those sharing the projections
	logger     *slog.Logger     // Logger, or the one made, masking secrets
	secrets    *redact.Replacer // masks the passwords and tokens configured
}

// setting ties a Config field to its flag and environment variable.
type setting struct {
	flag, env, usage string
	value            settable
}

// settable is a Config field a flag's or variable's text sets.
type settable interface{ set(string) error }

type (
	strSetting  struct{ p *string }
	boolSetting struct{ p *bool }
	intSetting  struct{ p *int }
	durSetting  struct{ p *time.Duration }
)

func (s strSetting) set(v string) error { *s.p = v; return nil }

func (s boolSetting) set(v string) error {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("%q: want true or false", v)
	}
	*s.p = b
	return nil
}

func (s intSetting) set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return fmt.Errorf("%q: want a whole number, 0 or more", v)
	}
	*s.p = n
	return nil
}

func (s durSetting) set(v string) error {
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return fmt.Errorf("%q: want a duration such as 5s", v)
	}
	*s.p = d
	return nil
}

func (c *Config) settings() []setting {
	return []setting{
		{"database-url", "SIGHTLINE_DATABASE_URL", "PostgreSQL for the read models (and the embedded event store); created if missing", strSetting{&c.DatabaseURL}},
		{"source", "SIGHTLINE_SOURCE", `event source: "postgres" (the embedded store) or an esdb:// or kurrentdb:// connection string (+discover for DNS discovery)`, strSetting{&c.Source}},
		{"http-addr", "SIGHTLINE_HTTP_ADDR", "address the HTTP API listens on", strSetting{&c.HTTPAddr}},
		{"log-level", "SIGHTLINE_LOG_LEVEL", "debug, info, warn or error", strSetting{&c.LogLevel}},
		{"log-format", "SIGHTLINE_LOG_FORMAT", "text or json", strSetting{&c.LogFormat}},
		{"examples", "SIGHTLINE_EXAMPLES", "also run the example projections (orders, customer_stats, daily_sales); on for demo", boolSetting{&c.Examples}},
		{"projections", "SIGHTLINE_PROJECTIONS", "directory of declarative projections (*.yaml) to run", strSetting{&c.ProjectionDir}},
		{"read-token", "SIGHTLINE_READ_TOKEN", "bearer token the reads (queries, status, /metrics) require; prefer the variable, flags show in ps", strSetting{&c.ReadToken}},
		{"query-timeout", "SIGHTLINE_QUERY_TIMEOUT", "how long a declared query may run before it is cut off (default 5s)", durSetting{&c.QueryTimeout}},
		{"role", "SIGHTLINE_ROLE", "all (apply a share of the projections and serve every query), serve (serve only) or project (apply only)", strSetting{&c.Role}},
		{"lease", "SIGHTLINE_LEASE", fmt.Sprintf("how long a process holds a projection without renewing it; another takes over this long after it dies (default %s)", projections.LeaseDefault), durSetting{&c.Lease}},
		{"ready-max-lag", "SIGHTLINE_READY_MAX_LAG", "fail /readyz while a projection lags more than this, e.g. 30s (default: lag does not count)", durSetting{&c.ReadyMaxLag}},
		{"max-waits", "SIGHTLINE_MAX_WAITS", fmt.Sprintf("read-your-writes waits at once; more are answered 503 (default %d)", api.MaxWaitsDefault), intSetting{&c.HTTP.MaxWaits}},
		{"max-streams", "SIGHTLINE_MAX_STREAMS", fmt.Sprintf("status streams (GET /v1/projections/events) open at once; more are answered 503 (default %d)", api.MaxStreamsDefault), intSetting{&c.HTTP.MaxStreams}},
		{"http-read-header-timeout", "SIGHTLINE_HTTP_READ_HEADER_TIMEOUT", fmt.Sprintf("time to read a request's headers (default %s)", api.ReadHeaderTimeoutDefault), durSetting{&c.HTTP.ReadHeaderTimeout}},
		{"http-read-timeout", "SIGHTLINE_HTTP_READ_TIMEOUT", fmt.Sprintf("time to read a whole request (default %s)", api.ReadTimeoutDefault), durSetting{&c.HTTP.ReadTimeout}},
		{"http-write-timeout", "SIGHTLINE_HTTP_WRITE_TIMEOUT", fmt.Sprintf("time to answer a request once read, waits included; at least the longest wait (default %s)", api.WriteTimeoutDefault), durSetting{&c.HTTP.WriteTimeout}},
		{"http-idle-timeout", "SIGHTLINE_HTTP_IDLE_TIMEOUT", fmt.Sprintf("how long an idle keep-alive connection is kept (default %s)", api.IdleTimeoutDefault), durSetting{&c.HTTP.IdleTimeout}},
	}
}

func (c *Config) bind(flags *pflag.FlagSet) {
	for _, s := range c.settings() {
		usage := fmt.Sprintf("%s (env %s)", s.usage, s.env)
		if _, ok := s.value.(boolSetting); ok {
			flags.Bool(s.flag, false, usage)
			continue
		}
		flags.String(s.flag, "", usage)
	}
	flags.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the command to this file (go tool pprof reads it)")
	flags.StringVar(&c.file, "config", "", "YAML file with any of: database_url, source, http_addr, api_token, read_token, insecure, examples, projections, log_level, log_format, batch_size, max_attempts, rebuild_batch_size, rebuild_grace, commit_wait, query_timeout, ready_max_lag, lease, role, http (read_header_timeout, read_timeout, write_timeout, idle_timeout, max_waits, max_streams)")
}

// load resolves the configuration for cmd, over what the program set.
func (c *Config) load(cmd *cobra.Command) error {
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
		if f := cmd.Flags().Lookup(s.flag); f != nil && f.Changed {
			if err := s.value.set(f.Value.String()); err != nil {
				return usagef("--%s: %v", s.flag, err)
			}
			continue // the flag beats the variable, even one that does not parse
		}
		if v, ok := os.LookupEnv(s.env); ok && v != "" {
			if err := s.value.set(v); err != nil {
				return usagef("%s: %v", s.env, err)
			}
		}
	}
	if v := os.Getenv("SIGHTLINE_API_TOKEN"); v != "" {
		c.APIToken = v
	}
	if f := cmd.Flags().Lookup("insecure"); f != nil && f.Changed {
		c.Insecure = f.Value.String() == "true"
	}
	if c.cpuProfile != "" {
		if err := startCPUProfile(c.cpuProfile); err != nil {
			return usagef("cpu profile: %v", err)
		}
	}
	if err := c.complete(); err != nil {
		return err
	}
	slog.SetDefault(c.logger)
	return nil
}

// complete sets the defaults and checks what cannot work.
func (c *Config) complete() error {
	if c.QueryTimeout < 0 || c.RebuildGrace < 0 || c.ReadyMaxLag < 0 || c.Lease < 0 {
		return usagef("query_timeout, rebuild_grace, ready_max_lag and lease must not be negative")
	}
	switch c.Role {
	case "", "both":
		c.Role = RoleAll
	case RoleAll, RoleServe, RoleProject:
	default:
		return usagef("role %q: want all, serve or project", c.Role)
	}
	if c.processID == "" {
		c.processID = projections.NewProcessID()
	}
	if c.BatchSize < 0 || c.MaxAttempts < 0 || c.RebuildBatchSize < 0 {
		return usagef("batch_size, max_attempts and rebuild_batch_size must not be negative")
	}
	if err := c.HTTP.Check(c.QueryTimeout); err != nil {
		return usageError{err}
	}
	if c.ReadToken != "" && c.APIToken == "" {
		return usagef("a read token needs an API token too: without one, the writes and the dead letters would stay open while the reads are guarded (set SIGHTLINE_API_TOKEN)")
	}
	c.DatabaseURL = cmp.Or(c.DatabaseURL, DatabaseURLDefault)
	c.Source = cmp.Or(c.Source, SourcePostgres)
	c.HTTPAddr = cmp.Or(c.HTTPAddr, api.AddrDefault)
	logger := c.Logger
	if logger == nil {
		var err error
		if logger, err = newLogger(c.LogLevel, c.LogFormat); err != nil {
			return err
		}
	}
	c.secrets = redact.NewReplacer(append(redact.Secrets(c.DatabaseURL, c.Source), c.APIToken, c.ReadToken)...)
	c.logger = slog.New(redact.Handler(logger.Handler(), c.secrets))
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
func (c *Config) checkListen() error {
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
func (c *Config) projectorConfig(metrics *projections.Metrics, source string) projections.Config {
	return projections.Config{
		Logger: c.logger, Metrics: metrics, Source: source, BatchSize: c.BatchSize, MaxAttempts: c.MaxAttempts,
		RebuildBatchSize: c.RebuildBatchSize, RetiredGrace: c.RebuildGrace, CommitWait: c.CommitWait, ProcessID: c.processID, Lease: c.Lease, ServeOnly: c.Role == RoleServe,
	}
}

// projection is the configured projection named name.
func (c *Config) projection(name string) (projections.Projection, error) {
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
	if len(names) == 0 {
		return nil, usagef("no projection named %q; none is configured (--examples, --projections DIR)", name)
	}
	return nil, usagef("no projection named %q; there are: %s", name, strings.Join(names, ", "))
}

// projections are the projections the configuration runs: the program's
// own, the examples when asked for, and the declarative ones of the
// ProjectionDir, refused together if any two clash.
func (c *Config) projections() ([]projections.Projection, error) {
	ps := append([]projections.Projection(nil), c.Projections...)
	if c.Examples {
		ps = append(ps, readmodel.All()...)
	}
	if c.ProjectionDir != "" {
		more, err := declarative.LoadDir(c.ProjectionDir)
		if err != nil {
			return nil, usageError{err}
		}
		if len(more) == 0 {
			return nil, usagef("no *.yaml projections in %s", c.ProjectionDir)
		}
		ps = append(ps, more...)
	}
	if err := projections.Validate(ps); err != nil {
		return nil, usageError{fmt.Errorf("the projections clash or are misnamed:\n%w", err)}
	}
	return ps, nil
}

// sourceForLogs is the source as it may be shown: without its secrets.
func (c *Config) sourceForLogs() string { return redact.URL(c.Source) }
