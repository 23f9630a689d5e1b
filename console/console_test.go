package console_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/console"
)

func serve(t *testing.T, c *console.Console, method, path string, headers ...string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	w := httptest.NewRecorder()
	c.ServeHTTP(w, req)
	body, err := io.ReadAll(w.Result().Body)
	require.NoError(t, err)
	return w.Result(), string(body)
}

// Markup the policy would refuse, or that would run script from a page.
var (
	inlineScript  = regexp.MustCompile(`<script(?:\s[^>]*)?>\s*[^<\s]`)
	scriptWithout = regexp.MustCompile(`<script(?:(?:\s[^>]*)?)>`)
	handlerAttr   = regexp.MustCompile(`\son[a-z]+\s*=`)
	styleAttr     = regexp.MustCompile(`\sstyle\s*=`)
)

// TestPages: each page renders with the policy, runs only the console's
// own script, and says what needs a token.
func TestPages(t *testing.T) {
	c, err := console.New(console.Options{Version: "v1.2.3", Access: console.AccessActions, Projections: []string{"orders"}})
	require.NoError(t, err)
	for _, path := range []string{"/ui/", "/ui/projections/orders"} {
		resp, body := serve(t, c, http.MethodGet, path)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Equal(t, console.ContentSecurityPolicy, resp.Header.Get("Content-Security-Policy"))
		require.Contains(t, console.ContentSecurityPolicy, "script-src 'self';")
		require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
		require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
		require.Contains(t, body, `data-auth="actions"`)
		require.Contains(t, body, "v1.2.3")
		require.NotRegexp(t, inlineScript, body, "no inline script")
		require.NotRegexp(t, handlerAttr, body, "no inline event handlers")
		require.NotRegexp(t, styleAttr, body, "no inline styles")
		for _, tag := range scriptWithout.FindAllString(body, -1) {
			require.Regexp(t, `src="/ui/static/console\.js\?v=[0-9a-f]+"`, tag)
		}
	}
	resp, body := serve(t, c, http.MethodGet, "/ui/projections/orders")
	require.Contains(t, body, `data-projection="orders"`)

	resp, body = serve(t, c, http.MethodGet, "/ui/projections/nope")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"), "a page that says so")
	require.Contains(t, body, "No projection is named nope here.")
	require.Equal(t, console.ContentSecurityPolicy, resp.Header.Get("Content-Security-Policy"))
	resp, _ = serve(t, c, http.MethodGet, "/ui/elsewhere")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, _ = serve(t, c, http.MethodPost, "/ui/")
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}

// TestAssets: the assets are served with their type and an ETag, and
// not again to a client that has them.
func TestAssets(t *testing.T) {
	c, err := console.New(console.Options{Access: console.AccessOpen})
	require.NoError(t, err)
	resp, body := serve(t, c, http.MethodGet, "/ui/static/console.js")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/javascript; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, body, "Last-Event-ID")
	etag := resp.Header.Get("ETag")
	require.NotEmpty(t, etag)
	resp, _ = serve(t, c, http.MethodGet, "/ui/static/console.js", "If-None-Match", etag)
	require.Equal(t, http.StatusNotModified, resp.StatusCode)
	resp, _ = serve(t, c, http.MethodGet, "/ui/static/console.css")
	require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css"))
	resp, _ = serve(t, c, http.MethodGet, "/ui/static/nope.js")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)

	_, page := serve(t, c, http.MethodGet, "/ui/")
	require.Contains(t, page, `data-auth="open"`)
	require.Regexp(t, `id="token-button"[^>]* hidden`, page, "nothing to give a token for")

	reads, err := console.New(console.Options{Access: console.AccessReads})
	require.NoError(t, err)
	_, page = serve(t, reads, http.MethodGet, "/ui/")
	require.Contains(t, page, `data-auth="reads"`)
	require.Contains(t, page, "needs a token for every read")
	require.Contains(t, page, "console.js?v="+strings.Trim(etag, `"`))
}
