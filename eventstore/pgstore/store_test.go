package pgstore_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/eventstore/storetest"
	"github.com/sightlinehq/sightline/internal/testdb"
)

func newStore(t testing.TB, cfg pgstore.Config) (*pgstore.Store, *testdb.DB) {
	db := testdb.New(t)
	s, err := pgstore.New(db.Pool, cfg)
	require.NoError(t, err)
	t.Cleanup(s.Close)
	return s, db
}

func TestContract(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Features{HeadTime: true}, func(t *testing.T) eventstore.Store {
		s, _ := newStore(t, pgstore.Config{})
		return s
	})
}
