package readmodel

import (
	"errors"
	"strings"
	"testing"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
)

// FuzzDecode feeds arbitrary bytes to the example projections' event
// decoding, as a store could deliver them. Decoding must never panic; it
// either returns an event that passes the checks the projections rely on,
// or an ErrBadEvent marked Permanent that names the stream, so that the
// projector parks the event at once instead of retrying it or crashing.
// The seed corpus is in testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	f.Add(TypeOrderPlaced, []byte(`{"customer_id":"c1","items":[{"sku":"A","qty":2,"price":150}],"total":300}`))
	f.Add(TypeOrderPaid, []byte(`{"amount":1250}`))
	f.Add(TypeOrderCancelled, []byte(`{"reason":"changed mind"}`))
	f.Fuzz(func(t *testing.T, typ string, data []byte) {
		e := eventstore.RecordedEvent{StreamID: "order-fuzz", Revision: 7, EventID: "e", Type: typ, Data: data}
		check := func(err error) {
			t.Helper()
			if err == nil {
				return
			}
			if !errors.Is(err, ErrBadEvent) || !projections.IsPermanent(err) {
				t.Fatalf("%s %q: error %v is not a permanent ErrBadEvent", typ, data, err)
			}
			if msg := err.Error(); !strings.Contains(msg, "order-fuzz") {
				t.Fatalf("%s %q: error %q does not name the stream", typ, data, msg)
			}
		}
		placed, err := DecodeOrderPlaced(e)
		check(err)
		if err == nil {
			if placed.CustomerID == "" || placed.Total < 0 {
				t.Fatalf("%q: accepted %+v", data, placed)
			}
			for _, it := range placed.Items {
				if it.Qty <= 0 || it.Price < 0 {
					t.Fatalf("%q: accepted item %+v", data, it)
				}
			}
		}
		paid, err := DecodeOrderPaid(e)
		check(err)
		if err == nil && paid.Amount < 0 {
			t.Fatalf("%q: accepted a negative amount %d", data, paid.Amount)
		}
		check(CheckOther(e))
	})
}
