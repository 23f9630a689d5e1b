package query

import (
	"database/sql/driver"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// How values go out, whatever the column's SQL type:
//   - integer, bigint, smallint, real, double precision: JSON numbers
//     (NaN and infinities, which JSON has no number for, as strings);
//   - numeric: a string, so that no digit is lost to a float;
//   - timestamptz: RFC 3339 in UTC; timestamp: the same without a zone;
//     date: YYYY-MM-DD; infinities as "infinity" and "-infinity";
//   - json and jsonb: the JSON itself;
//   - bytea: base64 in JSON, \x hex in CSV;
//   - NULL: null in JSON, an empty cell in CSV;
//   - arrays: JSON arrays; anything else: its text (an interval, say, as
//     1 day 02:00:00).

// value decodes one column's raw bytes (not NULL) into what the encoders
// take.
func value(m *pgtype.Map, fd *pgconn.FieldDescription, raw []byte) (any, error) {
	switch fd.DataTypeOID {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID:
		var n int64
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &n)
		return n, err
	case pgtype.Float4OID, pgtype.Float8OID:
		var f float64
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &f)
		return f, err
	case pgtype.BoolOID:
		var b bool
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &b)
		return b, err
	case pgtype.NumericOID:
		var n pgtype.Numeric
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &n)
		return n, err
	case pgtype.DateOID:
		var d pgtype.Date
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &d)
		return d, err
	case pgtype.TimestamptzOID:
		var ts pgtype.Timestamptz
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &ts)
		return ts, err
	case pgtype.TimestampOID:
		var ts pgtype.Timestamp
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &ts)
		return ts, err
	case pgtype.UUIDOID:
		var u pgtype.UUID
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &u)
		return u, err
	case pgtype.JSONOID:
		return rawJSON(raw), nil
	case pgtype.JSONBOID:
		if fd.Format == pgtype.BinaryFormatCode {
			if len(raw) == 0 || raw[0] != 1 {
				return nil, fmt.Errorf("jsonb in an unknown binary version")
			}
			raw = raw[1:]
		}
		return rawJSON(raw), nil
	case pgtype.ByteaOID:
		var b []byte
		err := m.Scan(fd.DataTypeOID, fd.Format, raw, &b)
		return b, err
	case pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID:
		return text(raw), nil
	}
	if fd.Format == pgtype.TextFormatCode {
		return text(raw), nil // a type pgx does not know: PostgreSQL's text
	}
	t, ok := m.TypeForOID(fd.DataTypeOID)
	if !ok {
		return text(raw), nil
	}
	return t.Codec.DecodeValue(m, fd.DataTypeOID, fd.Format, raw)
}

// rawJSON is a json or jsonb value; text is a string column's bytes. Both
// borrow the row's buffer: they are encoded before the next row.
type (
	rawJSON []byte
	text    []byte
)

// appendJSON appends v as JSON.
func appendJSON(buf []byte, v any) ([]byte, error) {
	switch v := v.(type) {
	case nil:
		return append(buf, "null"...), nil
	case int64:
		return strconv.AppendInt(buf, v, 10), nil
	case float64:
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return appendString(buf, floatText(v)), nil
		}
		return strconv.AppendFloat(buf, v, 'g', -1, 64), nil
	case bool:
		return strconv.AppendBool(buf, v), nil
	case text:
		return appendStringBytes(buf, v), nil
	case rawJSON:
		return append(buf, v...), nil
	case []byte:
		buf = append(buf, '"')
		buf = base64.StdEncoding.AppendEncode(buf, v)
		return append(buf, '"'), nil
	case []any:
		buf = append(buf, '[')
		for i, e := range v {
			if i > 0 {
				buf = append(buf, ',')
			}
			var err error
			if buf, err = appendJSON(buf, plain(e)); err != nil {
				return buf, err
			}
		}
		return append(buf, ']'), nil
	}
	if s, ok := textOf(v); ok {
		return appendString(buf, s), nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return buf, err
	}
	return append(buf, raw...), nil
}

// textOf renders the values that go out as strings, in JSON and in CSV
// alike, and as cursors.
func textOf(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case text:
		return string(v), true
	case int64:
		return strconv.FormatInt(v, 10), true
	case float64:
		return floatText(v), true
	case bool:
		return strconv.FormatBool(v), true
	case pgtype.Numeric:
		s, err := v.Value()
		if str, ok := s.(string); ok && err == nil {
			return str, true
		}
	case pgtype.Date:
		switch v.InfinityModifier {
		case pgtype.Infinity:
			return "infinity", true
		case pgtype.NegativeInfinity:
			return "-infinity", true
		}
		return v.Time.Format(time.DateOnly), true
	case pgtype.Timestamptz:
		switch v.InfinityModifier {
		case pgtype.Infinity:
			return "infinity", true
		case pgtype.NegativeInfinity:
			return "-infinity", true
		}
		return v.Time.UTC().Format(time.RFC3339Nano), true
	case pgtype.Timestamp:
		switch v.InfinityModifier {
		case pgtype.Infinity:
			return "infinity", true
		case pgtype.NegativeInfinity:
			return "-infinity", true
		}
		return v.Time.Format("2006-01-02T15:04:05.999999999"), true
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano), true
	case pgtype.UUID:
		return uuid.UUID(v.Bytes).String(), true
	case [16]byte:
		return uuid.UUID(v).String(), true
	case fmt.Stringer:
		return v.String(), true
	case driver.Valuer:
		if x, err := v.Value(); err == nil {
			if s, ok := x.(string); ok {
				return s, true
			}
		}
	}
	return "", false
}

// plain is an array element as the encoders take it.
func plain(v any) any {
	switch v := v.(type) {
	case string:
		return text(v)
	case int16:
		return int64(v)
	case int32:
		return int64(v)
	case float32:
		return float64(v)
	case map[string]any:
		return v
	}
	return v
}

func floatText(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// csvText renders v for a CSV cell; NULL is the empty cell.
func csvText(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "", nil
	case rawJSON:
		return string(v), nil
	case []byte:
		return `\x` + hex.EncodeToString(v), nil
	}
	if s, ok := textOf(v); ok {
		return s, nil
	}
	raw, err := appendJSON(nil, v)
	return string(raw), err
}

func appendString(buf []byte, s string) []byte { return appendStringBytes(buf, []byte(s)) }

// appendStringBytes appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced.
func appendStringBytes(buf []byte, s []byte) []byte {
	const hexDigits = "0123456789abcdef"
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch c {
			case '"', '\\':
				buf = append(buf, '\\', c)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' { // valid JSON, but not inside JavaScript strings
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}
