package esdb_test

import (
	"context"
	"strings"
	"testing"
	"time"

	client "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/esdb"
	"github.com/sightlinehq/sightline/eventstore/esdb/esdbtest"
	"github.com/sightlinehq/sightline/eventstore/storetest"
)

func TestParseURL(t *testing.T) {
	type want struct {
		address            string
		seeds              []string
		discover, insecure bool
		user, password     string
	}
	for _, tc := range []struct {
		url  string
		want want
	}{
		{"esdb://127.0.0.1:2113?tls=false", want{address: "127.0.0.1:2113", insecure: true}},
		{"esdb+discover://cluster.dns:2113", want{address: "cluster.dns:2113", discover: true}},
		{"kurrentdb://host:2113?tls=false", want{address: "host:2113", insecure: true}},
		{"kurrentdb+discover://admin:changeit@cluster.dns:2113?tls=true", want{address: "cluster.dns:2113", discover: true, user: "admin", password: "changeit"}},
		{"kurrentdb://admin:changeit@host", want{address: "host:2113", user: "admin", password: "changeit"}},
		{"kurrentdb://n1:2113,n2:2114,n3?tls=false", want{seeds: []string{"n1:2113", "n2:2114", "n3:2113"}, insecure: true}},
		{"KurrentDB://Host:2113?TLS=False", want{address: "Host:2113", insecure: true}},
		{"ESDB+DISCOVER://cluster.dns", want{address: "cluster.dns:2113", discover: true}},
		{"kurrent://host:2113", want{address: "host:2113"}},
		{"kdb+discover://cluster.dns:2113", want{address: "cluster.dns:2113", discover: true}},
		{"kurrentdb://admin:p%40ss%2Fw%2Cd@host:2113", want{address: "host:2113", user: "admin", password: "p@ss/w,d"}},
		{"kurrentdb://admin:a,b@host:2113", want{address: "host:2113", user: "admin", password: "a,b"}},
		{"kurrentdb://admin:p@ss@host:2113", want{address: "host:2113", user: "admin", password: "p@ss"}},
	} {
		t.Run(tc.url, func(t *testing.T) {
			require.True(t, esdb.IsURL(tc.url))
			cfg, err := esdb.ParseURL(tc.url)
			require.NoError(t, err)
			var got want
			got.address, got.discover, got.insecure = cfg.Address, cfg.DnsDiscover, cfg.DisableTLS
			got.user, got.password = cfg.Username, cfg.Password
			for _, s := range cfg.GossipSeeds {
				got.seeds = append(got.seeds, s.Host+":"+itoa(s.Port))
			}
			require.Equal(t, tc.want, got)
			// The same as the client reads the string under esdb.
			_, rest, _ := strings.Cut(tc.url, "://")
			scheme := "esdb://"
			if tc.want.discover {
				scheme = "esdb+discover://"
			}
			direct, err := client.ParseConnectionString(scheme + rest)
			require.NoError(t, err)
			direct.Logger, cfg.Logger = nil, nil
			require.Equal(t, direct, cfg)
			// New takes it too.
			s, err := esdb.New(esdb.Config{URL: tc.url})
			require.NoError(t, err)
			s.Close()
		})
	}
}

func itoa(p uint16) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + p%10)}, b...)
		if p /= 10; p == 0 {
			return string(b)
		}
	}
}

func TestParseURLRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, url, want string
		isURL           bool
	}{
		{"empty", "", "want an esdb://, esdb+discover://, kurrentdb:// or kurrentdb+discover:// URL", false},
		{"postgres", "postgres://app:s3cret@db/app", `"postgres://app:xxxxx@db/app": want an esdb://`, false},
		{"http", "http://127.0.0.1:2113", "want an esdb://", false},
		{"no slashes", "kurrentdb:host:2113", "want an esdb://", false},
		{"scheme with a space", " kurrentdb://host:2113", "want an esdb://", false},
		{"discover misspelt", "kurrentdb+discovery://host:2113", "want an esdb://", false},
		{"no host", "kurrentdb://", "doesn't have an host", true},
		{"bad port", "kurrentdb://host:21x3", `"kurrentdb://host:21x3": invalid port ":21x3" after host`, true},
		{"bad port, with a password", "kurrentdb://admin:s3cret@host:21x3", `"kurrentdb://admin:xxxxx@host:21x3": invalid port ":21x3" after host`, true},
		{"bad port among seeds", "kurrentdb+discover://admin:s3cret@n1:2113,n2:21x3,n3", "wrong port format", true},
		{"a path", "esdb://host:2113/streams", "unsupported URL path: /streams", true},
		{"bad setting", "kurrentdb://admin:s3cret@host:2113?tls=maybe", `"kurrentdb://admin:xxxxx@host:2113?tls=maybe": Setting 'tls' must be either true or false`, true},
		{"bad escape in the password", "kurrentdb://admin:s3%zzcret@host:2113", `"kurrentdb://admin:xxxxx@host:2113": a % that does not begin a valid %-escape`, true},
		{"bad escape in the user name", "kurrentdb://ad%yymin@host:2113", `invalid URL escape "%yy"`, true},
		{"raw / in the password", "kurrentdb://admin:s3/cret@host:2113", `"kurrentdb://admin:xxxxx@host:2113": a /, ? or # before its last @`, true},
		{"raw ? in the password", "kurrentdb://admin:12?cret@host:2113", "must be percent-encoded", true},
		{"raw # in the password", "kurrentdb://admin:s3#cret@host:2113", "must be percent-encoded", true},
		{"raw comma in the password of a bad URL", "kurrentdb://admin:s3,cret@n1,n2:x,n3", "a comma in the password must be percent-encoded", true},
		{"empty user name", "kurrentdb://:s3cret@host:2113", "credentials were provided with an empty username", true},
		{"a secret parameter", "kurrentdb://host:2113?token=s3cret&tls=maybe", `"kurrentdb://host:2113?token=xxxxx&tls=maybe"`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.isURL, esdb.IsURL(tc.url))
			_, err := esdb.ParseURL(tc.url)
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			for _, secret := range []string{"s3", "cret", "zz"} {
				require.NotContains(t, err.Error(), secret)
			}
			_, err = esdb.New(esdb.Config{URL: tc.url})
			require.Error(t, err)
			require.Contains(t, err.Error(), tc.want)
			require.NotContains(t, err.Error(), "s3")
		})
	}
}

// TestKurrentDBURL reaches the wire-level double through a kurrentdb://
// connection string: an append, a read of the stream, and a subscription
// that delivers the event.
func TestKurrentDBURL(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := esdbtest.Start(t)
	url := "kurrentdb://" + strings.TrimPrefix(srv.URL(), "esdb://")
	require.True(t, strings.HasPrefix(url, "kurrentdb://127.0.0.1:"), url)
	s := newStore(t, url)

	res, err := s.Append(ctx, "order-1", eventstore.NoStream, storetest.Event("OrderPlaced", `{"n":1}`))
	require.NoError(t, err)
	require.True(t, s.Connected())
	read, err := s.ReadStream(ctx, "order-1", 0, 10)
	require.NoError(t, err)
	require.Len(t, read, 1)
	require.Equal(t, "OrderPlaced", read[0].Type)
	require.Equal(t, res.Position, read[0].Position)

	sub, err := s.Subscribe(ctx, eventstore.Start, eventstore.Filter{StreamPrefixes: []string{"order-"}})
	require.NoError(t, err)
	defer sub.Close()
	var got []eventstore.RecordedEvent
	for {
		msg, err := sub.Recv(ctx)
		require.NoError(t, err)
		got = append(got, msg.Events...)
		if msg.CaughtUp {
			break
		}
	}
	require.Len(t, got, 1)
	require.Equal(t, read[0].EventID, got[0].EventID)
	require.Equal(t, `{"n":1}`, string(got[0].Data))
}
