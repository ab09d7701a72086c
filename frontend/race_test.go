//go:build race

package frontend

// raceEnabled: the race detector inflates memory, so memory bounds are not
// checked under it.
const raceEnabled = true
