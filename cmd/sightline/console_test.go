package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/console"
	"github.com/sightlinehq/sightline/internal/simulate"
)

// browser is a headless Chromium, with what its pages reported as errors:
// exceptions thrown, console.error calls, and browser log entries of level
// error (a Content-Security-Policy refusal is one) other than the
// network's, which report the HTTP errors a test asks for on purpose.
type browser struct {
	ctx    context.Context
	mu     sync.Mutex
	errors []string
}

// newBrowser starts Debian's Chromium. Without it the test fails, naming
// the package to install: the console is tested in a real browser or not
// at all.
func newBrowser(t *testing.T) *browser {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: apt-get install -y chromium (the console's browser tests need it)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1400, 1000),
		// The machine's network is closed: nothing but the page's server.
		chromedp.Flag("disable-quic", true), chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	require.NoError(t, chromedp.Do(ctx), "start chromium")
	b := &browser{ctx: ctx}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if (m.Type == chromedp.ConsoleError || m.IsException()) && m.Source != "network" {
				b.mu.Lock()
				b.errors = append(b.errors, fmt.Sprintf("%s (%s %s)", m, m.Source, m.URL))
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// run runs steps, bounded.
func (b *browser) run(t *testing.T, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 45*time.Second)
	defer cancel()
	require.NoError(t, chromedp.Do(ctx, steps...))
}

// until waits until the page's expression js is true.
func (b *browser) until(t *testing.T, what, js string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 45*time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(40*time.Second)))
	require.NoError(t, err, "waiting for %s (%s)", what, js)
}

// eval returns the value of the page's expression js.
func eval[T any](t *testing.T, b *browser, js string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 45*time.Second)
	defer cancel()
	out, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	require.NoError(t, err, js)
	return out
}

// do runs the page's statement js.
func do(js string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[any](js)(ctx, t)
		return err
	})
}

// eval2 runs an action that returns a value.
func eval2[T any](t *testing.T, b *browser, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 45*time.Second)
	defer cancel()
	out, err := chromedp.Run(ctx, a)
	require.NoError(t, err)
	return out
}

func (b *browser) noErrors(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	require.Empty(t, b.errors, "the pages reported errors")
}

// TestBrowserReportsPolicyViolations: the browser's error check catches a
// script the console's policy refuses, so that its silence elsewhere
// means something.
func TestBrowserReportsPolicyViolations(t *testing.T) {
	t.Parallel()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Security-Policy", console.ContentSecurityPolicy)
		fmt.Fprint(w, `<!doctype html><title>x</title><script>document.title = "ran"</script>`)
	}))
	defer hs.Close()
	b := newBrowser(t)
	b.run(t, chromedp.Navigate(hs.URL))
	require.Equal(t, "x", eval[string](t, b, `document.title`), "the inline script was refused")
	require.Eventually(t, func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.errors) > 0 && strings.Contains(strings.Join(b.errors, "\n"), "Content Security Policy")
	}, 10*time.Second, 50*time.Millisecond, "the refusal was reported")
}

// slowProjection is a YAML projection whose handler sleeps 30 ms an
// event, so that a rebuild of a few hundred events lasts long enough to
// be watched.
const slowProjection = `name: slow_orders
version: 1
streams: [order-]
tables:
  slow_orders: CREATE TABLE slow_orders (order_id text PRIMARY KEY, events bigint NOT NULL)
handlers:
  OrderPlaced: |
    INSERT INTO slow_orders (order_id, events) SELECT substr(:stream_id, 7), 1 FROM pg_sleep(0.03)
`

// splitProjection is a YAML projection in two segments.
const splitProjection = `name: split_orders
version: 1
streams: [order-]
segments: 2
tables:
  split_orders: CREATE TABLE split_orders (order_id text PRIMARY KEY)
handlers:
  OrderPlaced: INSERT INTO split_orders (order_id) VALUES (substr(:stream_id, 7))
`

// TestConsoleInABrowser drives the console in headless Chromium against a
// running binary with an API token: the overview shows every projection
// and follows appends without a reload; a poison event shows on its
// projection's page, where Skip releases it; an action without the token
// fails visibly; a rebuild shows its progress and takes over.
func TestConsoleInABrowser(t *testing.T) {
	t.Parallel()
	ctx, db, store := newDatabase(t, 4*time.Minute)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "slow_orders.yaml"), []byte(slowProjection), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "split_orders.yaml"), []byte(splitProjection), 0o600))
	config := filepath.Join(t.TempDir(), "sightline.yaml")
	require.NoError(t, os.WriteFile(config, []byte("rebuild_batch_size: 20\n"), 0o600))
	_, err := simulate.Run(ctx, store, simulate.Config{Orders: 150, Customers: 20, Writers: 2, Seed: 5})
	require.NoError(t, err)
	const token = "console-test-token"
	p := startEnv(t, []string{"SIGHTLINE_API_TOKEN=" + token}, "run", "--examples", "--projections", dir, "--config", config,
		"--database-url", db.URL, "--http-addr", "127.0.0.1:0")
	base := "http://" + addrOf(t, p)
	b := newBrowser(t)
	names := []string{"customer_stats", "daily_sales", "orders", "slow_orders", "split_orders"}

	call := func(method, path, body string, headers ...string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Set(headers[i], headers[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(raw)
	}
	appendEvents := func(stream, events string) {
		t.Helper()
		code, body := call(http.MethodPost, "/v1/streams/"+stream, events, "Authorization", "Bearer "+token)
		require.Equal(t, http.StatusCreated, code, body)
	}
	cell := func(name, class string) string {
		return fmt.Sprintf(`(document.querySelector('tr[data-projection=%q] td.%s') || {}).textContent`, name, class)
	}

	t.Run("the overview shows every projection", func(t *testing.T) {
		b.run(t, chromedp.Navigate(base+"/"))
		b.until(t, "a row per projection", `document.querySelectorAll('#projections tbody tr[data-projection]').length === 5`)
		rows := eval[[]string](t, b, `[...document.querySelectorAll('#projections tbody tr[data-projection]')].map(r => r.dataset.projection)`)
		require.Equal(t, names, rows, "in name order")
		b.until(t, "every projection live", `[...document.querySelectorAll('#projections td.status .badge')].every(b => b.textContent === 'live')`)
		require.Equal(t, "live", eval[string](t, b, `document.querySelector('#connection').textContent`), "the status stream is open")
		segments := eval[[]string](t, b, `[...document.querySelectorAll('tr[data-projection=split_orders] ~ tr.segment')].map(r => r.cells[0].textContent + ' ' + r.cells[8].textContent)`)
		require.Len(t, segments, 2, "a row per segment, under its projection")
		require.Contains(t, segments[0], "segment 0 ")
		require.Contains(t, segments[1], "(this process)", "with its owner")
		require.True(t, strings.HasSuffix(eval[string](t, b, `location.pathname`), "/ui/"), "/ redirects to the console")
		b.noErrors(t)
	})

	t.Run("the lag changes on screen without a reload", func(t *testing.T) {
		b.run(t, do(`window.notReloaded = true`))
		// Hold the orders projection's next batch on its checkpoint row.
		tx, err := db.Pool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		_, err = tx.Exec(ctx, `SELECT 1 FROM sightline.checkpoints WHERE projection = 'orders' FOR UPDATE`)
		require.NoError(t, err)
		before := eval[string](t, b, cell("orders", "position"))
		appendEvents("order-browser-1", `{"type":"OrderPlaced","data":{"customer_id":"c1","items":[],"total":100}}`)
		b.until(t, "a lag shown for orders", cell("orders", "lag")+` !== '0'`)
		require.Equal(t, before, eval[string](t, b, cell("orders", "position")), "held: not applied")
		require.NoError(t, tx.Rollback(ctx))
		b.until(t, "orders caught up again", cell("orders", "lag")+` === '0' && `+cell("orders", "position")+` !== `+fmt.Sprintf("%q", before))
		require.True(t, eval[bool](t, b, `window.notReloaded === true`), "the page was not reloaded")
		b.noErrors(t)
	})

	t.Run("a poison event shows and Skip releases it", func(t *testing.T) {
		appendEvents("order-poison", `{"events":[{"type":"OrderPlaced","data":{"customer_id":"c1","items":[],"total":100}},`+
			`{"type":"OrderPaid","data":{"amount":{"cents":100}}}]}`)
		b.run(t, chromedp.Navigate(base+"/ui/projections/orders"))
		b.until(t, "the parked count", `document.querySelector('#parked-total').textContent === '1'`)
		b.until(t, "the sparklines drawn", `document.querySelector('#lag-chart polyline') && document.querySelector('#rate-chart polyline')`)
		b.until(t, "parked events locked without the token", `!document.querySelector('#parked-locked').hidden`)
		b.run(t,
			chromedp.Click(chromedp.CSS(`#parked-unlock`)),
			chromedp.WaitVisible(chromedp.CSS(`#token-dialog`)),
			chromedp.SendKeys(chromedp.CSS(`#token-input`), token),
			chromedp.Click(chromedp.CSS(`#token-save`)),
		)
		b.until(t, "the parked event listed", `document.querySelectorAll('#parked tbody tr[data-parked]').length === 1`)
		row := eval[map[string]string](t, b, `(() => { const c = document.querySelectorAll('#parked tbody tr td');
			return {state: c[1].textContent, stream: c[2].textContent, revision: c[3].textContent, type: c[4].textContent, error: c[6].textContent, data: c[7].textContent}; })()`)
		require.Equal(t, "parked", row["state"])
		require.Equal(t, "order-poison", row["stream"])
		require.Equal(t, "1", row["revision"])
		require.Equal(t, "OrderPaid", row["type"])
		require.Contains(t, row["error"], "amount")
		require.Contains(t, row["data"], `"cents": 100`)
		require.Equal(t, token, eval[string](t, b, `sessionStorage.getItem('sightline.token')`), "kept in the tab")
		require.Empty(t, eval[string](t, b, `document.cookie`), "no cookie")

		b.run(t, chromedp.Click(chromedp.CSS(`#parked tbody button[data-action=skip]`)))
		b.until(t, "the stream released", `document.querySelector('#parked-total').textContent === '0' && !document.querySelector('#parked-none').hidden`)
		b.until(t, "the skip confirmed", `[...document.querySelectorAll('#messages .message-ok')].some(m => m.textContent.includes('skipped'))`)
		code, body := call(http.MethodGet, "/v1/projections/orders", "")
		require.Equal(t, http.StatusOK, code)
		var st struct {
			Parked int `json:"parked"`
		}
		require.NoError(t, json.Unmarshal([]byte(body), &st))
		require.Zero(t, st.Parked, "released on the server: %s", body)
		b.noErrors(t)
	})

	t.Run("a declared query tried, and the last verify", func(t *testing.T) {
		_, stderr, code := runCLI(t, "verify", "orders", "--database-url", db.URL, "--examples", "--projections", dir)
		require.Contains(t, []int{0, exitFailure}, code, stderr)
		b.run(t, chromedp.Navigate(base+"/ui/projections/orders"))
		b.until(t, "the last verify", `document.querySelector('#verify').textContent.includes('at position')`)
		b.until(t, "the queries", `document.querySelector('.query[data-query=by_id] form') !== null`)
		b.run(t,
			chromedp.SendKeys(chromedp.CSS(`.query[data-query=by_id] input[name=id]`), "browser-1"),
			chromedp.Click(chromedp.CSS(`.query[data-query=by_id] button[type=submit]`)),
		)
		b.until(t, "the answer", `(document.querySelector('.query[data-query=by_id] .result pre') || {}).textContent?.includes('"id": "browser-1"')`)
		headers := eval[[]string](t, b, `[...document.querySelectorAll('.query[data-query=by_id] .result [data-header]')].map(h => h.dataset.header)`)
		require.Subset(t, headers, []string{"Projection-Position", "Projection-Head", "Projection-Lag-Ms", "Projection-Status"})
		require.Contains(t, eval[string](t, b, `document.querySelector('.query[data-query=by_id] .result').textContent`), "200 OK")
		b.noErrors(t)
	})

	t.Run("an action without the token fails visibly", func(t *testing.T) {
		b.run(t, do(`sessionStorage.clear()`), chromedp.Navigate(base+"/ui/projections/orders"))
		b.until(t, "the page live", `document.querySelector('#connection').textContent === 'live'`)
		b.run(t, chromedp.Click(chromedp.CSS(`#rebuild-button`)))
		b.until(t, "the refusal shown", `[...document.querySelectorAll('#messages .message-error')].some(m =>
			m.textContent.includes('Rebuild orders failed: 401') && m.offsetParent !== null)`)
		require.True(t, eval[bool](t, b, `document.querySelector('#token-dialog').open`), "the token is asked for")
		b.run(t, chromedp.Click(chromedp.CSS(`#token-cancel`)))
		code, body := call(http.MethodGet, "/v1/projections/orders", "")
		require.Equal(t, http.StatusOK, code)
		require.Contains(t, body, `"rebuild":null`, "no rebuild started")
		b.noErrors(t)
	})

	t.Run("a rebuild shows its progress and takes over", func(t *testing.T) {
		b.run(t, chromedp.Navigate(base+"/ui/projections/slow_orders"))
		b.until(t, "the page live", `document.querySelector('#status').textContent === 'live'`)
		// Record each progress the page shows, as it shows it.
		b.run(t, do(`window.progressSeen = [];
			new MutationObserver(() => { if (!document.querySelector('#rebuild-running').hidden) window.progressSeen.push(document.querySelector('#rebuild-progress').value); })
				.observe(document.querySelector('#rebuild-section'), {subtree: true, attributes: true, childList: true, characterData: true});`))
		b.run(t,
			chromedp.Click(chromedp.CSS(`#rebuild-button`)),
			chromedp.WaitVisible(chromedp.CSS(`#token-dialog`)),
			chromedp.SendKeys(chromedp.CSS(`#token-input`), token),
			chromedp.Click(chromedp.CSS(`#token-save`)),
		)
		b.until(t, "the rebuild under way", `!document.querySelector('#rebuild-running').hidden`)
		b.until(t, "the refusal gone once the token was given", `![...document.querySelectorAll('#messages .message-error')].some(m => m.textContent.includes('Rebuild slow_orders failed'))`)
		text := eval[string](t, b, `document.querySelector('#rebuild-text').textContent`)
		require.Regexp(t, `%|waiting`, text)
		if path := os.Getenv("SIGHTLINE_CONSOLE_SCREENSHOT"); path != "" {
			b.until(t, "some progress", `document.querySelector('#rebuild-progress').value > 0.2`)
			png := eval2(t, b, chromedp.FullScreenshot(100))
			require.NoError(t, os.WriteFile(strings.TrimSuffix(path, ".png")+"-rebuild.png", png, 0o600))
		}
		b.until(t, "the take-over", `[...document.querySelectorAll('#messages .message-ok')].some(m => m.textContent.includes('took over'))`)
		require.True(t, eval[bool](t, b, `document.querySelector('#rebuild-running').hidden`))
		seen := eval[[]float64](t, b, `window.progressSeen`)
		between := 0
		for _, v := range seen {
			if v > 0 && v < 1 {
				between++
			}
		}
		require.GreaterOrEqual(t, between, 2, "progress shown on its way: %v (%s)", seen, p.stderr)
		code, body := call(http.MethodGet, "/v1/projections/slow_orders", "")
		require.Equal(t, http.StatusOK, code)
		require.Contains(t, body, `"rebuild":null`)
		b.noErrors(t)
	})

	if path := os.Getenv("SIGHTLINE_CONSOLE_SCREENSHOT"); path != "" {
		appendEvents("order-poison-2", `{"events":[{"type":"OrderPlaced","data":{"customer_id":"c1","items":[],"total":100}},`+
			`{"type":"OrderPaid","data":{"amount":"lots"}}]}`)
		b.run(t, chromedp.Navigate(base+"/ui/"))
		time.Sleep(2 * time.Second)
		png := eval2(t, b, chromedp.FullScreenshot(100))
		require.NoError(t, os.WriteFile(path, png, 0o600))
	}
}
