package projections

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

func TestErrorClasses(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("queued statement: %w", &pgconn.PgError{Code: code}) }
	for name, c := range map[string]struct {
		err                  error
		transient, permanent bool
	}{
		"terminated by the administrator": {pg("57P01"), true, false},
		"server shutting down":            {pg("57P02"), true, false},
		"cannot connect now (starting)":   {pg("57P03"), true, false},
		"serialization failure":           {pg("40001"), true, false},
		"deadlock":                        {pg("40P01"), true, false},
		"connection failure":              {pg("08006"), true, false},
		"too many connections":            {pg("53300"), true, false},
		"lock not available":              {pg("55P03"), true, false},
		"connection reset":                {&net.OpError{Op: "read", Err: syscall.ECONNRESET}, true, false},
		"connection refused":              {fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true, false},
		"unexpected EOF":                  {fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true, false},
		"transaction closed":              {pgx.ErrTxClosed, true, false},
		"deadline":                        {context.DeadlineExceeded, true, false},
		"bad number":                      {pg("22P02"), false, true},
		"division by zero":                {pg("22012"), false, true},
		"unique violation":                {pg("23505"), false, false},
		"undefined column (schema)":       {pg("42703"), true, false},
		"table missing (schema)":          {pg("42P01"), true, false},
		"privilege revoked":               {pg("42501"), true, false},
		"cached plan stale":               {pg("0A000"), true, false},
		"idle in transaction timeout":     {pg("25P03"), true, false},
		"statement timeout":               {pg("57014"), true, false},
		"internal error":                  {pg("XX000"), true, false},
		"raised by a trigger":             {pg("P0001"), false, false},
		"handler's own error":             {errors.New("no such customer"), false, false},
		"marked permanent":                {Permanent(errors.New("cannot decode")), false, true},
		"marked permanent, wrapped":       {fmt.Errorf("apply: %w", Permanent(errors.New("x"))), false, true},
	} {
		require.Equal(t, c.transient, IsTransient(c.err), "%s: transient", name)
		require.Equal(t, c.permanent, IsPermanent(c.err), "%s: permanent", name)
	}
	require.Nil(t, Permanent(nil))
	require.False(t, IsTransient(nil))
}
