package api_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/internal/redact"
	"github.com/sightlinehq/sightline/projections"
	"github.com/sightlinehq/sightline/readmodel"
)

// TestLastVerify: GET /v1/projections/{name}/verify is a 404 problem until
// a verify is recorded, then the newest verify, drift, failure and all, as
// the OpenAPI document describes it.
func TestLastVerify(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{Token: token, ReadToken: "r3ad-token"})
	url := b.url + "/v1/projections/orders/verify"
	auth := []string{"Authorization", "Bearer r3ad-token"}

	r := get(t, url)
	require.Equal(t, http.StatusUnauthorized, r.StatusCode, "a read route")
	r = get(t, b.url+"/v1/projections/nope/verify", auth...)
	require.Equal(t, http.StatusNotFound, r.StatusCode)
	require.Contains(t, r.body, "Projection not found")
	r = get(t, url, auth...)
	require.Equal(t, http.StatusNotFound, r.StatusCode)
	require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"))
	var p struct{ Title, Detail string }
	require.NoError(t, json.Unmarshal([]byte(r.body), &p))
	require.Equal(t, "No verify yet", p.Title)
	require.Contains(t, p.Detail, "sightline verify orders")

	_, err := b.pool.Exec(ctx, `UPDATE readmodel.orders SET paid = paid + 1 WHERE id = '1'`)
	require.NoError(t, err)
	report, err := projections.Verify(ctx, b.pool, b.store, readmodel.Orders{}, 5, projections.Config{})
	require.NoError(t, err)
	require.EqualValues(t, 1, report.Drifted)
	r = get(t, url, auth...)
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	var v struct {
		Projection string           `json:"projection"`
		Version    int              `json:"version"`
		Generation int              `json:"generation"`
		Position   *string          `json:"position"`
		StartedAt  time.Time        `json:"started_at"`
		FinishedAt time.Time        `json:"finished_at"`
		DurationMs *int64           `json:"duration_ms"`
		Rows       map[string]int64 `json:"rows"`
		Drifted    int64            `json:"drifted"`
		Drift      []map[string]any `json:"drift"`
		Error      *string          `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &v))
	require.Equal(t, "orders", v.Projection)
	require.Equal(t, 1, v.Version)
	require.Equal(t, 1, v.Generation)
	require.NotNil(t, v.Position)
	require.Equal(t, report.Position.String(), *v.Position)
	require.False(t, v.FinishedAt.Before(v.StartedAt))
	require.NotNil(t, v.DurationMs)
	require.Equal(t, v.FinishedAt.Sub(v.StartedAt).Milliseconds(), *v.DurationMs)
	require.Equal(t, map[string]int64{"orders": 1}, v.Rows)
	require.EqualValues(t, 1, v.Drifted)
	require.Len(t, v.Drift, 1)
	require.Equal(t, map[string]any{"table": "orders", "kind": "differs", "key": map[string]any{"id": "1"},
		"live": v.Drift[0]["live"], "replay": v.Drift[0]["replay"], "columns": []any{"paid"}}, v.Drift[0])
	require.EqualValues(t, 251, v.Drift[0]["live"].(map[string]any)["paid"])
	require.EqualValues(t, 250, v.Drift[0]["replay"].(map[string]any)["paid"])
	require.Nil(t, v.Error)

	// A row missing from the read model: live is null.
	_, err = b.pool.Exec(ctx, `DELETE FROM readmodel.orders WHERE id = '1'`)
	require.NoError(t, err)
	_, err = projections.Verify(ctx, b.pool, b.store, readmodel.Orders{}, 5, projections.Config{})
	require.NoError(t, err)
	r = get(t, url, auth...)
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Contains(t, r.body, `"live":null`)
	require.Contains(t, r.body, `"kind":"missing"`)

	// The document describes the answer, a row missing included, and the 404.
	doc := openAPI(t, b)
	validateExchange(ctx, t, doc, url, http.StatusOK, auth...)
	validateExchange(ctx, t, doc, b.url+"/v1/projections/customer_stats/verify", http.StatusNotFound, auth...)

	// A verify that fails is the last one: its error, no position, nothing
	// compared.
	_, err = projections.Verify(ctx, b.pool, b.store, ordersV2{}, 5, projections.Config{})
	require.ErrorIs(t, err, projections.ErrVersionChanged)
	r = get(t, url, auth...)
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	v.Error, v.Position, v.Drift, v.Rows = nil, nil, nil, nil
	require.NoError(t, json.Unmarshal([]byte(r.body), &v))
	require.NotNil(t, v.Error)
	require.Equal(t, err.Error(), *v.Error)
	require.Nil(t, v.Position)
	require.Zero(t, v.Drifted)
	require.NotNil(t, v.Drift)
	require.Empty(t, v.Drift)
	require.NotNil(t, v.Rows)
	require.Empty(t, v.Rows)
	validateExchange(ctx, t, doc, url, http.StatusOK, auth...)

	// URLs in the error are shown without their secrets.
	_, err = b.pool.Exec(ctx, `INSERT INTO sightline.verifications (projection, version, generation, started_at, finished_at, error)
		VALUES ('orders', 1, 1, now(), now(), 'connect postgres://app:hunter22@db:5432/x failed')`)
	require.NoError(t, err)
	r = get(t, url, auth...)
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.NotContains(t, r.body, "hunter22")
	require.Contains(t, r.body, "postgres://app:"+redact.Mask+"@db:5432/x")
}

// openAPI loads the server's document, for validateExchange against it.
func openAPI(t *testing.T, b *bundle) routers.Router {
	t.Helper()
	r := get(t, b.url+"/openapi.json")
	require.Equal(t, http.StatusOK, r.StatusCode)
	doc, err := openapi3.NewLoader().LoadFromData([]byte(r.body))
	require.NoError(t, err)
	doc.Servers = openapi3.Servers{{URL: b.url}}
	router, err := gorillamux.NewRouter(doc)
	require.NoError(t, err)
	return router
}
