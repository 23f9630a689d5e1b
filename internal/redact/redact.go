package redact

import (
	"net/url"
	"strings"
)

// Mask replaces each secret.
const Mask = "xxxxx"

// URL returns s with its secrets replaced by Mask: the password of a URL's
// user info, and the values of query parameters or key=value settings whose
// names say they hold a secret (see the package documentation). A string
// that is neither a URL nor holds key=value settings is returned as it is.
func URL(s string) string {
	if i := strings.Index(s, "://"); i > 0 && isScheme(s[:i]) {
		return s[:i+3] + redactURLRest(s[i+3:])
	}
	return redactSettings(s)
}

// isScheme reports whether s is a URL scheme (RFC 3986: a letter, then
// letters, digits, '+', '-' or '.').
func isScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// redactURLRest redacts what follows a URL's "scheme://".
func redactURLRest(rest string) string {
	var b strings.Builder
	// The user info ends at the last @: a password may hold an @ that was
	// not percent-encoded (and so may it a /, ? or #, which is why the
	// last @ of the whole rest counts, not the last of the authority).
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		userinfo := rest[:at]
		if user, password, ok := strings.Cut(userinfo, ":"); ok && password != "" {
			b.WriteString(user)
			b.WriteString(":" + Mask)
		} else {
			b.WriteString(userinfo)
		}
		b.WriteByte('@')
		rest = rest[at+1:]
	}
	q := strings.IndexByte(rest, '?')
	if q < 0 {
		b.WriteString(rest)
		return b.String()
	}
	b.WriteString(rest[:q+1])
	query, fragment := rest[q+1:], ""
	if h := strings.IndexByte(query, '#'); h >= 0 {
		query, fragment = query[:h], query[h:]
	}
	for i, pair := range strings.Split(query, "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		key, value, ok := strings.Cut(pair, "=")
		if name, err := url.QueryUnescape(key); err == nil {
			key = name
		}
		if ok && value != "" && isSecret(key) {
			pair = pair[:len(pair)-len(value)] + Mask
		}
		b.WriteString(pair)
	}
	b.WriteString(fragment)
	return b.String()
}

// redactSettings redacts key=value settings, as in a PostgreSQL connection
// string: whitespace around '=' is allowed, a value may be single-quoted
// with backslash escapes, and an unquoted value ends at white space.
func redactSettings(s string) string {
	var b strings.Builder
	done := 0 // s[:done] is written to b or needs no change
	for i := 0; i < len(s); i++ {
		if s[i] != '=' {
			continue
		}
		if !isSecret(keyBefore(s[:i])) {
			continue
		}
		start := i + 1
		for start < len(s) && isSpace(s[start]) {
			start++
		}
		end := valueEnd(s, start)
		if v := s[start:end]; v != "" && v != "''" {
			b.WriteString(s[done:start])
			b.WriteString(Mask)
			done = end
		}
		i = end - 1
	}
	if done == 0 {
		return s
	}
	b.WriteString(s[done:])
	return b.String()
}

// keyBefore returns the setting name that ends s, before white space.
func keyBefore(s string) string {
	end := len(s)
	for end > 0 && isSpace(s[end-1]) {
		end--
	}
	start := end
	for start > 0 && isKeyByte(s[start-1]) {
		start--
	}
	return s[start:end]
}

// valueEnd returns the end of the value that starts at s[start]: past its
// closing quote if it is quoted (the end of s if it is never closed), else
// at the next white space.
func valueEnd(s string, start int) int {
	if start < len(s) && s[start] == '\'' {
		for i := start + 1; i < len(s); i++ {
			switch s[i] {
			case '\\':
				i++
			case '\'':
				return i + 1
			}
		}
		return len(s)
	}
	end := start
	for end < len(s) && !isSpace(s[end]) {
		if s[end] == '\\' && end+1 < len(s) {
			end++
		}
		end++
	}
	return end
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isKeyByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-' || c == '.'
}

// isSecret reports whether a setting or parameter named name holds a
// secret.
func isSecret(name string) bool {
	n := strings.Map(func(r rune) rune {
		switch r {
		case '_', '-', '.':
			return -1
		}
		return r
	}, strings.ToLower(name))
	if n == "sig" || strings.HasSuffix(n, "key") {
		return true
	}
	for _, word := range []string{"pass", "pwd", "token", "secret", "credential", "signature"} {
		if strings.Contains(n, word) {
			return true
		}
	}
	return false
}
