package projections

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/sightlinehq/sightline/query"
)

// Queryable is implemented by projections that declare read queries. The
// API serves each at GET /v1/projections/{name}/queries/{query}, with the
// staleness headers and read-your-writes, reading the active generation.
type Queryable interface {
	Queries() []query.Query
}

// SQLChecker is implemented by projections that can check their own SQL
// against their tables (declarative ones prepare their handlers).
// CheckSQL runs in a transaction that is rolled back, with the search path
// leading to schema, where Setup has just created the tables.
type SQLChecker interface {
	CheckSQL(ctx context.Context, tx pgx.Tx, schema string) error
}

// Sourced is implemented by projections that come from a file, for
// messages that name it.
type Sourced interface {
	Source() string
}

// SourceOf names where p was declared: its file, or its name and kind.
func SourceOf(p Projection) string {
	if s, ok := p.(Sourced); ok && s.Source() != "" {
		return s.Source()
	}
	return fmt.Sprintf("projection %s (Go, %T)", p.Name(), p)
}

// Problems is every problem Check found, one error each.
type Problems []error

func (ps Problems) Error() string {
	msgs := make([]string, len(ps))
	for i, p := range ps {
		msgs[i] = p.Error()
	}
	return strings.Join(msgs, "\n")
}

// Check checks projections against the database without changing it:
// in one transaction that it rolls back, it creates each projection's
// tables in a scratch schema with its Setup, checks its own SQL
// (SQLChecker), and compiles and checks its declared queries there. It
// returns the queries, ready to serve, or Problems naming each problem
// with its source, query and PostgreSQL's reason.
func Check(ctx context.Context, pool *pgxpool.Pool, ps []Projection) ([]*query.Prepared, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // a check changes nothing
	var problems Problems
	var invalid Problems
	if errors.As(Validate(ps), &invalid) {
		problems = append(problems, invalid...)
	}
	var out []*query.Prepared
	routes := map[string]string{}
	for _, p := range ps {
		src := SourceOf(p)
		if validate(p) != nil {
			continue // Validate named it
		}
		if _, err := tx.Exec(ctx, `SAVEPOINT sightline_check`); err != nil {
			return nil, err
		}
		prepared, errs := checkOne(ctx, tx, p)
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT sightline_check`); err != nil {
			return nil, err
		}
		for _, err := range errs {
			problems = append(problems, fmt.Errorf("%s: %w", src, err))
		}
		for _, q := range prepared {
			if q.Route == "" {
				continue
			}
			where := src + ", query " + q.Name
			if other, dup := routes[q.Route]; dup {
				problems = append(problems, fmt.Errorf("%s: route %s is also %s's", where, q.Route, other))
				continue
			}
			routes[q.Route] = where
		}
		out = append(out, prepared...)
	}
	if len(problems) > 0 {
		return nil, problems
	}
	return out, nil
}

// checkOne checks one projection inside a savepoint its caller rolls back.
func checkOne(ctx context.Context, tx pgx.Tx, p Projection) ([]*query.Prepared, []error) {
	schema := "sl_" + p.Name() + "_check"
	if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgx.Identifier{schema}.Sanitize()); err != nil {
		return nil, []error{fmt.Errorf("create a scratch schema: %w", err)}
	}
	if err := p.Setup(ctx, tx, schema); err != nil {
		return nil, []error{fmt.Errorf("set up the tables: %w", err)}
	}
	if _, err := tx.Exec(ctx, `SELECT set_config('search_path', $1, true)`, pgx.Identifier{schema}.Sanitize()+", public"); err != nil {
		return nil, []error{err}
	}
	var errs []error
	if c, ok := p.(SQLChecker); ok {
		if err := c.CheckSQL(ctx, tx, schema); err != nil {
			if joined, ok := err.(interface{ Unwrap() []error }); ok {
				errs = append(errs, joined.Unwrap()...)
			} else {
				errs = append(errs, err)
			}
		}
	}
	qp, ok := p.(Queryable)
	if !ok {
		return nil, errs
	}
	var out []*query.Prepared
	seen := map[string]bool{}
	for _, q := range qp.Queries() {
		if seen[q.Name] {
			errs = append(errs, fmt.Errorf("query %s is declared twice", q.Name))
			continue
		}
		seen[q.Name] = true
		c, err := query.Compile(p.Name(), q)
		if err != nil {
			errs = append(errs, fmt.Errorf("query %s: %w", q.Name, err))
			continue
		}
		prepared, err := c.Check(ctx, tx)
		if err != nil {
			if tx.Conn().PgConn().TxStatus() == 'E' {
				return out, append(errs, fmt.Errorf("query %s: %w", q.Name, err), errors.New("the check could not go on"))
			}
			errs = append(errs, fmt.Errorf("query %s: %w", q.Name, err))
			continue
		}
		out = append(out, prepared)
	}
	return out, errs
}
