// Package eval is the alert engine's evaluator: rule sets (rules,
// geofences, webhooks) and their validation, and [Evaluator], which turns
// readings into alert events. It does no I/O: the engine (package alerts)
// feeds it, the API validates rule sets with it, and tests and the offline
// evaluation of the kill -9 tests run it directly. docs/alerts.md is the
// operator's reference for every rule.
//
// # Determinism
//
// An Evaluator is a pure function of what it is given, in order: rule sets
// (SetRuleSet), readings (Process) and clock ticks (Tick, with the wall
// time as an argument, never read inside). The same sequence gives the
// same events, with the same ids, in the same order for each device
// (devices' events of one tick have no defined order among devices). The
// engine's crash safety rests on this: it journals the sequence in its
// queue and replays it after a snapshot ([Evaluator.MarshalState],
// [Evaluator.RestoreState]).
//
// # Time
//
// Each device is evaluated in device-time order as its sequence numbers
// say: a reading is evaluated when its seq follows the last evaluated one.
// One that comes after a gap waits up to Options.ReorderWindow (judged at
// ticks) for the missing ones, so that readings crossing on two routers
// are put back in order; then the evaluation goes over the gap. Readings
// that arrive later and fall in that gap (a frontend that was down, a
// stretch flushed late) are a late stretch: evaluated on a branch, from
// the device's state before the gap, so that a depot visit inside them is
// reported, at its real times, marked late. A reading older than the last
// evaluated one and outside the last gap is a duplicate: dropped.
//
// An alert is late when the reading that revealed it reached a frontend
// more than Options.LateAfter after it was taken, or when it comes from a
// late stretch. Silences are judged by received times against the
// evaluator's watermark (the newest received time it has seen), so that
// an outage upstream of the engine silences no one.
//
// # Geometry
//
// Geofences are compiled with github.com/paulmach/orb (GeoJSON) and
// github.com/golang/geo (S2): each polygon and corridor gets a shape index
// of its own (containment, distance to the boundary for the hysteresis
// margin); polygons and circles are found by S2 cell coverings (a map from
// cell to fences), so a reading is tested only against the few fences
// whose covering holds it. The two places where a benchmark showed the
// library's general path to be the bottleneck are said where they are
// (fenceIndex, corridorSide).
package eval
