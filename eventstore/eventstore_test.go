package eventstore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
)

func TestPositionTokensRoundTrip(t *testing.T) {
	t.Parallel()
	for _, p := range []eventstore.Position{eventstore.Start, eventstore.At(1234), {Commit: 10, Prepare: 7}, {Commit: 1 << 62, Prepare: 1 << 62}} {
		back, err := eventstore.ParsePosition(p.String())
		require.NoError(t, err)
		require.Equal(t, p, back, p.String())
	}
	require.Equal(t, "1234", eventstore.At(1234).String())
	require.Equal(t, "10/7", eventstore.Position{Commit: 10, Prepare: 7}.String())
	for _, bad := range []string{"", " 1", "1 ", "x", "-3", "1/", "/1", "1/2/3", "18446744073709551616"} {
		_, err := eventstore.ParsePosition(bad)
		require.ErrorIs(t, err, eventstore.ErrInvalidPosition, "%q", bad)
	}
}

func TestPositionOrder(t *testing.T) {
	t.Parallel()
	require.True(t, eventstore.Start.Before(eventstore.At(1)))
	require.True(t, eventstore.Position{Commit: 5, Prepare: 4}.Before(eventstore.Position{Commit: 5, Prepare: 5}))
	require.True(t, eventstore.Position{Commit: 5, Prepare: 9}.Before(eventstore.Position{Commit: 6, Prepare: 0}))
	require.Zero(t, eventstore.At(3).Compare(eventstore.At(3)))
	require.True(t, eventstore.Start.IsStart())
}

func TestParseExpectedRevision(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]eventstore.ExpectedRevision{
		"": eventstore.Any, "any": eventstore.Any, "no-stream": eventstore.NoStream,
		"exists": eventstore.StreamExists, "0": eventstore.Exact(0), "42": eventstore.Exact(42),
	} {
		got, err := eventstore.ParseExpectedRevision(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
		if in != "" {
			require.Equal(t, in, got.String())
		}
	}
	for _, bad := range []string{"-1", "+1", "01", "1.5", "latest", "NoStream", " 1"} {
		_, err := eventstore.ParseExpectedRevision(bad)
		require.Error(t, err, "%q", bad)
	}
}

func TestFilterMatches(t *testing.T) {
	t.Parallel()
	all := eventstore.Filter{}
	require.True(t, all.Matches("anything", "Any"))
	f := eventstore.Filter{StreamPrefixes: []string{"order-", "cart-"}, EventTypes: []string{"Placed"}}
	require.True(t, f.Matches("order-1", "Placed"))
	require.True(t, f.Matches("cart-9", "Placed"))
	require.False(t, f.Matches("order-1", "Paid"))
	require.False(t, f.Matches("orders-1", "Placed"))
	require.False(t, f.Matches("customer-1", "Placed"))
}

func TestFilterCategory(t *testing.T) {
	t.Parallel()
	f := eventstore.Filter{Category: "order"}
	require.Equal(t, []string{"order-"}, f.Prefixes())
	require.True(t, f.Matches("order-1", "Placed"))
	require.False(t, f.Matches("orders-1", "Placed"))
	require.False(t, f.Matches("order", "Placed"))
}

func TestFilterEventTypePrefixes(t *testing.T) {
	t.Parallel()
	f := eventstore.Filter{EventTypes: []string{"Refunded"}, EventTypePrefixes: []string{"Order"}}
	require.True(t, f.Matches("x", "OrderPlaced"))
	require.True(t, f.Matches("x", "Refunded"))
	require.False(t, f.Matches("x", "CartOpened"))
}
