package readmodel

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
)

func event(typ, data string) eventstore.RecordedEvent {
	return eventstore.RecordedEvent{StreamID: "order-1", Type: typ, EventID: "e1", Data: []byte(data)}
}

func TestDecodeOrderPlaced(t *testing.T) {
	v, err := DecodeOrderPlaced(event(TypeOrderPlaced, `{"customer_id":"c1","items":[{"sku":"A","qty":2,"price":150}],"total":300,"coupon":"new field"}`))
	require.NoError(t, err, "unknown fields are ignored")
	require.Equal(t, OrderPlaced{CustomerID: "c1", Items: []Item{{SKU: "A", Qty: 2, Price: 150}}, Total: 300}, v)
	for name, data := range map[string]string{
		"not JSON":         `{"customer_id":`,
		"trailing data":    `{"customer_id":"c1","total":1} {}`,
		"no customer":      `{"items":[],"total":1}`,
		"wrong type":       `{"customer_id":"c1","total":"3.00"}`,
		"negative total":   `{"customer_id":"c1","total":-1}`,
		"fractional cents": `{"customer_id":"c1","total":1.5}`,
		"zero quantity":    `{"customer_id":"c1","items":[{"sku":"A","qty":0,"price":1}],"total":0}`,
	} {
		_, err := DecodeOrderPlaced(event(TypeOrderPlaced, data))
		require.ErrorIs(t, err, ErrBadEvent, name)
		require.Contains(t, err.Error(), "order-1", "the error names the stream")
	}
}

func TestDecodeOrderPaid(t *testing.T) {
	v, err := DecodeOrderPaid(event(TypeOrderPaid, `{"amount":1250}`))
	require.NoError(t, err)
	require.Equal(t, int64(1250), v.Amount)
	for _, data := range []string{`{}`, `{"amount":null}`, `{"amount":-5}`, `{"amount":"12"}`, `[]`} {
		_, err := DecodeOrderPaid(event(TypeOrderPaid, data))
		require.ErrorIs(t, err, ErrBadEvent, data)
	}
}
