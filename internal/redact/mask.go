package redact

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strings"
)

// minSecret is the shortest secret masked wherever it appears: a shorter
// one would mask ordinary words.
const minSecret = 3

// setting is one key=value of a key=value connection string.
var setting = regexp.MustCompile(`([A-Za-z_.-]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s;]*)`)

// Secrets are the secrets of connection strings, as URL finds them: each
// password and secret parameter value, as written and as decoded, for a
// Replacer to mask wherever they appear.
func Secrets(connStrings ...string) []string {
	var out []string
	add := func(v string) {
		for _, s := range []string{v, unescape(v), url.QueryEscape(v), url.PathEscape(v)} {
			if len(s) >= minSecret && s != Mask {
				out = append(out, s)
			}
		}
	}
	for _, s := range connStrings {
		if i := strings.Index(s, "://"); i > 0 && isScheme(s[:i]) {
			rest := s[i+3:]
			if at := strings.LastIndexByte(rest, '@'); at >= 0 {
				if _, password, ok := strings.Cut(rest[:at], ":"); ok {
					add(password)
				}
				rest = rest[at+1:]
			}
			if q := strings.IndexByte(rest, '?'); q >= 0 {
				query, _, _ := strings.Cut(rest[q+1:], "#")
				for _, pair := range strings.Split(query, "&") {
					if key, value, ok := strings.Cut(pair, "="); ok && isSecret(unescape(key)) {
						add(value)
					}
				}
			}
			continue
		}
		for _, m := range setting.FindAllStringSubmatch(s, -1) {
			if isSecret(m[1]) {
				v := m[2]
				if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
					v = strings.ReplaceAll(v[1:len(v)-1], `\'`, `'`)
				}
				add(v)
			}
		}
	}
	return out
}

func unescape(s string) string {
	if u, err := url.QueryUnescape(s); err == nil {
		return u
	}
	return s
}

// Replacer masks known secrets in any text.
type Replacer struct{ r *strings.Replacer }

// NewReplacer masks each of secrets at least three bytes long, the
// longest first, so that one secret inside another leaves nothing of it.
func NewReplacer(secrets ...string) *Replacer {
	secrets = slices.Clone(secrets)
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	var pairs []string
	for _, s := range secrets {
		if len(s) >= minSecret {
			pairs = append(pairs, s, Mask)
		}
	}
	if len(pairs) == 0 {
		return &Replacer{}
	}
	return &Replacer{strings.NewReplacer(pairs...)}
}

// String is s with every known secret masked; a nil Replacer masks
// nothing.
func (r *Replacer) String(s string) string {
	if r == nil || r.r == nil {
		return s
	}
	return r.r.Replace(s)
}

// urlIn is a URL within text.
var urlIn = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'` + "`" + `]+`)

// URLsIn is text with every URL in it masked as URL masks it.
func URLsIn(text string) string {
	return urlIn.ReplaceAllStringFunc(text, URL)
}

// Handler wraps h so that no record it handles carries one of r's
// secrets, or a URL's password: not in its message, not in any attribute,
// errors and other values included (they are written as text).
func Handler(h slog.Handler, r *Replacer) slog.Handler {
	return &handler{h: h, r: r}
}

type handler struct {
	h slog.Handler
	r *Replacer
}

func (h *handler) mask(s string) string { return h.r.String(URLsIn(s)) }

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.h.Enabled(ctx, l) }

func (h *handler) Handle(ctx context.Context, rec slog.Record) error {
	out := slog.NewRecord(rec.Time, rec.Level, h.mask(rec.Message), rec.PC)
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
		return slog.String(a.Key, h.mask(v.String()))
	case slog.KindGroup:
		g := v.Group()
		clean := make([]any, len(g))
		for i, ga := range g {
			clean[i] = h.attr(ga)
		}
		return slog.Group(a.Key, clean...)
	case slog.KindAny:
		return slog.String(a.Key, h.mask(fmt.Sprint(v.Any())))
	}
	return slog.Attr{Key: a.Key, Value: v}
}
