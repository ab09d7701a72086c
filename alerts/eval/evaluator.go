package eval

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// Emit receives the events an evaluation produces, in order. It must not
// keep ev beyond the call (copy what it needs).
type Emit func(ev *Event)

// Options are the evaluator's time semantics (docs/alerts.md, "Time").
type Options struct {
	// LateAfter: an alert revealed by a reading that reached a frontend
	// longer than this after it was taken is marked late.
	LateAfter time.Duration
	// ReorderWindow: a reading that comes after a gap in its device's
	// seqs waits this long (on the engine's clock: its ticks) for the
	// missing ones, so that readings crossing on two routers, or resent by
	// a router after a lost message (5 s), are evaluated in order. 0: no
	// waiting.
	ReorderWindow time.Duration
	// ReorderMax bounds the readings a device may have waiting.
	ReorderMax int
	// BranchIdle ends a late stretch (readings that fill a gap the
	// evaluation went over) when none came for this long.
	BranchIdle time.Duration
	// GapKeep is how long a gap can still be filled by a late stretch.
	GapKeep time.Duration
}

// DefaultOptions returns the defaults of every option.
func DefaultOptions() Options {
	return Options{LateAfter: time.Minute, ReorderWindow: 10 * time.Second, ReorderMax: 256,
		BranchIdle: 2 * time.Minute, GapKeep: 6 * time.Hour}
}

// Stats counts what the evaluator did with what it was given.
type Stats struct {
	Readings    uint64 // evaluated, in order or in a late stretch
	Late        uint64 // of which in a late stretch
	Duplicates  uint64 // a seq already evaluated (or too old to place)
	Invalid     uint64 // no device id or no reading
	Held        uint64 // waited for a gap to fill
	Gaps        uint64 // gaps the evaluation went over
	Implausible uint64
	Events      uint64
}

// Evaluator evaluates every rule of a rule set for every device, in device
// time order, one reading at a time. It is deterministic: the same rule set
// changes, readings and ticks, in the same order, give the same events; the
// engine's crash safety rests on that (alerts/doc.go). It is not safe for
// concurrent use.
type Evaluator struct {
	opts Options

	version  int64 // the rule set's version
	gen      uint64
	rs       *RuleSet
	fences   []*compiledFence // by index; nil once gone (until the next compaction)
	dead     int
	byID     map[string]int32
	fenceKey map[string]string // fence id → its whole definition
	born     map[string]int64  // fence id → rule set version it appeared in
	geomKey  map[string]string // fence id → what its geometry was made of
	index    *fenceIndex
	byDevice map[string][]int32 // fences checked for a device without the index
	byFleet  map[string][]int32 // likewise for a fleet ("" every fleet)
	profiles map[string]*Profile

	devices   map[string]*devState
	watermark int64 // the highest received time evaluated
	clock     int64 // the last tick's time
	strs      map[string]string
	stats     Stats
}

// New returns an evaluator with rule set rs (nil: no rules configured,
// the built-in defaults apply).
func New(rs *RuleSet, opts Options) (*Evaluator, error) {
	if opts.ReorderMax <= 0 {
		opts.ReorderMax = 64
	}
	e := &Evaluator{opts: opts, devices: map[string]*devState{}, strs: map[string]string{},
		born: map[string]int64{}, geomKey: map[string]string{}, byID: map[string]int32{}, fenceKey: map[string]string{}}
	if rs == nil {
		rs = &RuleSet{}
	}
	if err := e.compile(rs); err != nil {
		return nil, err
	}
	return e, nil
}

// Version returns the version of the rule set in force.
func (e *Evaluator) Version() int64 { return e.version }

// RuleSet returns the rule set in force.
func (e *Evaluator) RuleSet() *RuleSet { return e.rs }

// Devices returns how many devices the evaluator keeps state for.
func (e *Evaluator) Devices() int { return len(e.devices) }

// Stats returns the counters.
func (e *Evaluator) Stats() Stats { return e.stats }

// compile makes rs the rule set in force. Fences that did not change keep
// their compiled geometry and their place in the shape index; new and
// changed ones are checked and added; the index is rebuilt only when many
// are gone. Nothing changes if rs is invalid.
func (e *Evaluator) compile(rs *RuleSet) error {
	if errs := rs.validateExceptFences(); len(errs) > 0 {
		return errors.Join(errs...)
	}
	keep := make(map[string]int32, len(rs.Geofences))
	keys := make(map[string]string, len(rs.Geofences))
	var added []*compiledFence
	var errs []error
	for i := range rs.Geofences {
		f := &rs.Geofences[i]
		if _, dup := keys[f.ID]; dup {
			errs = append(errs, fmt.Errorf("geofence %q: id used twice", f.ID))
			continue
		}
		key := fenceKey(f)
		keys[f.ID] = key
		if idx, ok := e.byID[f.ID]; ok && e.fenceKey[f.ID] == key {
			keep[f.ID] = idx
			continue
		}
		cf, err := f.Compile()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if cf.events == 0 && cf.speedLimit == 0 {
			continue // neither events nor a speed limit: nothing to do
		}
		// The boundary index now rather than at the first fix near the
		// fence: a fix must not wait for an index to be built.
		if cf.shape != ShapeCircle {
			cf.boundaryQuery()
			cf.boundary.Build()
		}
		added = append(added, cf)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Commit.
	born := make(map[string]int64, len(keys))
	geom := make(map[string]string, len(keys))
	for id, idx := range e.byID {
		if k, ok := keep[id]; !ok || k != idx {
			e.fences[idx] = nil
			e.dead++
		}
	}
	byID := keep
	for _, cf := range added {
		cf.idx = int32(len(e.fences))
		e.fences = append(e.fences, cf)
		byID[cf.id] = cf.idx
	}
	for i := range rs.Geofences {
		f := &rs.Geofences[i]
		if _, ok := byID[f.ID]; !ok {
			continue
		}
		g := geometryKey(f)
		geom[f.ID] = g
		if old, ok := e.geomKey[f.ID]; ok && old == g {
			born[f.ID] = e.born[f.ID]
		} else {
			born[f.ID] = rs.Version
		}
	}
	if e.index == nil || (e.dead > 64 && e.dead > len(e.fences)/4) {
		// Compact: drop the dead, renumber, rebuild the index.
		live := make([]*compiledFence, 0, len(byID))
		for _, f := range e.fences {
			if f != nil {
				f.idx = int32(len(live))
				byID[f.id] = f.idx
				live = append(live, f)
			}
		}
		e.fences, e.dead = live, 0
		e.index = newFenceIndex(live)
	} else {
		e.index.add(added)
	}
	e.byDevice, e.byFleet = map[string][]int32{}, map[string][]int32{}
	for _, cf := range e.fences {
		if cf == nil || (cf.shape != ShapeCorridor && cf.events&evOutside == 0) {
			continue
		}
		if len(cf.devices) > 0 {
			for _, dev := range cf.devices {
				e.byDevice[dev] = append(e.byDevice[dev], cf.idx)
			}
		} else {
			e.byFleet[cf.fleet] = append(e.byFleet[cf.fleet], cf.idx)
		}
	}
	for _, m := range []map[string][]int32{e.byDevice, e.byFleet} {
		for k, list := range m {
			slices.SortFunc(list, func(a, b int32) int { return strings.Compare(e.fences[a].id, e.fences[b].id) })
			m[k] = list
		}
	}
	e.rs, e.version = rs, rs.Version
	e.gen++
	e.byID, e.fenceKey, e.born, e.geomKey = byID, keys, born, geom
	e.profiles = map[string]*Profile{}
	return nil
}

// fenceKey is everything about a fence: one whose key is unchanged keeps
// its compiled form.
func fenceKey(f *Fence) string {
	b, _ := json.Marshal(f)
	return string(b)
}

// geometryKey is what a fence's geometry is made of: a fence whose key
// changes is a new fence for every device.
func geometryKey(f *Fence) string {
	var b bytes.Buffer
	b.Write(bytes.TrimSpace(f.Geometry))
	fmt.Fprintf(&b, "|%g|%g", f.RadiusM, f.WidthM)
	return b.String()
}

// SetRuleSet makes rs the rule set in force. Alerts under way whose rule
// or fence is gone (or now off for their device) are cleared, with end
// reason "rule_removed". An invalid rs is refused and the old one stays.
func (e *Evaluator) SetRuleSet(rs *RuleSet, emit Emit) error {
	if rs == nil {
		rs = &RuleSet{}
	}
	if err := e.compile(rs); err != nil {
		return err
	}
	for id, d := range e.devices {
		e.reconcile(id, d, emit)
		if d.Branch != nil {
			e.reconcile(id, d.Branch, emit)
		}
		if d.Gap != nil && d.Gap.State != nil {
			e.remapFences(d.Gap.State)
		}
	}
	return nil
}

// reconcile ends what the new rule set no longer evaluates for d.
func (e *Evaluator) reconcile(id string, d *devState, emit Emit) {
	p := e.profile(d)
	c := &ctx{e: e, id: id, d: d, p: p, emit: emit, r: &reading{Seq: d.Seq, TimeMs: d.TimeMs, RecvMs: d.RecvMs}}
	end := func(slot **episode, kind string) {
		if *slot == nil {
			return
		}
		if _, _, on := p.Rule(kind); !on {
			if (*slot).Raised {
				c.clearEpisode(*slot, d.TimeMs, d.Seq, "rule_removed")
			}
			*slot = nil
		}
	}
	end(&d.Over, KindOverspeed)
	end(&d.Heat, KindOverheat)
	end(&d.RPM, KindRPM)
	end(&d.Air, KindAirPressure)
	end(&d.BattLo, KindBatteryLow)
	end(&d.BattHi, KindBatteryHigh)
	end(&d.Idle, KindIdling)
	if _, _, on := p.Rule(KindSilence); !on && d.Silence != nil {
		c.clearAlert(d.Silence, d.RecvMs, d.Seq, "rule_removed")
		d.Silence = nil
	}
	_, _, geoOn := p.Rule(KindGeofence)
	kept := d.Fences[:0]
	for i := range d.Fences {
		fs := d.Fences[i]
		idx, ok := e.byID[fs.ID]
		if ok && d.Fenced && e.born[fs.ID] > d.FixGen {
			ok = false // same id, new geometry: a new fence
		}
		if !ok || !geoOn || e.fences[idx] == nil || !e.fences[idx].applies(id, d.Fleet, d.Class) {
			for _, a := range []*Alert{fs.Dwell, fs.InsideA, fs.Outside} {
				if a != nil {
					c.clearAlert(a, d.TimeMs, d.Seq, "rule_removed")
				}
			}
			continue
		}
		fs.fence = idx
		kept = append(kept, fs)
	}
	clear(d.Fences[len(kept):])
	d.Fences = kept
}

// remapFences points a saved state's fences at the new rule set's.
func (e *Evaluator) remapFences(d *devState) {
	kept := d.Fences[:0]
	for _, fs := range d.Fences {
		if idx, ok := e.byID[fs.ID]; ok {
			fs.fence = idx
			kept = append(kept, fs)
		}
	}
	d.Fences = kept
}

// profile returns the device's resolved rules, resolving them when the
// rule set or the device's fleet or class changed.
func (e *Evaluator) profile(d *devState) *Profile {
	if d.prof != nil && d.gen == e.gen {
		return d.prof
	}
	key := d.Fleet + "\x00" + d.Class
	p := e.profiles[key]
	if p == nil {
		var err error
		p, err = resolveProfile(e.rs.Rules, d.Fleet, d.Class)
		if err != nil {
			// Validate resolved every rule alone; a merge that fails is
			// possible only with contradictory layers. Fall back to the
			// built-in defaults rather than stop evaluating.
			p, _ = resolveProfile(nil, d.Fleet, d.Class)
		}
		e.profiles[key] = p
	}
	d.prof, d.gen = p, e.gen
	return p
}

func (e *Evaluator) intern(s string) string {
	if v, ok := e.strs[s]; ok {
		return v
	}
	if len(e.strs) < 1<<16 {
		e.strs[s] = s
	}
	return s
}

// Process evaluates one record (or holds it, to put it in order).
func (e *Evaluator) Process(rec *telemetry.EnrichedRecord, emit Emit) {
	r := rec.GetRecord()
	if r.GetDeviceId() == "" || r.GetReading() == nil || r.GetReading().GetSeq() == 0 {
		e.stats.Invalid++
		return
	}
	id := r.GetDeviceId()
	d := e.devices[id]
	if d == nil {
		id = e.intern(id)
		d = &devState{Ign: -1}
		e.devices[id] = d
	}
	en := rec.GetEnrichment()
	if en.GetFleet() != d.Fleet || en.GetVehicleClass() != d.Class {
		d.Fleet, d.Class = e.intern(en.GetFleet()), e.intern(en.GetVehicleClass())
		d.prof = nil
	}
	rd := readingOf(r, e.profile(d))
	if rd.RecvMs > e.watermark {
		e.watermark = rd.RecvMs
	}
	e.arrive(id, d, rd, emit)
}

// arrive places a reading: in order, held for a gap to fill, in a late
// stretch, or dropped as already evaluated.
func (e *Evaluator) arrive(id string, d *devState, r reading, emit Emit) {
	switch {
	case r.Seq == d.Seq+1:
		e.heard(id, d, &r, emit)
		e.step(id, d, &r, emit)
		e.drainHeld(id, d, emit)
	case r.Seq > d.Seq+1:
		// After a gap, or a device's first reading with a seq above 1: the
		// readings before it may be on their way (another router, a
		// concurrent append): wait for them.
		e.heard(id, d, &r, emit)
		if e.opts.ReorderWindow <= 0 {
			e.overGap(id, d, r, emit)
			return
		}
		i, found := slices.BinarySearchFunc(d.Held, r.Seq, func(h reading, s uint64) int {
			switch {
			case h.Seq < s:
				return -1
			case h.Seq > s:
				return 1
			}
			return 0
		})
		if found {
			e.stats.Duplicates++
			return
		}
		r.HeldAt = e.clock
		d.Held = slices.Insert(d.Held, i, r)
		e.stats.Held++
		for len(d.Held) > e.opts.ReorderMax {
			e.releaseHeld(id, d, emit)
		}
	case r.Seq < d.Seq && d.Gap != nil && r.Seq > d.Gap.After && r.Seq < d.Gap.Before:
		e.heard(id, d, &r, emit)
		e.lateReading(id, d, r, emit)
	default:
		e.stats.Duplicates++
	}
}

// drainHeld evaluates the held readings that are now next in order.
func (e *Evaluator) drainHeld(id string, d *devState, emit Emit) {
	for len(d.Held) > 0 {
		h := d.Held[0]
		switch {
		case h.Seq <= d.Seq:
			e.stats.Duplicates++
		case h.Seq == d.Seq+1:
			e.step(id, d, &h, emit)
		default:
			return
		}
		d.Held = d.Held[1:]
	}
	d.Held = nil
}

// releaseHeld gives up waiting for the gap before the first held reading.
func (e *Evaluator) releaseHeld(id string, d *devState, emit Emit) {
	h := d.Held[0]
	d.Held = d.Held[1:]
	if len(d.Held) == 0 {
		d.Held = nil
	}
	if h.Seq <= d.Seq {
		e.stats.Duplicates++
		return
	}
	e.overGap(id, d, h, emit)
	e.drainHeld(id, d, emit)
}

// overGap evaluates r although the readings before it (after d.Seq) are
// missing, remembering the state before the gap so that a late stretch
// filling it can be evaluated from there.
func (e *Evaluator) overGap(id string, d *devState, r reading, emit Emit) {
	if d.Branch != nil {
		e.endBranch(id, d, emit)
	}
	e.stats.Gaps++
	d.Gap = &gap{After: d.Seq, Before: r.Seq, At: e.clock, State: d.clone()}
	e.step(id, d, &r, emit)
}

// lateReading evaluates a reading that fills the gap the evaluation went
// over, on a branch: the device's state before the gap, carried forward
// by the late stretch alone.
func (e *Evaluator) lateReading(id string, d *devState, r reading, emit Emit) {
	if d.Branch == nil {
		d.Branch = d.Gap.State.clone()
		d.Branch.late = true
	}
	b := d.Branch
	if r.Seq <= b.Seq {
		e.stats.Duplicates++
		return
	}
	e.stats.Late++
	d.BranchRecv, d.BranchAt = max(d.BranchRecv, r.RecvMs), e.clock
	e.step(id, b, &r, emit)
	if b.Seq+1 >= d.Gap.Before {
		e.endBranch(id, d, emit)
		d.Gap = nil
	}
}

// endBranch closes a late stretch: what is under way in it ends at its
// last reading (end reason "stretch_end"): the stretch cannot say what
// happened after. A later reading of the same gap starts from there.
func (e *Evaluator) endBranch(id string, d *devState, emit Emit) {
	b := d.Branch
	if b == nil {
		return
	}
	c := &ctx{e: e, id: id, d: b, p: e.profile(b), emit: emit, r: &reading{Seq: b.Seq, TimeMs: b.TimeMs, RecvMs: d.BranchRecv}}
	for _, slot := range []**episode{&b.Over, &b.Heat, &b.RPM, &b.Air, &b.BattLo, &b.BattHi, &b.Idle} {
		if *slot != nil && (*slot).Raised {
			c.clearEpisode(*slot, b.TimeMs, b.Seq, "stretch_end")
		}
		*slot = nil
	}
	for i := range b.Fences {
		fs := &b.Fences[i]
		for _, a := range []**Alert{&fs.Dwell, &fs.InsideA, &fs.Outside} {
			if *a != nil {
				c.clearAlert(*a, b.TimeMs, b.Seq, "stretch_end")
				*a = nil
			}
		}
	}
	d.Branch, d.BranchRecv, d.BranchAt = nil, 0, 0
	if d.Gap != nil {
		b.late = false
		d.Gap.After, d.Gap.State = b.Seq, b
	}
}

// Tick is the engine's clock, at wall time nowMs: silences (judged against
// the horizon, the earlier of nowMs and the newest received time evaluated,
// so that an outage upstream of the engine silences no one), readings held
// past the reorder window, idle late stretches and old gaps. Waits are
// measured on this clock (the ticks' times), not on the readings' received
// times: an engine catching up on a backlog of old readings still gives a
// gap its whole window.
func (e *Evaluator) Tick(nowMs int64, emit Emit) {
	if e.clock == 0 {
		e.clock = nowMs // what waited before the first tick waits from now
	}
	e.clock = max(e.clock, nowMs)
	horizon := min(nowMs, e.watermark)
	window := e.opts.ReorderWindow.Milliseconds()
	// Waits begun before the first tick are stamped with it.
	since := func(at *int64) int64 {
		if *at == 0 {
			*at = e.clock
		}
		return e.clock - *at
	}
	for id, d := range e.devices {
		for len(d.Held) > 0 && since(&d.Held[0].HeldAt) >= window {
			e.releaseHeld(id, d, emit)
		}
		if d.Branch != nil && since(&d.BranchAt) >= e.opts.BranchIdle.Milliseconds() {
			e.endBranch(id, d, emit)
		}
		if d.Gap != nil && d.Branch == nil && since(&d.Gap.At) >= e.opts.GapKeep.Milliseconds() {
			d.Gap = nil
		}
		if d.Silence == nil && d.RecvMs > 0 {
			if after := e.silenceAfter(d); after > 0 && horizon-d.RecvMs >= after {
				e.raiseSilence(id, d, after, nowMs, emit)
			}
		}
	}
}

// ErrState is what UnmarshalState errors wrap.
var ErrState = errors.New("alerts: bad evaluator state")
