package projections

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func units(names ...string) []unit {
	out := make([]unit, len(names))
	for i, n := range names {
		u, ok := parseUnit(n)
		if !ok {
			panic(n)
		}
		out[i] = u
	}
	return out
}

func loads(target map[unit]string) map[string]int {
	out := map[string]int{}
	for _, id := range target {
		out[id]++
	}
	return out
}

func TestAssignSharesFairlyAndKeepsHolders(t *testing.T) {
	all := units("a/0", "b/0", "c/0", "d/0", "d/1", "d/2")
	target := assign([]member{{id: "p1", runs: all}, {id: "p2", runs: all}, {id: "p3", runs: all}}, nil)
	require.Len(t, target, 6)
	require.Equal(t, map[string]int{"p1": 2, "p2": 2, "p3": 2}, loads(target))

	// A process joining takes its share from the holders, who keep the
	// rest: only what must move moves.
	held := map[unit]string{}
	for _, u := range all {
		held[u] = "p1"
	}
	target = assign([]member{{id: "p1", runs: all}, {id: "p2", runs: all}}, held)
	require.Equal(t, map[string]int{"p1": 3, "p2": 3}, loads(target))
	moved := 0
	for u, id := range target {
		if id != held[u] {
			moved++
		}
	}
	require.Equal(t, 3, moved)
	again := assign([]member{{id: "p2", runs: all}, {id: "p1", runs: all}}, map[unit]string(target))
	require.Equal(t, target, again, "computed again from its own result, in any order, nothing moves")
}

func TestAssignGivesEachUnitToAProcessThatRunsIt(t *testing.T) {
	// A rolling upgrade: the new code runs c, the old does not.
	old, upgraded := units("a/0", "b/0"), units("a/0", "b/0", "c/0")
	held := map[unit]string{{"a", 0}: "old1", {"b", 0}: "old2"}
	target := assign([]member{{id: "old1", runs: old}, {id: "old2", runs: old}, {id: "new", runs: upgraded}}, held)
	require.Equal(t, "new", target[unit{"c", 0}])
	require.Equal(t, "old1", target[unit{"a", 0}])
	require.Equal(t, "old2", target[unit{"b", 0}])

	// Past the cap when nobody else runs it.
	target = assign([]member{{id: "p1", runs: units("a/0")}, {id: "p2", runs: units("b/0", "c/0", "d/0")}}, nil)
	require.Equal(t, map[string]int{"p1": 1, "p2": 3}, loads(target))
	require.Empty(t, assign(nil, nil))
}
