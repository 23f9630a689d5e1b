package redact

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
)

// Mask is what a secret is replaced by.
const Mask = "xxxxx"

// secretKey is a query parameter or DSN key whose value is a secret.
var secretKey = regexp.MustCompile(`(?i)(pass|pwd|token|secret|key|credential)`)

// dsnSecret is a secret key=value pair of a key=value connection string
// (quoted as libpq quotes, or bare).
var dsnSecret = regexp.MustCompile(`(?i)\b([a-z_]*(?:pass|pwd|token|secret|key)[a-z_]*)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s]*)`)

// userInfo is the user:password@ of a URL that did not parse.
var userInfo = regexp.MustCompile(`(://[^/@:\s]*):[^@/\s]*@`)

// URL is the connection string s with its secrets masked: the password
// of a URL's user info, the values of its query parameters named like a
// password, token, secret or key, and such values of a key=value string.
// Anything else is kept, so that the string still says where it points.
func URL(s string) string {
	if !strings.Contains(s, "://") {
		return dsnSecret.ReplaceAllString(s, "${1}="+Mask)
	}
	u, err := url.Parse(s)
	if err != nil {
		s = userInfo.ReplaceAllString(s, "${1}:"+Mask+"@")
		return dsnSecret.ReplaceAllString(s, "${1}="+Mask)
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), Mask)
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			if secretKey.MatchString(k) {
				for i := range q[k] {
					q[k][i] = Mask
				}
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// Secrets are the secrets of connection strings: each password and
// secret parameter value, as written and as decoded.
func Secrets(connStrings ...string) []string {
	var out []string
	add := func(v string) {
		if len(v) >= 3 && v != Mask { // shorter ones would mask ordinary words
			out = append(out, v)
			if d, err := url.QueryUnescape(v); err == nil && d != v {
				out = append(out, d)
			}
		}
	}
	for _, s := range connStrings {
		if u, err := url.Parse(s); err == nil && strings.Contains(s, "://") {
			if p, ok := u.User.Password(); ok {
				add(p)
				add(url.QueryEscape(p))
			}
			for k, vs := range u.Query() {
				if secretKey.MatchString(k) {
					for _, v := range vs {
						add(v)
						add(url.QueryEscape(v))
					}
				}
			}
			continue
		}
		for _, m := range dsnSecret.FindAllStringSubmatch(s, -1) {
			add(strings.Trim(m[2], "'"))
		}
	}
	return out
}

// Replacer masks known secrets in any text.
type Replacer struct{ r *strings.Replacer }

// NewReplacer masks each of secrets (empty ones are ignored).
func NewReplacer(secrets ...string) *Replacer {
	var pairs []string
	for _, s := range secrets {
		if s != "" {
			pairs = append(pairs, s, Mask)
		}
	}
	if len(pairs) == 0 {
		return &Replacer{}
	}
	return &Replacer{strings.NewReplacer(pairs...)}
}

// String is s with every known secret masked.
func (r *Replacer) String(s string) string {
	if r == nil || r.r == nil {
		return s
	}
	return r.r.Replace(s)
}

// Handler wraps h so that no record it handles carries one of r's
// secrets: in its message, or in any attribute, errors and other values
// included (they are written as text).
func Handler(h slog.Handler, r *Replacer) slog.Handler {
	if r == nil || r.r == nil {
		return h
	}
	return &handler{h: h, r: r}
}

type handler struct {
	h slog.Handler
	r *Replacer
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, h.r.String(rec.Message), rec.PC)
	rec.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.h.Handle(ctx, out)
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = h.attr(a)
	}
	return &handler{h: h.h.WithAttrs(clean), r: h.r}
}

func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{h: h.h.WithGroup(name), r: h.r}
}

func (h *handler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.r.String(v.String()))
	case slog.KindGroup:
		g := v.Group()
		clean := make([]any, len(g))
		for i, ga := range g {
			clean[i] = h.attr(ga)
		}
		return slog.Group(a.Key, clean...)
	case slog.KindAny:
		return slog.String(a.Key, h.r.String(fmt.Sprint(v.Any())))
	}
	return slog.Attr{Key: a.Key, Value: v}
}

// urlIn is a URL within text.
var urlIn = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'` + "`" + `]+`)

// URLsIn is text with every URL in it masked as URL masks it.
func URLsIn(text string) string {
	return urlIn.ReplaceAllStringFunc(text, URL)
}
