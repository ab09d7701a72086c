package eval

import (
	"math"
)

// ctx is one evaluation of one reading for one device state (the main one
// or a late stretch's).
type ctx struct {
	e    *Evaluator
	id   string
	d    *devState
	p    *Profile
	r    *reading
	emit Emit
}

// step evaluates reading r on state d: every rule, then d moves to r.
func (e *Evaluator) step(id string, d *devState, r *reading, emit Emit) {
	e.stats.Readings++
	c := &ctx{e: e, id: id, d: d, p: e.profile(d), r: r, emit: emit}
	good := true
	if r.has(hasFix) {
		good = c.checkFix()
	}
	c.ignition()
	c.harsh(good)
	if good {
		c.overspeed()
	}
	c.health()
	c.idling()
	c.fuel()
	if r.has(hasFix) && good {
		c.fences()
	}
	if r.has(hasSpeed) && good {
		d.SpeedMs, d.Speed = r.TimeMs, r.Speed
		d.HasHeading = r.has(hasHead)
		d.Head = r.Head
	}
	if r.has(hasIgn) {
		d.Ign = 0
		if r.Ign {
			d.Ign = 1
		}
	}
	if r.has(hasAccLon) || r.has(hasAccLat) {
		d.Accel = true
	}
	d.Seq = r.Seq
	d.TimeMs = max(d.TimeMs, r.TimeMs)
}

// newAlert starts an alert of typ under the rule of kind, begun at startMs
// with the reading firstSeq, raised by the reading being evaluated.
func (c *ctx) newAlert(typ, kind string, startMs int64, firstSeq uint64) *Alert {
	rule, sev, _ := c.p.Rule(kind)
	a := &Alert{ID: AlertID(typ, "", c.id, startMs), Type: typ, Rule: rule, Device: c.id, Fleet: c.d.Fleet,
		Class: c.d.Class, Severity: sev, State: StateActive, StartMs: startMs, RaisedMs: c.r.TimeMs,
		FirstSeq: firstSeq, LastSeq: c.r.Seq}
	c.position(a)
	a.DelayMs = c.r.RecvMs - c.r.TimeMs
	a.Late = c.d.late || a.DelayMs > c.e.opts.LateAfter.Milliseconds()
	return a
}

// position puts the reading's position, or the last good fix, on a.
func (c *ctx) position(a *Alert) {
	switch {
	case c.r.has(hasFix):
		a.Lat, a.Lon, a.HasPos = float64(c.r.Lat)/1e7, float64(c.r.Lon)/1e7, true
	case c.d.FixMs != 0:
		a.Lat, a.Lon, a.HasPos = float64(c.d.Lat)/1e7, float64(c.d.Lon)/1e7, true
	}
}

func (c *ctx) send(kind string, a *Alert, atMs int64) {
	a.describe()
	c.e.stats.Events++
	ev := Event{Kind: kind, AtMs: atMs, DetectedMs: c.r.RecvMs, Alert: *a}
	if c.emit != nil {
		c.emit(&ev)
	}
}

// raise emits a's raised event.
func (c *ctx) raise(a *Alert) { c.send(EventRaised, a, a.RaisedMs) }

// instant emits a single-event alert (over as it happens).
func (c *ctx) instant(a *Alert) {
	a.State, a.EndMs = StateCleared, a.StartMs
	c.send(EventInstant, a, a.RaisedMs)
}

// clearAlert emits the cleared event of raised alert a, ended at endMs by
// the reading endSeq; reason is "" when the condition ended by itself.
func (c *ctx) clearAlert(raised *Alert, endMs int64, endSeq uint64, reason string) {
	a := *raised
	a.State, a.EndMs, a.EndReason = StateCleared, max(endMs, a.StartMs), reason
	a.DurationMs = a.EndMs - a.StartMs
	if endSeq > a.LastSeq {
		a.LastSeq = endSeq
	}
	c.send(EventCleared, &a, a.EndMs)
}

// clearEpisode emits the cleared event of a raised episode with its peak.
func (c *ctx) clearEpisode(ep *episode, endMs int64, endSeq uint64, reason string) {
	a := *ep.Alert
	a.Peak = float64(ep.Peak)
	a.LastSeq = ep.LastSeq // the last reading over the threshold
	c.clearAlert(&a, endMs, 0, reason)
}

// episodeRule is how one threshold rule steps its episode.
type episodeRule struct {
	typ, kind string
	// over: the condition holds at this reading; clear: it clearly does
	// not (beyond the hysteresis). Neither: no change.
	over, clear bool
	value       float64
	lower       bool // the peak is the lowest value (under-threshold rules)
	threshold   float64
	unit        string
	minMs       int64
	clearMs     int64
}

// stepEpisode advances the episode in slot with one observation: it
// starts when the condition first holds, is raised once it has held
// minMs, and ends once it has clearly not held for clearMs (an episode
// that ends before it is raised is forgotten).
func (c *ctx) stepEpisode(slot **episode, er episodeRule) {
	t, seq := c.r.TimeMs, c.r.Seq
	ep := *slot
	switch {
	case er.over:
		if ep == nil {
			ep = &episode{StartMs: t, FirstSeq: seq, Peak: float32(er.value)}
			*slot = ep
		}
		ep.BelowMs, ep.BelowSeq = 0, 0
		ep.LastMs, ep.LastSeq = t, seq
		if (er.lower && float32(er.value) < ep.Peak) || (!er.lower && float32(er.value) > ep.Peak) {
			ep.Peak = float32(er.value)
		}
		if !ep.Raised && t-ep.StartMs >= er.minMs {
			a := c.newAlert(er.typ, er.kind, ep.StartMs, ep.FirstSeq)
			a.Value, a.Peak, a.Threshold, a.Unit = er.value, float64(ep.Peak), er.threshold, er.unit
			ep.Raised, ep.Alert = true, a
			c.raise(a)
		}
	case er.clear && ep != nil:
		if ep.BelowMs == 0 {
			ep.BelowMs, ep.BelowSeq = t, seq
		}
		if t-ep.BelowMs >= er.clearMs {
			if ep.Raised {
				c.clearEpisode(ep, ep.BelowMs, ep.BelowSeq, "")
			}
			*slot = nil
		}
	}
}

// checkFix decides whether the reading's fix is plausible: not a jump
// from the last good fix faster than a vehicle moves. An implausible fix
// is flagged (an alert per cooldown) and kept out of the geofence and
// speed rules; three implausible fixes in a row that agree with each
// other are believed (the vehicle did move: a ferry, a tow, a long gap
// without fix).
func (c *ctx) checkFix() bool {
	d, r := c.d, c.r
	s := c.p.implausible
	accept := func() bool {
		d.FixMs, d.Lat, d.Lon, d.RejN = r.TimeMs, r.Lat, r.Lon, 0
		return true
	}
	if s == nil || d.FixMs == 0 {
		return accept()
	}
	jump := func(lat, lon int32, ms int64) (float64, bool) {
		dist := distanceM(lat, lon, r.Lat, r.Lon)
		if dist <= s.MinDistanceM {
			return 0, false
		}
		dt := float64(r.TimeMs-ms) / 1000
		if dt <= 0 {
			return math.Inf(1), true
		}
		kmh := dist / dt * 3.6
		return kmh, kmh > s.MaxSpeedKmh
	}
	kmh, bad := jump(d.Lat, d.Lon, d.FixMs)
	if !bad {
		return accept()
	}
	if d.RejN > 0 {
		if _, bad2 := jump(d.RejLat, d.RejLon, d.RejMs); !bad2 {
			d.RejN++
			if d.RejN >= 3 {
				return accept()
			}
		} else {
			d.RejN = 1
		}
	} else {
		d.RejN = 1
	}
	d.RejMs, d.RejLat, d.RejLon = r.TimeMs, r.Lat, r.Lon
	c.e.stats.Implausible++
	if r.TimeMs >= d.ImplNext {
		a := c.newAlert(TypeImplausible, KindImplausible, r.TimeMs, r.Seq)
		if math.IsInf(kmh, 1) {
			kmh = 0 // a jump with no time: no speed to show
		}
		a.Value, a.Peak, a.Threshold, a.Unit = distanceM(d.Lat, d.Lon, r.Lat, r.Lon), kmh, s.MaxSpeedKmh, "km/h"
		c.instant(a)
		d.ImplNext = r.TimeMs + s.Cooldown.Ms()
	}
	return false
}

// ignition raises ignition on and off at each change the device reports.
func (c *ctx) ignition() {
	r, d := c.r, c.d
	if !r.has(hasIgn) || d.Ign < 0 || !c.p.ignition || (d.Ign == 1) == r.Ign {
		return
	}
	typ := TypeIgnitionOff
	if r.Ign {
		typ = TypeIgnitionOn
	}
	c.instant(c.newAlert(typ, KindIgnition, r.TimeMs, r.Seq))
}

// harsh raises harsh acceleration, braking and cornering: from the
// accelerometer when the device sends one (then never from fixes, so as
// not to count one event twice), else from the speed and heading of this
// reading and the last one with a speed.
func (c *ctx) harsh(good bool) {
	r, d := c.r, c.d
	type cand struct {
		i         int
		typ, kind string
		s         *HarshSettings
		v         float64
	}
	var found []cand
	check := func(i int, typ, kind string, s *HarshSettings, v float64) {
		if s != nil && v >= s.ThresholdMs2 && r.TimeMs >= d.HarshNext[i] {
			found = append(found, cand{i, typ, kind, s, v})
		}
	}
	speedOK := func(s *HarshSettings) bool {
		return s != nil && (s.MinSpeedKmh == 0 || (r.has(hasSpeed) && float64(r.Speed) >= s.MinSpeedKmh))
	}
	if r.has(hasAccLon) || r.has(hasAccLat) || d.Accel {
		if r.has(hasAccLon) {
			a := float64(r.AccLon)
			check(0, TypeHarshAccel, KindHarshAccel, c.p.harshAccel, a)
			check(1, TypeHarshBrake, KindHarshBrake, c.p.harshBrake, -a)
		}
		if r.has(hasAccLat) && speedOK(c.p.harshCor) {
			check(2, TypeHarshCorner, KindHarshCorner, c.p.harshCor, math.Abs(float64(r.AccLat)))
		}
	} else if good && r.has(hasSpeed) && d.SpeedMs != 0 {
		dt := float64(r.TimeMs-d.SpeedMs) / 1000
		if dt > 0 {
			a := (float64(r.Speed) - float64(d.Speed)) / 3.6 / dt
			if s := c.p.harshAccel; s != nil && dt <= s.MaxGap.seconds() {
				check(0, TypeHarshAccel, KindHarshAccel, s, a)
			}
			if s := c.p.harshBrake; s != nil && dt <= s.MaxGap.seconds() {
				check(1, TypeHarshBrake, KindHarshBrake, s, -a)
			}
			if s := c.p.harshCor; s != nil && dt <= s.MaxGap.seconds() && r.has(hasHead) && d.HasHeading {
				dh := math.Mod(float64(r.Head-d.Head)+540, 360) - 180
				v := (float64(r.Speed) + float64(d.Speed)) / 2 / 3.6
				lat := math.Abs(v * dh * math.Pi / 180 / dt)
				if v*3.6 >= s.MinSpeedKmh {
					check(2, TypeHarshCorner, KindHarshCorner, s, lat)
				}
			}
		}
	}
	for _, f := range found {
		a := c.newAlert(f.typ, f.kind, r.TimeMs, r.Seq)
		a.Value, a.Peak, a.Threshold, a.Unit = f.v, f.v, f.s.ThresholdMs2, "m/s²"
		c.instant(a)
		d.HarshNext[f.i] = r.TimeMs + f.s.Cooldown.Ms()
	}
}

func (d Duration) seconds() float64 { return float64(d) / 1e9 }

// overspeed: speed over the limit plus the tolerance; the limit is the
// class's, or the lowest of the speed zones the vehicle is confirmed in.
func (c *ctx) overspeed() {
	s, r := c.p.overspeed, c.r
	if s == nil || !r.has(hasSpeed) {
		return
	}
	limit := s.LimitKmh
	if s.Zones {
		for i := range c.d.Fences {
			fs := &c.d.Fences[i]
			if fs.Inside && fs.fence >= 0 {
				if z := c.e.fences[fs.fence].speedLimit; z > 0 && z < limit {
					limit = z
				}
			}
		}
	}
	v := float64(r.Speed)
	c.stepEpisode(&c.d.Over, episodeRule{typ: TypeOverspeed, kind: KindOverspeed,
		over: v > limit+s.ToleranceKmh, clear: v <= limit, value: v, threshold: limit, unit: "km/h",
		minMs: s.MinDuration.Ms(), clearMs: s.ClearAfter.Ms()})
}

// health: engine temperature, engine speed, air pressure, battery.
func (c *ctx) health() {
	r, d := c.r, c.d
	above := func(slot **episode, typ, kind string, s *ThresholdSettings, bit uint16, v float32, unit string) {
		if s == nil || !r.has(bit) {
			return
		}
		x := float64(v)
		c.stepEpisode(slot, episodeRule{typ: typ, kind: kind, over: x > s.Threshold, clear: x <= s.Threshold-s.Hysteresis,
			value: x, threshold: s.Threshold, unit: unit, minMs: s.MinDuration.Ms(), clearMs: s.ClearAfter.Ms()})
	}
	below := func(slot **episode, typ, kind string, s *ThresholdSettings, bit uint16, v float32, unit string) {
		if s == nil || !r.has(bit) {
			return
		}
		x := float64(v)
		over, clr := x < s.Threshold, x >= s.Threshold+s.Hysteresis
		if s.IgnitionOnly && c.ignitionOff() {
			over, clr = false, true
		}
		c.stepEpisode(slot, episodeRule{typ: typ, kind: kind, over: over, clear: clr, value: x, lower: true,
			threshold: s.Threshold, unit: unit, minMs: s.MinDuration.Ms(), clearMs: s.ClearAfter.Ms()})
	}
	above(&d.Heat, TypeOverheat, KindOverheat, c.p.overheat, hasTemp, r.Temp, "°C")
	above(&d.RPM, TypeRPM, KindRPM, c.p.rpm, hasRPM, r.RPM, "rpm")
	above(&d.BattHi, TypeBatteryHigh, KindBatteryHigh, c.p.battHi, hasBatt, r.Batt, "V")
	below(&d.BattLo, TypeBatteryLow, KindBatteryLow, c.p.battLo, hasBatt, r.Batt, "V")
	below(&d.Air, TypeAirPressure, KindAirPressure, c.p.air, hasAir, r.Air, "kPa")
}

// ignitionOn and ignitionOff say what the reading (or, when it does not
// say, the last one that did) reports.
func (c *ctx) ignitionOn() bool {
	if c.r.has(hasIgn) {
		return c.r.Ign
	}
	return c.d.Ign == 1
}

func (c *ctx) ignitionOff() bool {
	if c.r.has(hasIgn) {
		return !c.r.Ign
	}
	return c.d.Ign == 0
}

// idling: ignition on and standing still for longer than After; it ends
// when the vehicle moves or the ignition goes off.
func (c *ctx) idling() {
	s, r := c.p.idling, c.r
	if s == nil || !r.has(hasSpeed) || (!r.has(hasIgn) && c.d.Ign < 0) {
		return
	}
	on := c.ignitionOn()
	still := float64(r.Speed) <= s.MaxSpeedKmh
	c.stepEpisode(&c.d.Idle, episodeRule{typ: TypeIdling, kind: KindIdling, over: on && still, clear: !on || !still,
		value: float64(r.Speed), threshold: s.After.seconds(), unit: "s", minMs: s.After.Ms()})
	if ep := c.d.Idle; ep != nil {
		ep.Peak = float32(ep.LastMs-ep.StartMs) / 1000 // the idle time so far, s
	}
}

// fuel: the level falling by DropPct within Window while parked. The
// highest level of the window is kept in four samples, one per quarter.
func (c *ctx) fuel() {
	s, r, d := c.p.fuel, c.r, c.d
	if s == nil || !r.has(hasFuel) {
		return
	}
	parked := (r.has(hasSpeed) && float64(r.Speed) <= s.MaxSpeedKmh) || c.ignitionOff()
	if !parked {
		d.Fuel = nil
		return
	}
	f := d.Fuel
	if f == nil {
		f = &fuelState{Parked: true}
		d.Fuel = f
	}
	win := s.Window.Ms()
	pt := fuelPt{Ms: r.TimeMs, Pct: r.Fuel, Seq: r.Seq}
	switch {
	case f.N == 0 || r.TimeMs-f.Samples[f.N-1].Ms >= win/4:
		if int(f.N) == len(f.Samples) {
			copy(f.Samples[:], f.Samples[1:])
			f.N--
		}
		f.Samples[f.N] = pt
		f.N++
	case r.Fuel > f.Samples[f.N-1].Pct:
		f.Samples[f.N-1] = pt
	}
	var ref *fuelPt
	for i := range f.Samples[:f.N] {
		p := &f.Samples[i]
		if r.TimeMs-p.Ms <= win && (ref == nil || p.Pct > ref.Pct) {
			ref = p
		}
	}
	if ref == nil || f.Alerted {
		return
	}
	if drop := float64(ref.Pct - r.Fuel); drop >= s.DropPct {
		a := c.newAlert(TypeFuelDrop, KindFuelDrop, ref.Ms, ref.Seq)
		a.Value, a.Peak, a.Threshold, a.Unit = float64(r.Fuel), drop, s.DropPct, "%"
		c.instant(a)
		f.Alerted = true
	}
}

// silenceAfter is how long without a reading makes d silent (ms; 0
// never).
func (e *Evaluator) silenceAfter(d *devState) int64 {
	s := e.profile(d).silence
	if s == nil {
		return 0
	}
	if d.Ign == 0 {
		return s.AfterParked.Ms()
	}
	return s.After.Ms()
}

// raiseSilence raises the silence of d, which has not been heard since
// d.RecvMs. Silence times are received times (the server's clock): it is
// the platform that does not hear the device.
func (e *Evaluator) raiseSilence(id string, d *devState, after, nowMs int64, emit Emit) {
	c := &ctx{e: e, id: id, d: d, p: e.profile(d), emit: emit, r: &reading{Seq: d.Seq, TimeMs: d.RecvMs + after, RecvMs: nowMs}}
	a := c.newAlert(TypeSilence, KindSilence, d.RecvMs, d.Seq)
	a.DelayMs, a.Late = 0, false
	a.Threshold, a.Unit = float64(after)/1000, "s"
	d.Silence = a
	c.raise(a)
}

// heard is told of every reading a device sends, in order or not: it ends
// the device's silence ("back online"), and reports a silence that only
// the data shows (the engine was down or behind: raised and cleared at
// once, late).
func (e *Evaluator) heard(id string, d *devState, r *reading, emit Emit) {
	if d.Silence != nil {
		c := &ctx{e: e, id: id, d: d, p: e.profile(d), emit: emit, r: r}
		c.clearAlert(d.Silence, r.RecvMs, r.Seq, "")
		d.Silence = nil
	} else if d.RecvMs > 0 {
		if after := e.silenceAfter(d); after > 0 && r.RecvMs-d.RecvMs >= after {
			c := &ctx{e: e, id: id, d: d, p: e.profile(d), emit: emit,
				r: &reading{Seq: d.Seq, TimeMs: d.RecvMs + after, RecvMs: r.RecvMs}}
			a := c.newAlert(TypeSilence, KindSilence, d.RecvMs, d.Seq)
			a.DelayMs = r.RecvMs - a.RaisedMs
			a.Late = a.DelayMs > e.opts.LateAfter.Milliseconds()
			a.Threshold, a.Unit = float64(after)/1000, "s"
			c.raise(a)
			c.r = r
			c.clearAlert(a, r.RecvMs, r.Seq, "")
		}
	}
	d.RecvMs = max(d.RecvMs, r.RecvMs)
}
