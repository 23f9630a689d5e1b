package projections

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// member is a live process that applies projections, with the units it
// runs (its code's projections and their segments).
type member struct {
	id   string
	runs []unit
}

// assign decides which process applies each unit: every process computes
// it from the same rows (the live processes, what each runs, who holds
// what), so they agree without talking, and a round later at the latest
// when they read the rows at different moments.
//
// A unit goes only to a process that runs it, so that processes running
// different sets of projections (a rolling upgrade that adds one) leave
// none unapplied. The cap is the units divided by the processes, rounded
// up: a unit stays with its holder while the holder is under the cap;
// the others go, in order, to the process that runs them with the fewest
// so far (by id on a tie), past the cap when no process under it runs
// them.
func assign(members []member, holders map[unit]string) map[unit]string {
	slices.SortFunc(members, func(a, b member) int { return cmp.Compare(a.id, b.id) })
	eligible := map[unit][]string{}
	for _, m := range members {
		for _, u := range m.runs {
			eligible[u] = append(eligible[u], m.id)
		}
	}
	units := make([]unit, 0, len(eligible))
	for u := range eligible {
		units = append(units, u)
	}
	slices.SortFunc(units, compareUnits)
	limit := (len(units) + len(members) - 1) / max(len(members), 1)

	target := make(map[unit]string, len(units))
	load := map[string]int{}
	for _, u := range units { // the holders keep theirs, up to the cap
		if h, ok := holders[u]; ok && slices.Contains(eligible[u], h) && load[h] < limit {
			target[u] = h
			load[h]++
		}
	}
	for _, u := range units {
		if _, ok := target[u]; ok {
			continue
		}
		best := ""
		for _, id := range eligible[u] { // sorted by id: the first of the least loaded
			if best == "" || load[id] < load[best] {
				best = id
			}
		}
		target[u] = best
		load[best]++
	}
	return target
}

// unitName is how sightline.processes lists a unit a process runs.
func unitName(u unit) string { return u.projection + "/" + strconv.Itoa(u.segment) }

// parseUnit reads a unitName; false when it is not one.
func parseUnit(s string) (unit, bool) {
	i := strings.LastIndexByte(s, '/')
	if i < 0 {
		return unit{}, false
	}
	seg, err := strconv.Atoi(s[i+1:])
	return unit{s[:i], seg}, err == nil && seg >= 0
}
