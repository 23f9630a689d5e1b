//go:build pgrestart

package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/sightlinehq/sightline/eventstore"
	"github.com/sightlinehq/sightline/eventstore/pgstore"
	"github.com/sightlinehq/sightline/internal/testdb"
)

// TestAcknowledgedAppendsSurviveACrash crashes PostgreSQL (stop -m
// immediate: no shutdown checkpoint, unwritten WAL lost) while 8 writers
// append, and proves that every acknowledged append is still there after
// recovery, at the position it was acknowledged with. Appends commit without
// waiting for the disk and rely on the sequencer's synchronous commit to
// flush them before they are acknowledged: this is the drill that catches an
// acknowledgement given too early (it fails when the sequencer's commit is
// made asynchronous too). Appends under way may get an error and are not
// counted; one that got ErrAppendLost must have left nothing. The crash is
// PostgreSQL's, not the machine's: WAL handed to the kernel survives it, WAL
// still in the server's buffers does not.
//
// It stops the server every other test uses, so it is built only with the
// pgrestart tag and run alone (make drill).
//
// The second run gives the store connections with synchronous_commit off:
// the sequencer's commit must wait for the disk all the same.
func TestAcknowledgedAppendsSurviveACrash(t *testing.T) {
	for _, syncOff := range []bool{false, true} {
		t.Run(fmt.Sprintf("synchronous_commit_off=%v", syncOff), func(t *testing.T) {
			crashUnderAppends(t, syncOff)
		})
	}
}

func crashUnderAppends(t *testing.T, syncOff bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	db := testdb.New(t)
	pcfg, err := pgxpool.ParseConfig(db.URL)
	require.NoError(t, err)
	pcfg.MaxConns = 16
	if syncOff {
		pcfg.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	}
	spool, err := pgxpool.NewWithConfig(ctx, pcfg)
	require.NoError(t, err)
	defer spool.Close()
	store, err := pgstore.New(spool, pgstore.Config{})
	require.NoError(t, err)
	defer store.Close()

	type acked struct {
		stream string
		pos    eventstore.Position
	}
	var (
		mu       sync.Mutex
		acks     []acked
		failures int
		lost     []string // streams whose append returned ErrAppendLost
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				stream := fmt.Sprintf("crash-%d-%d", w, i)
				actx, cancel := context.WithTimeout(ctx, 20*time.Second)
				res, err := store.Append(actx, stream, eventstore.NoStream,
					eventstore.EventData{EventID: uuid.NewString(), Type: "Written", Data: []byte(`{"n":1}`)})
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					acks = append(acks, acked{stream, res.Position})
				case errors.Is(err, eventstore.ErrAppendLost):
					lost = append(lost, stream)
					failures++
				default:
					failures++
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(2 * time.Second)
	mu.Lock()
	before := len(acks)
	mu.Unlock()
	testdb.Restart(t, ctx, db.Pool, true)
	t.Log("PostgreSQL crashed and recovered")
	mu.Lock()
	recovered := len(acks)
	mu.Unlock()
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acks) > recovered+100
	}, 30*time.Second, 50*time.Millisecond, "the writers go on after recovery")
	close(stop)
	wg.Wait()
	// Writers may or may not see an error: one waiting for its position
	// through the crash gets it once the sequencer is back, and the pool
	// replaces dead connections before handing them out again.
	require.Positive(t, before, "appends were acknowledged before the crash")
	t.Logf("%d appends acknowledged, %d failed (%d of them lost before acknowledgement)", len(acks), failures, len(lost))

	// Read back through a new pool: nothing of the old connections' state.
	pool, err := pgxpool.New(ctx, db.URL)
	require.NoError(t, err)
	defer pool.Close()
	got := map[string]int64{}
	rows, err := pool.Query(ctx, `SELECT stream_id, position FROM sightline.events WHERE stream_id LIKE 'crash-%' AND position IS NOT NULL`)
	require.NoError(t, err)
	for rows.Next() {
		var stream string
		var pos int64
		require.NoError(t, rows.Scan(&stream, &pos))
		got[stream] = pos
	}
	require.NoError(t, rows.Err())
	missing := 0
	for _, a := range acks {
		pos, ok := got[a.stream]
		if !ok {
			missing++
			continue
		}
		require.Equal(t, a.pos.String(), eventstore.At(uint64(pos)).String(), "stream %s is at the position its append was acknowledged with", a.stream)
	}
	require.Zero(t, missing, "acknowledged appends lost in the crash")
	var found int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM sightline.event_log WHERE stream_id = ANY($1)`, lost).Scan(&found))
	require.Zero(t, found, "an append that returned ErrAppendLost left nothing behind")
}
