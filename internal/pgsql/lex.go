package pgsql

import (
	"errors"
	"fmt"
	"strings"
)

// Kind is what a token is.
type Kind int

// Token kinds.
const (
	Space      Kind = iota // white space
	Comment                // -- to the end of the line, or /* … */ (nested)
	String                 // '…', E'…', B'…', X'…', N'…', U&'…'
	Dollar                 // $tag$…$tag$
	Quoted                 // "…", U&"…": a quoted identifier
	Word                   // an identifier or key word
	Number                 // a numeric constant
	Param                  // :name, a named parameter
	Positional             // $1, a positional parameter
	Cast                   // ::
	Semicolon              // ;
	Other                  // any other character: operators, punctuation
)

// Token is one lexical token; Text is exactly as written.
type Token struct {
	Kind Kind
	Text string
	Pos  int // byte offset in the input
}

// Name is a Param's name, without its colon.
func (t Token) Name() string { return strings.TrimPrefix(t.Text, ":") }

// Is reports whether t is the key word kw (case-insensitive).
func (t Token) Is(kw string) bool { return t.Kind == Word && strings.EqualFold(t.Text, kw) }

// Significant reports whether t is neither white space nor a comment.
func (t Token) Significant() bool { return t.Kind != Space && t.Kind != Comment }

// SyntaxError is an input the lexer cannot finish: an unterminated
// literal, identifier or comment.
type SyntaxError struct {
	Pos int
	Msg string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("%s (at byte %d)", e.Msg, e.Pos) }

// Scan splits sql into tokens. Concatenating their texts gives sql back.
func Scan(sql string) ([]Token, error) {
	var out []Token
	for i := 0; i < len(sql); {
		kind, n, err := next(sql, i)
		if err != nil {
			return nil, err
		}
		out = append(out, Token{Kind: kind, Text: sql[i : i+n], Pos: i})
		i += n
	}
	return out, nil
}

// next lexes the token at sql[i:], returning its kind and length.
func next(sql string, i int) (Kind, int, error) {
	s := sql[i:]
	c := s[0]
	switch {
	case isSpace(c):
		n := 1
		for n < len(s) && isSpace(s[n]) {
			n++
		}
		return Space, n, nil
	case strings.HasPrefix(s, "--"):
		n := strings.IndexAny(s, "\n\r")
		if n < 0 {
			n = len(s)
		}
		return Comment, n, nil
	case strings.HasPrefix(s, "/*"):
		return blockComment(s, i)
	case c == '\'':
		n, err := quoted(s, i, 0, '\'', false)
		return String, n, err
	case c == '"':
		n, err := quoted(s, i, 0, '"', false)
		return Quoted, n, err
	case c == '$':
		return dollar(s, i)
	case c == ':':
		switch {
		case len(s) > 1 && s[1] == ':':
			return Cast, 2, nil
		case len(s) > 1 && isIdentStart(s[1]):
			n := 2
			for n < len(s) && isIdentPart(s[n]) && s[n] != '$' {
				n++
			}
			return Param, n, nil
		}
		return Other, 1, nil
	case c == ';':
		return Semicolon, 1, nil
	case isDigit(c) || c == '.' && len(s) > 1 && isDigit(s[1]):
		return Number, number(s), nil
	case isIdentStart(c):
		// A one-letter prefix glued to a quote makes a string of that kind:
		// E'…' takes backslash escapes; B, X and N strings, and U& ones, do
		// not. As in PostgreSQL's lexer, the longer match wins, so only a
		// word of exactly that letter is a prefix.
		if len(s) > 1 && s[1] == '\'' {
			switch c {
			case 'e', 'E':
				n, err := quoted(s, i, 1, '\'', true)
				return String, n, err
			case 'b', 'B', 'x', 'X', 'n', 'N':
				n, err := quoted(s, i, 1, '\'', false)
				return String, n, err
			}
		}
		if (c == 'u' || c == 'U') && len(s) > 2 && s[1] == '&' && (s[2] == '\'' || s[2] == '"') {
			n, err := quoted(s, i, 2, s[2], false)
			if s[2] == '"' {
				return Quoted, n, err
			}
			return String, n, err
		}
		n := 1
		for n < len(s) && isIdentPart(s[n]) {
			n++
		}
		return Word, n, nil
	}
	return Other, 1, nil
}

// quoted lexes a literal or identifier whose opening quote q is at
// s[skip]; a doubled quote stands for itself, and with backslash a
// backslash escapes the next character.
func quoted(s string, at, skip int, q byte, backslash bool) (int, error) {
	for n := skip + 1; n < len(s); n++ {
		switch {
		case backslash && s[n] == '\\':
			n++ // the escaped character, whatever it is
		case s[n] == q:
			if n+1 < len(s) && s[n+1] == q {
				n++
				continue
			}
			return n + 1, nil
		}
	}
	what := "string literal"
	if q == '"' {
		what = "quoted identifier"
	}
	return 0, &SyntaxError{Pos: at, Msg: "unterminated " + what}
}

func blockComment(s string, at int) (Kind, int, error) {
	depth := 0
	for n := 0; n+1 < len(s); n++ {
		switch {
		case s[n] == '/' && s[n+1] == '*':
			depth++
			n++
		case s[n] == '*' && s[n+1] == '/':
			depth--
			n++
			if depth == 0 {
				return Comment, n + 1, nil
			}
		}
	}
	return 0, 0, &SyntaxError{Pos: at, Msg: "unterminated /* comment"}
}

// dollar lexes what starts with $: a positional parameter, a
// dollar-quoted string, or a lone $.
func dollar(s string, at int) (Kind, int, error) {
	if len(s) > 1 && isDigit(s[1]) {
		n := 2
		for n < len(s) && isDigit(s[n]) {
			n++
		}
		return Positional, n, nil
	}
	n := 1
	if n < len(s) && isIdentStart(s[n]) {
		for n < len(s) && isIdentPart(s[n]) && s[n] != '$' {
			n++
		}
	}
	if n >= len(s) || s[n] != '$' {
		return Other, 1, nil
	}
	tag := s[:n+1]
	end := strings.Index(s[len(tag):], tag)
	if end < 0 {
		return 0, 0, &SyntaxError{Pos: at, Msg: "unterminated dollar-quoted string " + tag}
	}
	return Dollar, len(tag) + end + len(tag), nil
}

// number lexes a numeric constant: digits, a decimal point, an exponent.
// Letters and underscores glued to it are taken along, as PostgreSQL
// reads 0x1F or 1_000 as one token (or rejects it) rather than a number
// and a word.
func number(s string) int {
	n := 0
	for n < len(s) {
		c := s[n]
		switch {
		case isDigit(c) || c == '_' || isLetter(c) && !(c == 'e' || c == 'E'):
			n++
		case c == '.' && !(n+1 < len(s) && s[n+1] == '.'): // 1..2 is not a number
			n++
		case c == 'e' || c == 'E':
			n++
			if n < len(s) && (s[n] == '+' || s[n] == '-') && n+1 < len(s) && isDigit(s[n+1]) {
				n++
			}
		default:
			return n
		}
	}
	return n
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isLetter(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// isIdentStart and isIdentPart follow PostgreSQL: bytes above 0x7F (the
// parts of multi-byte UTF-8 characters) are letters, and $ may follow the
// first character.
func isIdentStart(c byte) bool { return isLetter(c) || c == '_' || c >= 0x80 }
func isIdentPart(c byte) bool  { return isIdentStart(c) || isDigit(c) || c == '$' }

// Statement is the one statement in sql, with a trailing semicolon and
// the white space and comments around it removed. It fails when sql holds
// no statement, or more than one.
func Statement(sql string) ([]Token, error) {
	toks, err := Scan(sql)
	if err != nil {
		return nil, err
	}
	first, last := -1, -1
	for i, t := range toks {
		if !t.Significant() {
			continue
		}
		if t.Kind == Semicolon {
			for _, u := range toks[i+1:] {
				if u.Significant() && u.Kind != Semicolon {
					return nil, &SyntaxError{Pos: u.Pos, Msg: "more than one statement: only one is allowed"}
				}
			}
			break
		}
		if first < 0 {
			first = i
		}
		last = i
	}
	if first < 0 {
		return nil, errors.New("no statement")
	}
	return toks[first : last+1], nil
}

// Text joins tokens' texts.
func Text(toks []Token) string {
	var b strings.Builder
	for _, t := range toks {
		b.WriteString(t.Text)
	}
	return b.String()
}
