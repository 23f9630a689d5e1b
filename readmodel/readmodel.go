package readmodel

import "github.com/sightlinehq/sightline/projections"

// All returns the example projections.
func All() []projections.Projection {
	return []projections.Projection{Orders{}, CustomerStats{}, DailySales{}}
}
