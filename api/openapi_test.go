package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/labstack/echo/v4"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/projections/declarative"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// TestOpenAPIDescribesEveryRouteAndAnswer loads /openapi.json with
// kin-openapi and validates it; checks that every route the server serves
// is in it; and validates real answers of every example query, in Go and
// in YAML, at its general route and its alias, against it.
func TestOpenAPIDescribesEveryRouteAndAnswer(t *testing.T) {
	t.Parallel()
	yaml, err := declarative.LoadDir("../examples/projections")
	require.NoError(t, err)
	ctx, b := setupWith(t, api.Config{Token: token}, append(readmodel.All(), yaml...))
	_, err = b.store.Append(ctx, "order-2", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c1","items":[],"total":10}`),
		storetest.Event(readmodel.TypeOrderShipped, `{"carrier":"UPS"}`))
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.pool, "orders", "order_activity")

	r := get(t, b.url+"/openapi.json")
	require.Equal(t, http.StatusOK, r.StatusCode)
	var version struct {
		OpenAPI string `json:"openapi"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &version))
	require.Equal(t, "3.1.0", version.OpenAPI)
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData([]byte(r.body))
	require.NoError(t, err)
	require.NoError(t, doc.Validate(ctx))

	// Every route echo serves is described, but the general route of
	// queries, which each query's own path describes.
	for _, rt := range b.srv.Handler().(*echo.Echo).Routes() {
		if rt.Path == "/v1/projections/:name/queries/:query" || strings.HasPrefix(rt.Method, "echo_route") {
			continue
		}
		path := strings.NewReplacer(":name", "{name}", ":id", "{id}", ":stream", "{stream}", ":file", "{file}").Replace(rt.Path)
		item := doc.Paths.Value(path)
		require.NotNil(t, item, "%s %s is not in the document", rt.Method, rt.Path)
		require.NotNil(t, item.GetOperation(rt.Method), "%s %s is not in the document", rt.Method, rt.Path)
	}
	for _, path := range []string{"/v1/projections/orders/queries/by_id", "/v1/orders/{id}", "/v1/projections/order_activity/queries/recent"} {
		require.NotNil(t, doc.Paths.Value(path), path)
	}

	doc.Servers = openapi3.Servers{{URL: b.url}}
	router, err := gorillamux.NewRouter(doc)
	require.NoError(t, err)
	auth := []string{"Authorization", "Bearer " + token}
	for _, c := range []struct {
		path    string
		status  int
		headers []string
	}{
		{"/v1/projections/orders/queries/by_id?id=1", http.StatusOK, nil},
		{"/v1/orders/2", http.StatusOK, []string{api.HeaderMinRevision, "1"}},
		{"/v1/orders/nope", http.StatusNotFound, nil},
		{"/v1/projections/orders/queries/list?limit=1", http.StatusOK, nil},
		{"/v1/orders?status=paid", http.StatusOK, nil},
		{"/v1/orders?status=lost", http.StatusBadRequest, nil},
		{"/v1/orders?limit=1", http.StatusOK, []string{"Accept", "text/csv"}},
		{"/v1/customers/c1/stats", http.StatusOK, nil},
		{"/v1/projections/customer_stats/queries/by_customer?id=c1", http.StatusOK, nil},
		{"/v1/sales/daily?from=2000-01-01", http.StatusOK, nil},
		{"/v1/projections/daily_sales/queries/days", http.StatusOK, nil},
		{"/v1/projections/order_activity/queries/by_order?id=2", http.StatusOK, nil},
		{"/v1/projections/order_activity/queries/by_order?id=2&min_revision=1", http.StatusOK, nil},
		{"/v1/projections/order_activity/queries/recent?carrier=UPS", http.StatusOK, nil},
		{"/v1/projections/order_activity/queries/recent?limit=1", http.StatusOK, nil},
		{"/v1/projections/orders/queries/by_id?id=1&min_position=999999", http.StatusServiceUnavailable, []string{api.HeaderWaitMs, "10"}},
		{"/v1/projections/orders/queries", http.StatusOK, nil},
		{"/v1/projections", http.StatusOK, nil},
		{"/v1/projections/orders", http.StatusOK, nil},
		{"/v1/projections/orders/parked", http.StatusOK, auth},
		{"/v1/projections/orders/history", http.StatusOK, nil},
		{"/ui/", http.StatusOK, nil},
		{"/ui/projections/orders", http.StatusOK, nil},
		{"/ui/projections/nope", http.StatusNotFound, nil},
		{"/healthz", http.StatusOK, nil},
		{"/readyz", http.StatusOK, nil},
	} {
		validateExchange(ctx, t, router, b.url+c.path, c.status, c.headers...)
	}
}

// The console's pages are HTML: as text, for the answers' validation.
func init() {
	openapi3filter.RegisterBodyDecoder("text/html", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		return string(b), err
	})
}

// validateExchange sends a GET and validates the request and its answer
// against the document.
func validateExchange(ctx context.Context, t *testing.T, router routers.Router, url string, status int, headers ...string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	route, params, err := router.FindRoute(req)
	require.NoError(t, err, url)
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
	if status < 400 {
		require.NoError(t, openapi3filter.ValidateRequest(ctx, in), url)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, "%s: %s", url, body)
	out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Options: &openapi3filter.Options{IncludeResponseStatus: true}}
	out.SetBodyBytes(body)
	require.NoError(t, openapi3filter.ValidateResponse(ctx, out), "%s: %s", url, bytes.TrimSpace(body))
}
