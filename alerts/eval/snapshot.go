package eval

import (
	"encoding/json"
	"fmt"
)

// stateDoc is the evaluator's state as MarshalState writes it.
type stateDoc struct {
	Version   int64                `json:"version"`
	Born      map[string]int64     `json:"born"`
	Watermark int64                `json:"watermark"`
	Clock     int64                `json:"clock"`
	Stats     Stats                `json:"stats"`
	Devices   map[string]*devState `json:"devices"`
}

// MarshalState returns everything the evaluator remembers (device states,
// the fences' ages, the watermark), to be given to RestoreState of an
// evaluator built with the same rule set. The rule set itself is not in
// it: the engine keeps rule sets by version beside its snapshots.
func (e *Evaluator) MarshalState() ([]byte, error) {
	b, err := json.Marshal(stateDoc{Version: e.version, Born: e.born, Watermark: e.watermark, Clock: e.clock, Stats: e.stats, Devices: e.devices})
	if err != nil {
		return nil, fmt.Errorf("marshal evaluator state: %w", err)
	}
	return b, nil
}

// RestoreState replaces the evaluator's state with one MarshalState wrote.
// The evaluator must hold the rule set of the same version (the state's
// fence references are by id; fences gone since are dropped).
func (e *Evaluator) RestoreState(b []byte) error {
	var doc stateDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("%w: %w", ErrState, err)
	}
	if doc.Version != e.version {
		return fmt.Errorf("%w: state of rule set version %d, evaluator holds version %d", ErrState, doc.Version, e.version)
	}
	if doc.Devices == nil {
		doc.Devices = map[string]*devState{}
	}
	for id, born := range doc.Born {
		if _, ok := e.born[id]; ok {
			e.born[id] = born
		}
	}
	for id, d := range doc.Devices {
		if d == nil {
			delete(doc.Devices, id)
			continue
		}
		d.Fleet, d.Class = e.intern(d.Fleet), e.intern(d.Class)
		e.remapFences(d)
		if d.Branch != nil {
			d.Branch.late = true
			e.remapFences(d.Branch)
		}
		if d.Gap != nil && d.Gap.State != nil {
			e.remapFences(d.Gap.State)
		}
	}
	e.devices, e.watermark, e.clock, e.stats = doc.Devices, doc.Watermark, doc.Clock, doc.Stats
	return nil
}
