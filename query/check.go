package query

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/sightlinehq/sightline/internal/pgsql"
)

// Column is one column of a query's result.
type Column struct {
	Name string
	// Type is the SQL type, as format_type writes it; OID its oid.
	Type string
	OID  uint32
	// NotNull: the column is a table column declared NOT NULL. (Joins can
	// still make it NULL; see PageBy.)
	NotNull bool
}

// Prepared is a query checked against its projection's tables, ready to
// run. It is safe for concurrent use.
type Prepared struct {
	*Compiled
	// Columns are the result's columns, in order.
	Columns []Column

	keys        []pageKey
	fingerprint string
	pages       sync.Map // pageSQL by cursor shape (which values are NULL)
}

// pageKey is a column of PageBy as the result has it.
type pageKey struct {
	key
	typ      string
	nullable bool
}

// cursorTypes are the types a cursor carries exactly as text, and casts
// back by their pg_catalog names whatever the search path.
var cursorTypes = map[uint32]bool{
	pgtype.Int2OID: true, pgtype.Int4OID: true, pgtype.Int8OID: true, pgtype.Float4OID: true, pgtype.Float8OID: true,
	pgtype.NumericOID: true, pgtype.BoolOID: true, pgtype.TextOID: true, pgtype.VarcharOID: true, pgtype.BPCharOID: true,
	pgtype.NameOID: true, pgtype.UUIDOID: true, pgtype.DateOID: true, pgtype.TimestampOID: true, pgtype.TimestamptzOID: true,
}

// Check prepares the query on tx, whose search_path leads to the
// projection's tables, and runs it once, on no rows, read-only: what is
// not one read statement, names what its projection does not have, or does
// not plan is refused with PostgreSQL's reason. tx is left as it was.
func (c *Compiled) Check(ctx context.Context, tx pgx.Tx) (*Prepared, error) {
	if _, err := tx.Exec(ctx, `SAVEPOINT sightline_query_check`); err != nil {
		return nil, err
	}
	p, err := c.check(ctx, tx)
	if _, rerr := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT sightline_query_check`); rerr != nil && err == nil {
		err = rerr
	}
	return p, err
}

func (c *Compiled) check(ctx context.Context, tx pgx.Tx) (*Prepared, error) {
	sd, err := tx.Conn().PgConn().Prepare(ctx, "", c.sql, nil)
	if err != nil {
		return nil, fmt.Errorf("sql: %w", dbReason(err))
	}
	p := &Prepared{Compiled: c}
	if p.Columns, err = columns(ctx, tx, sd.Fields); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for i, col := range p.Columns {
		switch {
		case col.Name == "?column?":
			return nil, fmt.Errorf("sql: result column %d has no name; name it with AS", i+1)
		case seen[col.Name]:
			return nil, fmt.Errorf("sql: two result columns are named %s; each needs a name of its own", col.Name)
		}
		seen[col.Name] = true
	}
	for _, k := range c.pageBy {
		i := p.column(k.column)
		if i < 0 {
			return nil, fmt.Errorf("page_by: %s is not a column of the result (%s)", k.column, p.columnList())
		}
		col := p.Columns[i]
		if !cursorTypes[col.OID] {
			return nil, fmt.Errorf("page_by: %s is of type %s, which pages cannot be ordered by; order by text, numbers, booleans, uuids, dates or timestamps (cast it in the SELECT)", k.column, col.Type)
		}
		typ := col.Type
		if col.OID == pgtype.BPCharOID {
			typ = "bpchar" // format_type's "character" is char(1): the cursor's value would be cut to one character
		}
		// A column of a table declared NOT NULL can still be NULL on the
		// outer side of a join: there, every key may be NULL.
		p.keys = append(p.keys, pageKey{key: k, typ: typ, nullable: !col.NotNull || c.outerJoin})
	}
	h := sha256.Sum256([]byte(c.Projection + "\x00" + c.Name + "\x00" + strings.Join(c.PageBy, ",")))
	p.fingerprint = hex.EncodeToString(h[:6])

	// The statements a request runs: the first page, a later one, the
	// stream's name. Run on no rows in a read-only transaction, the first
	// is refused if it would lock or write.
	if _, err := tx.Conn().PgConn().Prepare(ctx, "", p.pageSQL(p.fullCursor()), nil); err != nil {
		return nil, fmt.Errorf("sql: %w", dbReason(err))
	}
	if c.stream != "" {
		if _, err := tx.Conn().PgConn().Prepare(ctx, "", c.stream, nil); err != nil {
			return nil, fmt.Errorf("stream: %w", dbReason(err))
		}
	}
	if err := ownTables(ctx, tx, c.sql); err != nil {
		return nil, fmt.Errorf("sql: %w", err)
	}
	if c.stream != "" {
		if err := ownTables(ctx, tx, c.stream); err != nil {
			return nil, fmt.Errorf("stream: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `SET LOCAL transaction_read_only = on`); err != nil {
		return nil, err
	}
	first := p.pageSQL(nil)
	args := append(make([]any, len(c.args)), 0) // every param NULL, LIMIT 0
	rows, err := tx.Query(ctx, first, append([]any{pgx.QueryExecModeDescribeExec}, args...)...)
	if err == nil {
		rows.Close()
		err = rows.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("sql: %w", dbReason(err))
	}
	return p, nil
}

// ownTables refuses a query that reads relations beyond its projection's
// tables, the schema the search path leads to: another projection's (or
// its readmodel view), sightline's own. It keeps the query as a view,
// whose dependencies PostgreSQL records whatever the parameters, and
// reads them. (Dependencies on the system catalogs are not recorded: a
// query of pg_class passes.) The view selects a constant from the query,
// so that no column type of the query's can keep it from being made.
func ownTables(ctx context.Context, tx pgx.Tx, sql string) error {
	toks, err := pgsql.Scan(sql)
	if err != nil {
		return err
	}
	for i, t := range toks {
		if t.Kind == pgsql.Positional {
			toks[i].Text = "NULL"
		}
	}
	var schema string
	if err := tx.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		return err
	}
	view := pgx.Identifier{schema, "sightline_query_check"}.Sanitize()
	if _, err := tx.Exec(ctx, `CREATE VIEW `+view+` AS SELECT 1 AS one FROM (`+pgsql.Text(toks)+"\n) q"); err != nil {
		return fmt.Errorf("cannot tell which tables it reads: %w", dbReason(err))
	}
	rows, err := tx.Query(ctx, `SELECT DISTINCT format('%I.%I', n.nspname, r.relname)
		FROM pg_rewrite w
		JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid AND d.refclassid = 'pg_class'::regclass
		JOIN pg_class r ON r.oid = d.refobjid
		JOIN pg_namespace n ON n.oid = r.relnamespace
		WHERE w.ev_class = $2::regclass AND r.oid <> w.ev_class AND n.nspname <> $1
		ORDER BY 1`, schema, view)
	if err == nil {
		defer tx.Exec(ctx, `DROP VIEW `+view) //nolint:errcheck // rolled back with the check if this fails
	}
	if err != nil {
		return err
	}
	others, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	if len(others) > 0 {
		return fmt.Errorf("reads %s, which %s not among the projection's tables; a query reads its own projection's tables, unqualified",
			strings.Join(others, ", "), plural(len(others), "is", "are"))
	}
	return nil
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// columns describes fields, with their types' names and whether each is a
// NOT NULL column of a table.
func columns(ctx context.Context, tx pgx.Tx, fields []pgconn.FieldDescription) ([]Column, error) {
	oids, rels, atts := make([]uint32, len(fields)), make([]uint32, len(fields)), make([]int16, len(fields))
	for i, f := range fields {
		oids[i], rels[i], atts[i] = f.DataTypeOID, f.TableOID, int16(f.TableAttributeNumber)
	}
	rows, err := tx.Query(ctx, `SELECT format_type(c.typ, NULL), coalesce(a.attnotnull, false)
		FROM unnest($1::oid[], $2::oid[], $3::int2[]) WITH ORDINALITY AS c (typ, rel, att, n)
		LEFT JOIN pg_attribute a ON c.rel <> 0 AND a.attrelid = c.rel AND a.attnum = c.att
		ORDER BY c.n`, oids, rels, atts)
	if err != nil {
		return nil, err
	}
	cols := make([]Column, 0, len(fields))
	var typ string
	var notNull bool
	_, err = pgx.ForEachRow(rows, []any{&typ, &notNull}, func() error {
		f := fields[len(cols)]
		cols = append(cols, Column{Name: f.Name, Type: typ, OID: f.DataTypeOID, NotNull: notNull})
		return nil
	})
	return cols, err
}

func (p *Prepared) column(name string) int {
	for i, c := range p.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

func (p *Prepared) columnList() string {
	names := make([]string, len(p.Columns))
	for i, c := range p.Columns {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

// dbReason is PostgreSQL's own words for err, with its position and hint.
func dbReason(err error) error {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return err
	}
	msg := pe.Message
	if pe.Detail != "" {
		msg += " (" + pe.Detail + ")"
	}
	if pe.Hint != "" {
		msg += "; hint: " + pe.Hint
	}
	return fmt.Errorf("%s (SQLSTATE %s)", msg, pe.Code)
}
