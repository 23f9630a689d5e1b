package query

import (
	"bytes"
	"encoding/base64"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Page is which page of a list query a request reads.
type Page struct {
	// Limit is the most items the page holds, 1 to LimitMax.
	Limit int
	// After is the cursor of the page before: the PageBy values of its
	// last row as text, nil for NULL. Nil reads the first page.
	After []*string
}

// Format is what a result is written as.
type Format int

// Formats.
const (
	JSON Format = iota
	CSV
)

// Result is what a queued query returned, once its batch has been read.
type Result struct {
	// Found: a query of one row found it.
	Found bool
	// Body is the object (a query of one row), the JSON array of the
	// page's items, or the page as CSV with a header line.
	Body []byte
	// Next is the cursor of the next page; "" on the last.
	Next string
	// Rows counts the rows in Body.
	Rows int
}

// ErrBadCursor is a cursor this query did not give out.
var ErrBadCursor = errors.New("cursor is not one this query returned")

// ErrNotOne is a query of one row that found more.
var ErrNotOne = errors.New("declared one: true, the query returned more than one row")

// HasStream says whether the query names the stream it reads.
func (c *Compiled) HasStream() bool { return c.stream != "" }

// StreamSQL selects the name of the stream the query reads, as text, from
// the parameters StreamArgs gives.
func (c *Compiled) StreamSQL() string { return c.stream }

// StreamArgs are the values of StreamSQL's parameters.
func (c *Compiled) StreamArgs(a Args) []any { return a.of(c.streamArgs) }

// Cursor reads a cursor that Result.Next gave out for this query.
func (p *Prepared) Cursor(s string) ([]*string, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, ErrBadCursor
	}
	var parts []*string
	if err := json.Unmarshal(raw, &parts); err != nil || len(parts) != len(p.keys)+1 || parts[0] == nil || *parts[0] != p.fingerprint {
		return nil, ErrBadCursor
	}
	return parts[1:], nil
}

func (p *Prepared) cursor(vals []*string) string {
	raw, _ := json.Marshal(append([]*string{&p.fingerprint}, vals...)) // strings and nulls always marshal
	return base64.RawURLEncoding.EncodeToString(raw)
}

// Queue queues the query on b; the Result is filled once b's results are
// read, and b's error says when it could not be.
func (p *Prepared) Queue(b *pgx.Batch, args Args, page Page, f Format) *Result {
	res := &Result{}
	vals := args.of(p.args)
	var nulls []bool
	limit := 2 // one row, and whether there is a second
	if !p.One {
		limit = page.Limit + 1
		if page.After != nil {
			nulls = make([]bool, len(page.After))
			for i, v := range page.After {
				if v == nil {
					nulls[i] = true
				} else {
					vals = append(vals, *v)
				}
			}
		}
	}
	vals = append(vals, limit)
	b.Queue(p.pageSQL(nulls), vals...).Query(func(rows pgx.Rows) error { return p.read(rows, res, page, f) })
	return res
}

func (p *Prepared) read(rows pgx.Rows, res *Result, page Page, f Format) error {
	if err := rows.Err(); err != nil { // the statement failed: no fields to read
		return err
	}
	m := rows.Conn().TypeMap()
	fds := rows.FieldDescriptions()
	keyAt := make([]int, len(p.keys))
	for i, k := range p.keys {
		keyAt[i] = -1
		for j := range fds {
			if fds[j].Name == k.column {
				keyAt[i] = j
			}
		}
		if keyAt[i] < 0 {
			return fmt.Errorf("query %s: the result has no column %s to page by", p.Name, k.column)
		}
	}
	want := page.Limit
	if p.One {
		want = 1
	}
	var buf []byte
	var cw *csv.Writer
	var csvBuf bytes.Buffer
	var record []string
	switch {
	case f == CSV:
		cw = csv.NewWriter(&csvBuf)
		record = make([]string, len(fds))
		for i := range fds {
			record[i] = fds[i].Name
		}
		if err := cw.Write(record); err != nil {
			return err
		}
	case !p.One:
		buf = append(buf, '[')
	}
	last := make([]*string, len(p.keys))
	row := make([]any, len(fds))
	for rows.Next() {
		if res.Rows == want {
			if p.One {
				return fmt.Errorf("query %s: %w", p.Name, ErrNotOne)
			}
			res.Next = p.cursor(last)
			break
		}
		for i, raw := range rows.RawValues() {
			row[i] = nil
			if raw != nil {
				v, err := value(m, &fds[i], raw)
				if err != nil {
					return fmt.Errorf("column %s: %w", fds[i].Name, err)
				}
				row[i] = v
			}
		}
		var err error
		if cw != nil {
			for i, v := range row {
				if record[i], err = csvText(v); err != nil {
					return fmt.Errorf("column %s: %w", fds[i].Name, err)
				}
			}
			if err := cw.Write(record); err != nil {
				return err
			}
		} else {
			if res.Rows > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, '{')
			for i, v := range row {
				if i > 0 {
					buf = append(buf, ',')
				}
				buf = appendString(buf, fds[i].Name)
				buf = append(buf, ':')
				if buf, err = appendJSON(buf, v); err != nil {
					return fmt.Errorf("column %s: %w", fds[i].Name, err)
				}
			}
			buf = append(buf, '}')
		}
		for i, at := range keyAt {
			last[i] = nil
			if s, ok := textOf(row[at]); ok && row[at] != nil {
				last[i] = &s
			}
		}
		res.Rows++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	res.Found = res.Rows > 0
	if cw != nil {
		cw.Flush()
		res.Body = csvBuf.Bytes()
		return cw.Error()
	}
	if !p.One {
		buf = append(buf, ']')
	}
	res.Body = buf
	return nil
}

// pageSQL is the statement a request runs: the query's own SQL as a
// subquery, ordered and limited for a page. nulls is the shape of the
// cursor (which of its values are NULL); nil reads the first page. The
// statements are built from the declaration alone, one per shape, and kept.
func (p *Prepared) pageSQL(nulls []bool) string {
	shape := "first"
	if nulls != nil {
		var b strings.Builder
		for _, n := range nulls {
			b.WriteByte("vn"[boolInt(n)])
		}
		shape = b.String()
	}
	if s, ok := p.pages.Load(shape); ok {
		return s.(string)
	}
	var b strings.Builder
	b.WriteString("SELECT * FROM (\n")
	b.WriteString(p.sql)
	b.WriteString("\n) AS q")
	next := len(p.args) + 1
	if !p.One {
		if nulls != nil {
			var pred string
			pred, next = p.keyset(nulls, next)
			b.WriteString("\nWHERE " + pred)
		}
		b.WriteString("\nORDER BY ")
		for i, k := range p.keys {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(pgx.Identifier{k.column}.Sanitize())
			if k.desc {
				b.WriteString(" DESC")
			}
		}
	}
	fmt.Fprintf(&b, "\nLIMIT $%d", next)
	s, _ := p.pages.LoadOrStore(shape, b.String())
	return s.(string)
}

// fullCursor is the shape of a cursor with no NULL.
func (p *Prepared) fullCursor() []bool { return make([]bool, len(p.keys)) }

// keyset is the condition of the rows after a cursor of the given shape,
// its values numbered from first; it returns the next free number.
//
// Rows go in PostgreSQL's default order: ascending with NULLs last,
// descending with NULLs first. Where every key is NOT NULL, goes one way
// and the cursor has no NULL, it is one row comparison, which an index on
// the keys reads as a range; otherwise it is spelt out key by key, bounded
// by the first key where that is exact, so that the index still starts at
// the cursor.
func (p *Prepared) keyset(nulls []bool, first int) (string, int) {
	val := make([]string, len(p.keys))
	next := first
	for i, k := range p.keys {
		if !nulls[i] {
			val[i] = fmt.Sprintf("$%d::text::%s", next, k.typ)
			next++
		}
	}
	col := func(i int) string { return pgx.Identifier{p.keys[i].column}.Sanitize() }

	uniform := true
	for i, k := range p.keys {
		uniform = uniform && !nulls[i] && !k.nullable && k.desc == p.keys[0].desc
	}
	if uniform {
		cols := make([]string, len(p.keys))
		for i := range p.keys {
			cols[i] = col(i)
		}
		op := ">"
		if p.keys[0].desc {
			op = "<"
		}
		return "(" + strings.Join(cols, ", ") + ") " + op + " (" + strings.Join(val, ", ") + ")", next
	}

	equal := func(i int) string {
		if nulls[i] {
			return col(i) + " IS NULL"
		}
		return col(i) + " = " + val[i]
	}
	after := func(i int) (string, bool) {
		k := p.keys[i]
		switch {
		case !k.desc && nulls[i]:
			return "", false // NULLs come last: nothing is after one
		case !k.desc && k.nullable:
			return "(" + col(i) + " > " + val[i] + " OR " + col(i) + " IS NULL)", true
		case !k.desc:
			return col(i) + " > " + val[i], true
		case nulls[i]:
			return col(i) + " IS NOT NULL", true // NULLs come first: every value is after one
		default:
			return col(i) + " < " + val[i], true
		}
	}
	var ors []string
	for i := range p.keys {
		a, ok := after(i)
		if !ok {
			continue
		}
		var and []string
		for j := range i {
			and = append(and, equal(j))
		}
		ors = append(ors, "("+strings.Join(append(and, a), " AND ")+")")
	}
	if len(ors) == 0 {
		return "false", next
	}
	pred := strings.Join(ors, " OR ")
	switch k := p.keys[0]; {
	case nulls[0]:
	case k.desc:
		pred = col(0) + " <= " + val[0] + " AND (" + pred + ")"
	case !k.nullable:
		pred = col(0) + " >= " + val[0] + " AND (" + pred + ")"
	}
	return pred, next
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
