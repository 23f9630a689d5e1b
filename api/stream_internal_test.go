package api

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestStatusHubRetention: a client resumes after any event still kept,
// and from further back starts afresh with each projection's latest; at
// least streamRetained events are kept, however many have been.
func TestStatusHubRetention(t *testing.T) {
	h := newStatusHub(nil)
	h.mu.Lock()
	require.True(t, h.record("a", []byte(`1`)))
	require.False(t, h.record("a", []byte(`1`)), "the same status twice is one event")
	for i := range 3 * streamRetained {
		h.record([]string{"a", "b"}[i%2], fmt.Appendf(nil, "%d", i+2))
	}
	last := h.seq
	h.mu.Unlock()
	require.Equal(t, uint64(3*streamRetained+1), last)
	require.GreaterOrEqual(t, len(h.events), streamRetained)

	seq, ok := h.resumeFrom(h.id(last - streamRetained))
	require.True(t, ok, "kept")
	events, next, _ := h.after(seq, false, nil)
	require.Len(t, events, streamRetained)
	require.Equal(t, last-streamRetained+1, events[0].seq)
	require.Equal(t, last, next)

	events, _, _ = h.after(last-1, false, map[string]bool{"a": true})
	require.Empty(t, events, "the last event is b's")

	_, ok = h.resumeFrom(h.id(1))
	require.False(t, ok, "no longer kept")
	_, ok = h.resumeFrom("other-5")
	require.False(t, ok, "another process's")
	_, ok = h.resumeFrom(h.id(last + 1))
	require.False(t, ok, "not sent yet")
	events, _, _ = h.after(1, false, nil)
	require.Len(t, events, 2, "a reader fallen behind what is kept starts afresh")
	events, _, _ = h.after(0, true, nil)
	require.Len(t, events, 2, "afresh: each projection's latest")
	require.Equal(t, []string{"a", "b"}, []string{events[0].projection, events[1].projection}, "in order")
	require.Equal(t, last, events[1].seq)
}
