package simulate

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPacerMakesUpForStalls: the pacer starts with nothing to spend, so
// that writers start at the rate and not with a burst; writes held up by
// a stall may be made up for afterwards, but never more than a second's
// worth, however long the stall.
func TestPacerMakesUpForStalls(t *testing.T) {
	const perSecond = 2000
	const slack = 10 // 5 ms of writes: the pacer's clock starts a little after start
	start := time.Now()
	p := Pacer(perSecond)
	require.InDelta(t, 0, p.TokensAt(start), slack, "nothing to spend at the start")
	require.InDelta(t, perSecond/4, p.TokensAt(start.Add(250*time.Millisecond)), slack, "a quarter second's writes after a quarter second's stall")
	require.InDelta(t, perSecond, p.TokensAt(start.Add(5*time.Second)), slack, "a second's writes at most")
}
