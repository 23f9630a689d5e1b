// Package readmodeltest checks the example read models against the truth:
// a fold of sightline.events computed in SQL that shares no code with the
// projections. Tests of the projector, the failure drills and the
// command-line tests use it to prove that nothing was lost or applied twice.
package readmodeltest
