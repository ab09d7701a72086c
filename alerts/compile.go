package alerts

import (
	"fmt"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
)

// Compiling a rule set (S2 coverings and indexes of every fence) takes
// time: seconds for 10,000 fences (docs/alerts.md, "Readiness"). The
// evaluation waits for it, so the engine is not ready meanwhile, and
// /readyz says why: at start while the snapshot's rule set is compiled and
// until the rule set found at start is in force, and whenever a new rule
// set is compiled (only its changed fences are: usually quick).

// compileState is a compilation under way, or awaited.
type compileState struct {
	version int64
	fences  int
	since   time.Time
}

// compile runs fn, which compiles rs, with the engine marked as compiling,
// and logs and records how long it took.
func (e *Engine) compile(rs *eval.RuleSet, fn func() error) error {
	start := time.Now()
	e.compiling.Store(&compileState{version: rs.Version, fences: len(rs.Geofences), since: start})
	defer e.compiling.Store(nil)
	if e.hook != nil {
		e.hook("compiling")
	}
	err := fn()
	took := time.Since(start)
	e.m.compileSeconds.Set(took.Seconds())
	if took > time.Second {
		e.logger.Info("alerts: rule set compiled", "version", rs.Version, "geofences", len(rs.Geofences), "took", took.Round(time.Millisecond))
	}
	return err
}

// ruleEntryDone notes that the evaluation has applied (or refused) the
// rule set entry of version v: the rule set found at start is in force
// once it has come to its entry.
func (e *Engine) ruleEntryDone(v int64) {
	if s := e.startRules.Load(); s != nil && v >= s.version {
		e.startRules.CompareAndSwap(s, nil)
	}
}

// compileReady is Ready's part about rule sets.
func (e *Engine) compileReady() error {
	if s := e.compiling.Load(); s != nil {
		return fmt.Errorf("alerts: compiling rule set %d (%d geofences, %v so far): not evaluating yet",
			s.version, s.fences, time.Since(s.since).Round(time.Second))
	}
	if s := e.startRules.Load(); s != nil {
		return fmt.Errorf("alerts: rule set %d (%d geofences) waits to be compiled and put in force (%v so far)",
			s.version, s.fences, time.Since(s.since).Round(time.Second))
	}
	return nil
}
