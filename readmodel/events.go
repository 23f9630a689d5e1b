package readmodel

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/projections"
)

// Event types of the example domain. Streams are "order-<id>"; amounts are
// integer cents.
const (
	TypeOrderPlaced    = "OrderPlaced"
	TypeOrderPaid      = "OrderPaid"
	TypeOrderShipped   = "OrderShipped"
	TypeOrderDelivered = "OrderDelivered"
	TypeOrderCancelled = "OrderCancelled"

	// OrderStreamPrefix starts every order stream's name.
	OrderStreamPrefix = "order-"
)

// OrderPlaced opens an order.
type OrderPlaced struct {
	CustomerID string `json:"customer_id"`
	Items      []Item `json:"items"`
	Total      int64  `json:"total"`
}

// Item is one line of an order.
type Item struct {
	SKU   string `json:"sku"`
	Qty   int64  `json:"qty"`
	Price int64  `json:"price"`
}

// OrderPaid records a payment.
type OrderPaid struct {
	Amount int64 `json:"amount"`
}

// OrderShipped records the hand-over to a carrier.
type OrderShipped struct {
	Carrier string `json:"carrier"`
}

// OrderDelivered records the delivery.
type OrderDelivered struct{}

// OrderCancelled closes an order without delivery.
type OrderCancelled struct {
	Reason string `json:"reason"`
}

// ErrBadEvent is wrapped by every decoding error. Such errors are
// projections.Permanent: the projector parks the event at once.
var ErrBadEvent = errors.New("bad event")

// OrderID is the order id of an order stream: its name without "order-".
func OrderID(stream string) string { return strings.TrimPrefix(stream, OrderStreamPrefix) }

// decode reads an event's JSON. Wrong types and trailing data are errors,
// so a malformed event is reported, never half-read; fields it does not
// know are ignored, so that adding a field to an event breaks no projection.
func decode(e eventstore.RecordedEvent, v any) error {
	// Unmarshal rejects anything after the value itself, and costs about
	// half what a Decoder did (which copies the data into its own buffer,
	// and let a stray closing bracket after the object pass).
	if err := json.Unmarshal(e.Data, v); err != nil {
		return projections.Permanent(fmt.Errorf("%w: %s %s (%s revision %d): %v", ErrBadEvent, e.Type, e.EventID, e.StreamID, e.Revision, err))
	}
	return nil
}

func bad(e eventstore.RecordedEvent, format string, args ...any) error {
	return projections.Permanent(fmt.Errorf("%w: %s %s (%s revision %d): %s", ErrBadEvent, e.Type, e.EventID, e.StreamID, e.Revision, fmt.Sprintf(format, args...)))
}

// DecodeOrderPlaced decodes and checks an OrderPlaced event.
func DecodeOrderPlaced(e eventstore.RecordedEvent) (OrderPlaced, error) {
	var v OrderPlaced
	if err := decode(e, &v); err != nil {
		return v, err
	}
	if v.CustomerID == "" {
		return v, bad(e, "customer_id is missing")
	}
	if v.Total < 0 {
		return v, bad(e, "total %d is negative", v.Total)
	}
	for i, it := range v.Items {
		if it.Qty <= 0 || it.Price < 0 {
			return v, bad(e, "item %d: qty must be positive and price not negative", i)
		}
	}
	return v, nil
}

// DecodeOrderPaid decodes and checks an OrderPaid event.
func DecodeOrderPaid(e eventstore.RecordedEvent) (OrderPaid, error) {
	var v struct {
		Amount *int64 `json:"amount"`
	}
	if err := decode(e, &v); err != nil {
		return OrderPaid{}, err
	}
	if v.Amount == nil {
		return OrderPaid{}, bad(e, "amount is missing")
	}
	if *v.Amount < 0 {
		return OrderPaid{}, bad(e, "amount %d is negative", *v.Amount)
	}
	return OrderPaid{Amount: *v.Amount}, nil
}

// CheckOther decodes the events whose fields no projection reads, so that a
// malformed one is reported all the same. The bench's ceiling calls it too,
// to decode every event the way the projections do.
func CheckOther(e eventstore.RecordedEvent) error {
	switch e.Type {
	case TypeOrderShipped:
		return decode(e, &OrderShipped{})
	case TypeOrderDelivered:
		return decode(e, &OrderDelivered{})
	case TypeOrderCancelled:
		return decode(e, &OrderCancelled{})
	}
	return nil
}
