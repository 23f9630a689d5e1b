package redact_test

import (
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/internal/redact"
)

func TestURL(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", ""},
		{"a word", "postgres", "postgres"},
		{"a path", "/var/run/postgresql", "/var/run/postgresql"},

		// PostgreSQL URLs.
		{"postgres password", "postgres://app:s3cret@db.internal:5432/app?sslmode=disable", "postgres://app:xxxxx@db.internal:5432/app?sslmode=disable"},
		{"postgresql scheme", "postgresql://app:s3cret@db/app", "postgresql://app:xxxxx@db/app"},
		{"upper-case scheme", "POSTGRES://app:s3cret@db/app", "POSTGRES://app:xxxxx@db/app"},
		{"user only", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"},
		{"empty password kept", "postgres://app:@db/app", "postgres://app:@db/app"},
		{"password without user", "postgres://:s3cret@db/app", "postgres://:xxxxx@db/app"},
		{"percent-encoded password", "postgres://app:p%40ss%2Fw0rd@db/app", "postgres://app:xxxxx@db/app"},
		{"password with a colon", "postgres://app:a:b:c@db/app", "postgres://app:xxxxx@db/app"},
		{"raw @ in the password", "postgres://app:p@ss@db/app", "postgres://app:xxxxx@db/app"},
		{"raw / in the password", "postgres://app:pa/ss@db/app", "postgres://app:xxxxx@db/app"},
		{"raw ? in the password", "postgres://app:pa?ss@db/app?sslmode=require", "postgres://app:xxxxx@db/app?sslmode=require"},
		{"raw # in the password", "postgres://app:pa#ss@db/app", "postgres://app:xxxxx@db/app"},
		{"several hosts", "postgres://app:s3cret@h1:5432,h2:5433/app?target_session_attrs=read-write", "postgres://app:xxxxx@h1:5432,h2:5433/app?target_session_attrs=read-write"},
		{"password parameter", "postgres://db/app?user=app&password=s3cret&sslmode=require", "postgres://db/app?user=app&password=xxxxx&sslmode=require"},
		{"ssl parameters", "postgres://db/app?sslpassword=s3cret&sslkey=/etc/k.pem&sslcert=/etc/c.pem", "postgres://db/app?sslpassword=xxxxx&sslkey=xxxxx&sslcert=/etc/c.pem"},
		{"no host", "postgres:///app?host=/tmp&password=s3cret", "postgres:///app?host=/tmp&password=xxxxx"},

		// EventStoreDB and KurrentDB URLs.
		{"esdb", "esdb://127.0.0.1:2113?tls=false", "esdb://127.0.0.1:2113?tls=false"},
		{"esdb password", "esdb://admin:changeit@127.0.0.1:2113?tls=false", "esdb://admin:xxxxx@127.0.0.1:2113?tls=false"},
		{"esdb+discover password", "esdb+discover://admin:changeit@cluster.dns:2113", "esdb+discover://admin:xxxxx@cluster.dns:2113"},
		{"kurrentdb password", "kurrentdb://admin:changeit@localhost:2113?tls=false&nodePreference=leader", "kurrentdb://admin:xxxxx@localhost:2113?tls=false&nodePreference=leader"},
		{"kurrentdb+discover gossip seeds", "kurrentdb+discover://admin:changeit@n1:2113,n2:2113,n3:2113?tlsVerifyCert=false", "kurrentdb+discover://admin:xxxxx@n1:2113,n2:2113,n3:2113?tlsVerifyCert=false"},
		{"token-like parameters", "kurrentdb://localhost:2113?tls=true&token=abc&apiKey=k1&api_key=k2&client_secret=s&access-token=t&Password=p&passwd=q&pwd=r&credentials=c",
			"kurrentdb://localhost:2113?tls=true&token=xxxxx&apiKey=xxxxx&api_key=xxxxx&client_secret=xxxxx&access-token=xxxxx&Password=xxxxx&passwd=xxxxx&pwd=xxxxx&credentials=xxxxx"},
		{"percent-encoded parameter name", "esdb://h:2113?pass%77ord=x&tls=false", "esdb://h:2113?pass%77ord=xxxxx&tls=false"},
		{"settings that are not secrets", "esdb://h:2113?tls=false&keepAliveInterval=10000&userKeyFile=/k.pem&tlsCaFile=/ca.pem&maxDiscoverAttempts=3",
			"esdb://h:2113?tls=false&keepAliveInterval=10000&userKeyFile=/k.pem&tlsCaFile=/ca.pem&maxDiscoverAttempts=3"},
		{"empty secret parameter kept", "esdb://h:2113?password=&tls=false", "esdb://h:2113?password=&tls=false"},
		{"parameter without a value", "esdb://h:2113?token&tls=false", "esdb://h:2113?token&tls=false"},
		{"fragment kept", "https://example.com/p?access_token=abc#top", "https://example.com/p?access_token=xxxxx#top"},
		{"signature", "https://acct.blob.example/c?sv=2024&sig=abc%2Bdef&se=2030", "https://acct.blob.example/c?sv=2024&sig=xxxxx&se=2030"},
		{"an @ in the query hides more", "esdb://h:2113?x=a@b", "esdb://h:xxxxx@b"},

		// PostgreSQL key=value strings.
		{"dsn", "host=localhost user=postgres password=s3cret dbname=app sslmode=disable", "host=localhost user=postgres password=xxxxx dbname=app sslmode=disable"},
		{"dsn first", "password=s3cret host=localhost", "password=xxxxx host=localhost"},
		{"dsn spaces around =", "host=db password = s3cret dbname=app", "host=db password = xxxxx dbname=app"},
		{"dsn quoted", `host=db password='se cr\'et \\' dbname=app`, "host=db password=xxxxx dbname=app"},
		{"dsn escaped space", `host=db password=se\ cret dbname=app`, "host=db password=xxxxx dbname=app"},
		{"dsn unterminated quote", `host=db password='s3cret dbname=app`, "host=db password=xxxxx"},
		{"dsn empty quoted", "host=db password='' dbname=app", "host=db password='' dbname=app"},
		{"dsn nothing after =", "host=db password=", "host=db password="},
		{"dsn ssl", "host=db sslpassword=s3cret sslkey=/k.pem sslcert=/c.pem", "host=db sslpassword=xxxxx sslkey=xxxxx sslcert=/c.pem"},
		{"dsn no secrets", "host=db user=app dbname=app", "host=db user=app dbname=app"},
		{"dsn tabs and newlines", "host=db\n\tpassword=s3cret\n\tuser=app", "host=db\n\tpassword=xxxxx\n\tuser=app"},
		{"semicolons", "Host=db;Username=app;Password=s3cret", "Host=db;Username=app;Password=xxxxx"},
		{"semicolons, secret not last hides the rest", "Host=db;Password=s3cret;Database=app", "Host=db;Password=xxxxx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, redact.URL(tc.in))
		})
	}
}

// TestURLHidesEveryPassword makes passwords of every character, puts them in
// each form raw, percent-encoded or quoted as they would be given, and
// requires that none is shown.
func TestURLHidesEveryPassword(t *testing.T) {
	const chars = "abcXYZ0189 -._~!$&'()*+,;=:@/?#[]%\\\"`^|{}<>é"
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		var pw strings.Builder
		for range 8 + rng.IntN(8) {
			pw.WriteRune([]rune(chars)[rng.IntN(len([]rune(chars)))])
		}
		p := pw.String()
		quoted := "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(p) + "'"
		forms := map[string]string{
			"encoded userinfo": "postgres://app:" + url.PathEscape(p) + "@db:5432/app?sslmode=disable",
			"esdb userinfo":    "esdb://admin:" + url.QueryEscape(p) + "@h1:2113,h2:2113?tls=false",
			"query":            "kurrentdb://h:2113?tls=false&password=" + url.QueryEscape(p) + "&nodePreference=leader",
			"dsn":              "host=db password=" + quoted + " dbname=app",
			"semicolons":       "Host=db;Password=" + quoted,
		}
		if !strings.ContainsAny(p, " ") {
			forms["raw userinfo"] = "postgres://app:" + p + "@db/app?sslmode=disable"
		}
		for form, in := range forms {
			out := redact.URL(in)
			for _, secret := range []string{p, url.PathEscape(p), url.QueryEscape(p), quoted} {
				require.NotContains(t, out, secret, "%s: %q", form, in)
			}
			require.Contains(t, out, redact.Mask, "%s: %q", form, in)
		}
	}
}
