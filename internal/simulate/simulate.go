package simulate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/google/uuid"
	"golang.org/x/time/rate"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/readmodel"
)

// Defaults for Config.
const (
	OrdersDefault    = 1000
	CustomersDefault = 100
	WritersDefault   = 4
	ActiveDefault    = 32
)

// Config describes the traffic.
type Config struct {
	// Orders to create. Defaults to OrdersDefault.
	Orders int
	// Customers the orders are spread over. Defaults to CustomersDefault.
	Customers int
	// Rate is the events appended per second, over all writers, on
	// average: writers held up by a slow store catch up afterwards, as
	// long as there are enough of them. 0 means as fast as the store takes
	// them.
	Rate float64
	// Writers append concurrently. Defaults to WritersDefault.
	Writers int
	// Active is how many orders each writer has open at once; their events
	// interleave. Defaults to ActiveDefault.
	Active int
	// Seed makes the traffic repeatable: the same seed writes the same
	// orders with the same event IDs, so running it twice writes nothing new.
	Seed uint64
	// Progress, if set, is called after every append with the total so far.
	Progress func(events int64)
}

func (c Config) withDefaults() Config {
	c.Orders = cmp.Or(c.Orders, OrdersDefault)
	c.Customers = cmp.Or(c.Customers, CustomersDefault)
	c.Writers = cmp.Or(c.Writers, WritersDefault)
	c.Active = cmp.Or(c.Active, ActiveDefault)
	return c
}

// Validate reports a configuration that cannot run.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.Orders < 0 || c.Customers < 1 || c.Writers < 1 || c.Active < 1:
		return errors.New("orders must not be negative; customers, writers and active orders must be at least 1")
	case c.Rate < 0:
		return errors.New("rate must not be negative (0 means as fast as possible)")
	}
	return nil
}

// Result sums up a run.
type Result struct {
	Orders  int
	Events  int64
	Elapsed time.Duration
}

// Run appends the traffic to store and returns when every order has reached
// its last event, or ctx ends.
func Run(ctx context.Context, store eventstore.Store, cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	cfg = cfg.withDefaults()
	var limiter *rate.Limiter
	if cfg.Rate > 0 {
		limiter = Pacer(cfg.Rate)
	}
	start := time.Now()
	var events atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, cfg.Writers)
	for w := range cfg.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Writer w creates orders w, w+Writers, w+2*Writers, ...
			var mine []int
			for i := w; i < cfg.Orders; i += cfg.Writers {
				mine = append(mine, i)
			}
			wr := writer{store: store, cfg: cfg, limiter: limiter, events: &events,
				rng: rand.New(rand.NewPCG(cfg.Seed, uint64(w)+1))}
			if err := wr.run(ctx, mine); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	res := Result{Orders: cfg.Orders, Events: events.Load(), Elapsed: time.Since(start)}
	return res, <-errs
}

// Pacer paces writers that share it to perSecond on average, as clients
// who do not wait for one another would write: writes held up by a slow
// store are made up for afterwards, up to a second's worth, rather than
// lost. (A token bucket of a second's tokens, empty at the start. With a
// small bucket, every stall of the store would lower the rate, and a
// benchmark would measure a lighter load than it names.)
func Pacer(perSecond float64) *rate.Limiter {
	burst := max(1, int(perSecond))
	l := rate.NewLimiter(rate.Limit(perSecond), burst)
	l.ReserveN(time.Now(), burst)
	return l
}

type writer struct {
	store   eventstore.Store
	cfg     Config
	limiter *rate.Limiter
	events  *atomic.Int64
	rng     *rand.Rand
}

func (w *writer) run(ctx context.Context, orders []int) error {
	var active []*order
	next := 0
	for len(active) > 0 || next < len(orders) {
		for len(active) < w.cfg.Active && next < len(orders) {
			active = append(active, newOrder(w.cfg, orders[next]))
			next++
		}
		i := w.rng.IntN(len(active))
		o := active[i]
		if w.limiter != nil {
			if err := w.limiter.Wait(ctx); err != nil {
				return err
			}
		}
		if err := o.appendNext(ctx, w.store); err != nil {
			return err
		}
		n := w.events.Add(1)
		if w.cfg.Progress != nil {
			w.cfg.Progress(n)
		}
		if o.done() {
			active[i] = active[len(active)-1]
			active = active[:len(active)-1]
		}
	}
	return nil
}

// order is one order's life, decided up front from the seed.
type order struct {
	stream string
	events []eventstore.EventData
	next   int
}

var carriers = []string{"DHL", "UPS", "FedEx", "La Poste", "PostNL"}
var reasons = []string{"customer request", "payment failed", "out of stock", "address invalid"}

func newOrder(cfg Config, n int) *order {
	// Each order has its own generator, so its life does not depend on the
	// order in which writers happen to run.
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x0de5^uint64(n)))
	id := fmt.Sprintf("%08x-%04x", rng.Uint32(), n%0x10000)
	o := &order{stream: readmodel.OrderStreamPrefix + id}
	add := func(typ string, v any) {
		data, err := json.Marshal(v)
		if err != nil {
			panic(err) // the example types always marshal
		}
		var eid uuid.UUID
		for i := range eid {
			eid[i] = byte(rng.Uint32())
		}
		eid[6] = (eid[6] & 0x0f) | 0x40 // version 4
		eid[8] = (eid[8] & 0x3f) | 0x80 // RFC 4122 variant
		o.events = append(o.events, eventstore.EventData{EventID: eid.String(), Type: typ, Data: data})
	}

	placed := readmodel.OrderPlaced{CustomerID: fmt.Sprintf("c-%05d", rng.IntN(cfg.Customers))}
	for range 1 + rng.IntN(4) {
		it := readmodel.Item{SKU: fmt.Sprintf("SKU-%04d", rng.IntN(500)), Qty: 1 + rng.Int64N(3), Price: 199 + rng.Int64N(19800)}
		placed.Items = append(placed.Items, it)
		placed.Total += it.Qty * it.Price
	}
	add(readmodel.TypeOrderPlaced, placed)
	switch r := rng.Float64(); {
	case r < 0.08: // cancelled before payment
		add(readmodel.TypeOrderCancelled, readmodel.OrderCancelled{Reason: reasons[rng.IntN(len(reasons))]})
		return o
	case r < 0.12: // never paid: stays placed
		return o
	}
	if rng.Float64() < 0.2 { // paid in two instalments
		first := placed.Total / 2
		add(readmodel.TypeOrderPaid, readmodel.OrderPaid{Amount: first})
		add(readmodel.TypeOrderPaid, readmodel.OrderPaid{Amount: placed.Total - first})
	} else {
		add(readmodel.TypeOrderPaid, readmodel.OrderPaid{Amount: placed.Total})
	}
	switch r := rng.Float64(); {
	case r < 0.04:
		add(readmodel.TypeOrderCancelled, readmodel.OrderCancelled{Reason: reasons[rng.IntN(len(reasons))]})
		return o
	case r < 0.10: // paid, not shipped yet
		return o
	}
	add(readmodel.TypeOrderShipped, readmodel.OrderShipped{Carrier: carriers[rng.IntN(len(carriers))]})
	if rng.Float64() < 0.95 {
		add(readmodel.TypeOrderDelivered, readmodel.OrderDelivered{})
	}
	return o
}

func (o *order) done() bool { return o.next >= len(o.events) }

// Order returns the stream and the events of order n as Run writes them
// with cfg, for loading history in bulk.
func Order(cfg Config, n int) (string, []eventstore.EventData) {
	o := newOrder(cfg.withDefaults(), n)
	return o.stream, o.events
}

// retryFor is how long an append is retried while the store is unreachable.
const retryFor = time.Minute

// appendNext appends the order's next event with the exact expected
// revision. An append that fails for want of the store (a lost connection,
// a restarting server) is tried again with backoff, with the same event
// ID: if the first try did go through, the store's idempotency answers the
// retry. The store's refusals (a wrong revision, a bad event) end the run.
func (o *order) appendNext(ctx context.Context, store eventstore.Store) error {
	expected := eventstore.NoStream
	if o.next > 0 {
		expected = eventstore.Exact(uint64(o.next - 1))
	}
	try := func() error {
		_, err := store.Append(ctx, o.stream, expected, o.events[o.next])
		if errors.Is(err, eventstore.ErrWrongExpectedRevision) || errors.Is(err, eventstore.ErrIdempotency) ||
			errors.Is(err, eventstore.ErrInvalidEvent) || errors.Is(err, eventstore.ErrClosed) {
			return backoff.Permanent(err)
		}
		return err
	}
	policy := backoff.NewExponentialBackOff(backoff.WithInitialInterval(50*time.Millisecond), backoff.WithMaxInterval(time.Second),
		backoff.WithMaxElapsedTime(retryFor))
	if err := backoff.Retry(try, backoff.WithContext(policy, ctx)); err != nil {
		return fmt.Errorf("simulate: %w", err)
	}
	o.next++
	return nil
}
