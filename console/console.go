package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"slices"
	"strings"
)

//go:embed templates/*.html
var templateFiles embed.FS

//go:embed static
var staticFiles embed.FS

// Prefix is where the console is served.
const Prefix = "/ui/"

// ContentSecurityPolicy is the policy of every console response: its own
// script and style only, no inline script, no frames, no form posts, and
// requests only to the server itself.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Access says what the console needs a token for.
type Access string

const (
	// AccessOpen: no token is configured; every action is open.
	AccessOpen Access = "open"
	// AccessActions: actions and parked events need the API token.
	AccessActions Access = "actions"
	// AccessReads: every read needs a token too (the read token or the
	// API token).
	AccessReads Access = "reads"
)

// Options configure the console.
type Options struct {
	// Version is sightline's, shown in the footer.
	Version string
	// Access says what needs a token.
	Access Access
	// Projections are the names of the projections, whose pages exist.
	Projections []string
}

// Console serves the console's pages and assets.
type Console struct {
	opts   Options
	pages  map[string]*template.Template
	assets map[string]asset
}

// asset is an embedded file with its content type and its ETag.
type asset struct {
	body []byte
	typ  string
	etag string
}

// page is what a page's template is given.
type page struct {
	Title, Page, Projection, Version string
	Auth                             Access
	// Reason says why a page is not found.
	Reason string
}

// New loads the embedded pages and assets.
func New(opts Options) (*Console, error) {
	c := &Console{opts: opts, pages: map[string]*template.Template{}, assets: map[string]asset{}}
	err := fs.WalkDir(staticFiles, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := staticFiles.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		c.assets[strings.TrimPrefix(p, "static/")] = asset{body: body, typ: mime.TypeByExtension(path.Ext(p)), etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("console: the assets: %w", err)
	}
	funcs := template.FuncMap{"asset": func(name string) (string, error) {
		a, ok := c.assets[name]
		if !ok {
			return "", fmt.Errorf("no asset %s", name)
		}
		// The ETag in the URL: a new binary's assets are new URLs.
		return Prefix + "static/" + name + "?v=" + strings.Trim(a.etag, `"`), nil
	}}
	for _, name := range []string{"overview", "projection", "notfound"} {
		t, err := template.New(name).Funcs(funcs).ParseFS(templateFiles, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console: the %s page: %w", name, err)
		}
		c.pages[name] = t
	}
	return c, nil
}

// ServeHTTP serves the console under Prefix: the overview at Prefix, a
// projection's page at Prefix+"projections/NAME", the assets under
// Prefix+"static/".
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "the console only reads", http.StatusMethodNotAllowed)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, Prefix)
	switch {
	case !ok:
		c.notFound(w, "There is no page at "+r.URL.Path+".")
	case rest == "":
		c.render(w, http.StatusOK, "overview", page{Title: "Projections", Page: "overview"})
	case strings.HasPrefix(rest, "projections/"):
		name := strings.TrimPrefix(rest, "projections/")
		if !slices.Contains(c.opts.Projections, name) {
			c.notFound(w, "No projection is named "+name+" here.")
			return
		}
		c.render(w, http.StatusOK, "projection", page{Title: name, Page: "projection", Projection: name})
	case strings.HasPrefix(rest, "static/"):
		c.serveAsset(w, r, strings.TrimPrefix(rest, "static/"))
	default:
		c.notFound(w, "There is no page at "+r.URL.Path+".")
	}
}

// notFound answers 404 with a page that says why.
func (c *Console) notFound(w http.ResponseWriter, why string) {
	c.render(w, http.StatusNotFound, "notfound", page{Title: "Not found", Page: "notfound", Reason: why})
}

func (c *Console) render(w http.ResponseWriter, status int, name string, p page) {
	p.Version, p.Auth = c.opts.Version, c.opts.Access
	var buf bytes.Buffer
	if err := c.pages[name].ExecuteTemplate(&buf, "layout", p); err != nil {
		http.Error(w, "the console page failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// serveAsset serves an embedded asset with its ETag, revalidated at each
// use; the pages name it with the ETag in its URL, so that a new binary's
// assets are new URLs whatever a cache kept.
func (c *Console) serveAsset(w http.ResponseWriter, r *http.Request, name string) {
	a, ok := c.assets[name]
	if !ok {
		c.notFound(w, "The console has no file "+name+".")
		return
	}
	h := w.Header()
	h.Set("ETag", a.etag)
	h.Set("Cache-Control", "no-cache")
	if r.Header.Get("If-None-Match") == a.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	h.Set("Content-Type", a.typ)
	_, _ = w.Write(a.body)
}
