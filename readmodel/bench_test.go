package readmodel_test

import (
	"testing"
	"time"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/readmodel"
)

// BenchmarkDecode is decoding the example events, the projections' own
// per-event cost.
func BenchmarkDecode(b *testing.B) {
	placed := eventstore.RecordedEvent{StreamID: "order-1", Type: readmodel.TypeOrderPlaced, CreatedAt: time.Now(),
		Data: []byte(`{"customer_id":"c-00042","items":[{"sku":"SKU-0042","qty":2,"price":1250},{"sku":"SKU-0007","qty":1,"price":999}],"total":3499}`)}
	paid := eventstore.RecordedEvent{StreamID: "order-1", Revision: 1, Type: readmodel.TypeOrderPaid, CreatedAt: time.Now(), Data: []byte(`{"amount":3499}`)}
	b.Run("OrderPlaced", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := readmodel.DecodeOrderPlaced(placed); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("OrderPaid", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := readmodel.DecodeOrderPaid(paid); err != nil {
				b.Fatal(err)
			}
		}
	})
}
