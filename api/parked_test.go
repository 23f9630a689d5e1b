package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/api"
	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/readmodel"
	"github.com/sightlinehq/sightline/readmodel/readmodeltest"
)

// TestParkedRoutes walks a malformed payment through the dead-letter
// routes: listed with its error and data, retried (and failing again: 422),
// skipped (releasing the shipment held behind it), and both operations
// idempotent; the writing routes need the token.
func TestParkedRoutes(t *testing.T) {
	t.Parallel()
	ctx, b := setup(t, api.Config{Token: token})
	res, err := b.store.Append(ctx, "order-p", eventstore.NoStream,
		storetest.Event(readmodel.TypeOrderPlaced, `{"customer_id":"c9","items":[],"total":900}`),
		storetest.Event(readmodel.TypeOrderPaid, `{"amount":"nine"}`),
		storetest.Event(readmodel.TypeOrderShipped, `{"carrier":"UPS"}`))
	require.NoError(t, err)
	readmodeltest.WaitCaughtUp(t, ctx, b.pool, readmodeltest.Names()...)
	auth := []string{"Authorization", "Bearer " + token}
	base := b.url + "/v1/projections/orders/parked"

	require.Eventually(t, func() bool {
		var st api.ProjectionStatus
		r := get(t, b.url+"/v1/projections/orders")
		return json.Unmarshal([]byte(r.body), &st) == nil && st.Parked == 2 && st.Status == "live"
	}, 10*time.Second, 20*time.Millisecond, "the status counts the parked event and the one held behind it")

	var list struct {
		Parked    []api.ParkedEvent `json:"parked"`
		NextAfter *int64            `json:"next_after"`
	}
	require.Equal(t, http.StatusUnauthorized, get(t, base).StatusCode, "dead letters carry whole events: the token is needed")
	r := get(t, base, auth...)
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.NoError(t, json.Unmarshal([]byte(r.body), &list))
	require.Len(t, list.Parked, 2)
	head, held := list.Parked[0], list.Parked[1]
	require.Equal(t, "parked", head.State)
	require.Equal(t, "order-p", head.StreamID)
	require.Equal(t, uint64(1), head.Revision)
	require.Contains(t, head.Error, "amount")
	require.JSONEq(t, `{"amount":"nine"}`, string(head.Data))
	require.Equal(t, "held", held.State)
	require.Nil(t, list.NextAfter)

	// Reads of the held order say so; reading one's own write that is held
	// is refused, not answered without it.
	r = get(t, b.url+"/v1/orders/p")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Equal(t, fmt.Sprint(head.ID), r.Header.Get(api.HeaderStreamParked))
	r = get(t, b.url+"/v1/orders/p", api.HeaderMinPosition, res.Position.String())
	require.Equal(t, http.StatusConflict, r.StatusCode, r.body)
	require.Contains(t, r.body, fmt.Sprintf("held from revision 1 by parked event %d", head.ID))
	r = get(t, b.url+"/v1/orders/p", api.HeaderMinPosition, "1")
	require.Equal(t, http.StatusOK, r.StatusCode, "a position before the held events is in the read model: %s", r.body)
	require.Equal(t, fmt.Sprint(head.ID), r.Header.Get(api.HeaderStreamParked))
	require.Empty(t, get(t, b.url+"/v1/orders/1").Header.Get(api.HeaderStreamParked), "other orders are not held")
	// By revision: the held one, and the last, wait behind the parked
	// event; the one before it is in the read model.
	for _, rev := range []string{"1", "2"} {
		r = get(t, b.url+"/v1/orders/p", api.HeaderMinRevision, rev)
		require.Equal(t, http.StatusConflict, r.StatusCode, "revision %s: %s", rev, r.body)
		require.Equal(t, fmt.Sprint(head.ID), r.Header.Get(api.HeaderStreamParked))
	}
	r = get(t, b.url+"/v1/orders/p?min_revision=0")
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Equal(t, fmt.Sprint(head.ID), r.Header.Get(api.HeaderStreamParked))

	r = get(t, base+"?limit=1", auth...)
	require.NoError(t, json.Unmarshal([]byte(r.body), &list))
	require.Len(t, list.Parked, 1)
	require.NotNil(t, list.NextAfter)
	r = get(t, fmt.Sprintf("%s?limit=1&after=%d", base, *list.NextAfter), auth...)
	require.NoError(t, json.Unmarshal([]byte(r.body), &list))
	require.Equal(t, held.ID, list.Parked[0].ID, "the next page")

	one := get(t, fmt.Sprintf("%s/%d", base, head.ID), auth...)
	require.Equal(t, http.StatusOK, one.StatusCode, one.body)
	for path, status := range map[string]int{
		"/v1/projections/nope/parked":                                 http.StatusNotFound,
		fmt.Sprintf("/v1/projections/daily_sales/parked/%d", held.ID): http.StatusNotFound, // another projection's
		"/v1/projections/orders/parked/abc":                           http.StatusBadRequest,
		"/v1/projections/orders/parked/999999":                        http.StatusNotFound,
		"/v1/projections/orders/parked?limit=0":                       http.StatusBadRequest,
		"/v1/projections/orders/parked?after=x":                       http.StatusBadRequest,
		"/v1/projections/orders/parked?all=maybe":                     http.StatusBadRequest,
	} {
		r := get(t, b.url+path, auth...)
		require.Equal(t, status, r.StatusCode, "%s: %s", path, r.body)
		require.Equal(t, "application/problem+json", r.Header.Get("Content-Type"), path)
	}

	retry := fmt.Sprintf("%s/%d/retry", base, head.ID)
	skip := fmt.Sprintf("%s/%d/skip", base, head.ID)
	require.Equal(t, http.StatusUnauthorized, do(t, http.MethodPost, retry, "").StatusCode)
	require.Equal(t, http.StatusUnauthorized, do(t, http.MethodPost, skip, "", "Authorization", "Bearer wrong").StatusCode)
	r = do(t, http.MethodPost, fmt.Sprintf("%s/%d/retry", base, held.ID), "", auth...)
	require.Equal(t, http.StatusConflict, r.StatusCode, r.body)
	require.Contains(t, r.body, fmt.Sprintf("parked event %d", head.ID), "points at the event to retry")

	r = do(t, http.MethodPost, retry, "", auth...)
	require.Equal(t, http.StatusUnprocessableEntity, r.StatusCode, r.body)
	var failed struct {
		Detail string          `json:"detail"`
		Event  api.ParkedEvent `json:"event"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &failed))
	require.Equal(t, 2, failed.Event.Attempts)
	require.Contains(t, failed.Detail, "failed again")

	var rel api.ReleaseJSON
	r = do(t, http.MethodPost, skip, "", auth...)
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.NoError(t, json.Unmarshal([]byte(r.body), &rel))
	require.True(t, rel.Skipped)
	require.Equal(t, 1, rel.Applied, "the shipment held behind it")
	require.Nil(t, rel.Parked)
	require.Equal(t, "skipped", rel.Event.State)
	require.NotNil(t, rel.Event.ResolvedAt)

	r = do(t, http.MethodPost, skip, "", auth...)
	require.Equal(t, http.StatusOK, r.StatusCode, "skipping twice is fine: %s", r.body)
	require.NoError(t, json.Unmarshal([]byte(r.body), &rel))
	require.False(t, rel.Skipped)
	require.Equal(t, http.StatusConflict, do(t, http.MethodPost, retry, "", auth...).StatusCode, "a skipped event is not retried")

	var order order
	r = get(t, b.url+"/v1/orders/p", api.HeaderMinPosition, res.Position.String())
	require.Equal(t, http.StatusOK, r.StatusCode, r.body)
	require.Empty(t, r.Header.Get(api.HeaderStreamParked), "released")
	require.NoError(t, json.Unmarshal([]byte(r.body), &order))
	require.Equal(t, "shipped", order.Status)
	require.Zero(t, order.Paid)

	r = get(t, base, auth...)
	require.NoError(t, json.Unmarshal([]byte(r.body), &list))
	require.Empty(t, list.Parked)
	r = get(t, base+"?all=true", auth...)
	require.NoError(t, json.Unmarshal([]byte(r.body), &list))
	require.Len(t, list.Parked, 2, "resolved events stay listed with all=true")
	require.Equal(t, []string{"skipped", "applied"}, []string{list.Parked[0].State, list.Parked[1].State})
	require.Eventually(t, func() bool { return parkedCount(t, b.url) == 0 }, 10*time.Second, 20*time.Millisecond)
}

func parkedCount(t *testing.T, url string) int {
	var st api.ProjectionStatus
	require.NoError(t, json.Unmarshal([]byte(get(t, url+"/v1/projections/orders").body), &st))
	return st.Parked
}
