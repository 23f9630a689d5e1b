package sightline

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"

	"github.com/sightlinehq/sightline/internal/redact"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// usageError is a mistake in the command line or configuration.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// Main runs the sightline command line on args (without the program
// name, as os.Args[1:]) until ctx ends, and returns the exit code: 0
// success, 1 failure or drift, 2 bad usage. Options add what the program
// brings, such as its own Go projections; every command then knows them.
func Main(ctx context.Context, args []string, opts ...Option) int {
	root, c := newRootCmd(opts...)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	stopCPUProfile()
	if err == nil {
		return exitOK
	}
	mask := func(s string) string { return c.secrets.String(redact.URLsIn(s)) }
	var ue usageError
	if errors.As(err, &ue) || strings.HasPrefix(err.Error(), "unknown command") || strings.HasPrefix(err.Error(), "unknown flag") ||
		strings.HasPrefix(err.Error(), "accepts ") || strings.HasPrefix(err.Error(), "requires ") {
		fmt.Fprintf(os.Stderr, "sightline: %s\nRun 'sightline --help' for usage.\n", mask(err.Error()))
		return exitUsage
	}
	var ex exitError
	if errors.As(err, &ex) {
		if ex.msg != "" {
			fmt.Fprintln(os.Stderr, "sightline: "+mask(ex.msg))
		}
		return ex.code
	}
	fmt.Fprintf(os.Stderr, "sightline: %s\n", mask(err.Error()))
	return exitFailure
}

// exitError ends the command with a given code.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

// stopCPUProfile ends the profile --cpuprofile started, if any.
var stopCPUProfile = func() {}

func startCPUProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	stopCPUProfile = func() {
		pprof.StopCPUProfile()
		f.Close()
	}
	return nil
}
