package eval

import (
	"slices"

	"github.com/golang/geo/s2"
)

// fences evaluates the reading's fix against the fences that concern it:
// those the device is in or crossing (its fence states), those the shape
// index finds around the fix, and those checked for the device whatever
// the position (corridors, fences with "outside" alarms).
func (c *ctx) fences() {
	e, d, r := c.e, c.d, c.r
	if _, _, on := c.p.Rule(KindGeofence); !on || len(e.fences) == 0 {
		return
	}
	ll := s2.LatLngFromDegrees(float64(r.Lat)/1e7, float64(r.Lon)/1e7)
	pt := s2.PointFromLatLng(ll)
	cell := s2.CellIDFromLatLng(ll).Parent(cacheLevel)
	if d.cell != cell || d.cellGen != e.gen {
		d.cell, d.cellGen, d.near = cell, e.gen, e.index.near(cell)
	}
	cands := e.index.containing(pt, d.near, e.fences)
	for i := range d.Fences {
		fs := &d.Fences[i]
		if fs.fence < 0 || e.fences[fs.fence] == nil {
			continue
		}
		c.stepFence(fs, e.fences[fs.fence], pt, slices.Contains(cands, fs.fence))
	}
	consider := func(fi int32, inIndex bool) {
		if c.tracked(fi) {
			return
		}
		f := e.fences[fi]
		if !f.applies(c.id, d.Fleet, d.Class) {
			return
		}
		c.newFence(f, pt, inIndex)
	}
	for _, fi := range cands {
		consider(fi, true)
	}
	for _, list := range [][]int32{e.byDevice[c.id], e.byFleet[d.Fleet], e.byFleet[""]} {
		for _, fi := range list {
			consider(fi, slices.Contains(cands, fi))
		}
	}
	// Forget the fences the device is simply outside of.
	kept := d.Fences[:0]
	for _, fs := range d.Fences {
		if fs.Inside || fs.PendN > 0 || fs.Dwell != nil || fs.InsideA != nil || fs.Outside != nil ||
			(fs.fence >= 0 && e.fences[fs.fence] != nil && e.fences[fs.fence].events&evOutside != 0) {
			kept = append(kept, fs)
		}
	}
	clear(d.Fences[len(kept):])
	if len(kept) == 0 {
		kept = nil
	}
	d.Fences = kept
	d.FixGen, d.Fenced = e.version, true
}

func (c *ctx) tracked(fi int32) bool {
	for i := range c.d.Fences {
		if c.d.Fences[i].fence == fi {
			return true
		}
	}
	return false
}

// hysteresis returns the fence's margin (m), confirming fixes and
// confirming time (ms), its own or the profile's.
func (c *ctx) hysteresis(f *compiledFence) (float64, int, int64) {
	g := c.p.geofence
	m, n, t := g.MarginM, g.ConfirmFixes, g.ConfirmTime.Ms()
	if f.hyst.MarginM != nil {
		m = *f.hyst.MarginM
	}
	if f.hyst.ConfirmFixes != nil {
		n = *f.hyst.ConfirmFixes
	}
	if f.hyst.ConfirmTime != nil {
		t = f.hyst.ConfirmTime.Ms()
	}
	return m, n, t
}

// newFence starts following a fence the device has no standing with. A
// device seen for the first time, or a fence it was never evaluated
// against (new, or its geometry changed), takes the side the fix is on
// with no enter or exit (nothing was crossed that we know of), and the
// state alarms (inside, outside, dwell) follow that side. Otherwise the
// device was outside, and a fix clearly inside starts an entry to confirm.
func (c *ctx) newFence(f *compiledFence, pt s2.Point, inIndex bool) {
	d, r := c.d, c.r
	margin, _, _ := c.hysteresis(f)
	var hint int32
	inside, clearSide := f.side(pt, margin, inIndex, true, &hint)
	initial := !d.Fenced || c.e.born[f.id] > d.FixGen || f.events&evOutside != 0
	if initial {
		if !inside && f.events&evOutside == 0 {
			return
		}
		fs := fenceState{ID: f.id, fence: f.idx, Inside: inside, SinceMs: r.TimeMs, SinceSeq: r.Seq, hint: hint}
		c.stateAlarms(&fs, f)
		d.Fences = append(d.Fences, fs)
		return
	}
	if !inside || !clearSide {
		return
	}
	d.Fences = append(d.Fences, fenceState{ID: f.id, fence: f.idx, SinceMs: d.FixMs, SinceSeq: d.Seq, hint: hint})
	fs := &d.Fences[len(d.Fences)-1]
	c.pend(fs, f)
}

// stepFence advances a device's standing with a fence by one fix. A fix
// on the other side, at least the margin from the boundary, counts
// towards a crossing; a clear fix on the confirmed side cancels it; a fix
// within the margin does neither. The crossing is confirmed after
// ConfirmFixes such fixes spanning ConfirmTime, and dated at the first.
func (c *ctx) stepFence(fs *fenceState, f *compiledFence, pt s2.Point, inIndex bool) {
	margin, _, _ := c.hysteresis(f)
	// Whether the fix is clear of the boundary matters only when it is on
	// the other side, or a crossing is pending (a clear fix cancels it).
	inside, clearSide := f.side(pt, margin, inIndex, false, &fs.hint)
	if f.shape == ShapePolygon && (inside != fs.Inside || fs.PendN > 0) {
		_, clearSide = f.side(pt, margin, inIndex, true, &fs.hint)
	}
	switch {
	case inside == fs.Inside:
		if clearSide {
			fs.PendN = 0
		}
	case clearSide:
		c.pend(fs, f)
	}
	c.dwell(fs, f)
}

// pend counts one fix towards a crossing, and makes it when confirmed.
func (c *ctx) pend(fs *fenceState, f *compiledFence) {
	r := c.r
	_, n, t := c.hysteresis(f)
	if fs.PendN == 0 {
		fs.PendMs, fs.PendSeq, fs.PendLat, fs.PendLon = r.TimeMs, r.Seq, r.Lat, r.Lon
	}
	if fs.PendN < 0xffff {
		fs.PendN++
	}
	if int(fs.PendN) < n || r.TimeMs-fs.PendMs < t {
		return
	}
	c.cross(fs, f)
}

// fenceAlert starts an alert about fence f, dated at startMs.
func (c *ctx) fenceAlert(typ string, f *compiledFence, startMs int64, firstSeq uint64, lat, lon int32) *Alert {
	a := c.newAlert(typ, KindGeofence, startMs, firstSeq)
	a.ID = AlertID(typ, f.id, c.id, startMs)
	a.Fence, a.FenceName = f.id, f.name
	if f.severity != "" {
		a.Severity = f.severity
	}
	if f.speedLimit > 0 {
		a.Threshold, a.Unit = f.speedLimit, "km/h"
	}
	a.Lat, a.Lon, a.HasPos = float64(lat)/1e7, float64(lon)/1e7, true
	return a
}

// cross confirms the crossing pending on fs: the device is now on the
// other side since the first fix there.
func (c *ctx) cross(fs *fenceState, f *compiledFence) {
	at, seq := fs.PendMs, fs.PendSeq
	entering := !fs.Inside
	if entering {
		if f.events&evEnter != 0 {
			c.instant(c.fenceAlert(TypeGeofenceEnter, f, at, seq, fs.PendLat, fs.PendLon))
		}
	} else if f.events&evExit != 0 {
		c.instant(c.fenceAlert(TypeGeofenceExit, f, at, seq, fs.PendLat, fs.PendLon))
	}
	for _, a := range []**Alert{&fs.Dwell, &fs.InsideA, &fs.Outside} {
		if *a != nil {
			c.clearAlert(*a, at, seq, "")
			*a = nil
		}
	}
	fs.Inside, fs.SinceMs, fs.SinceSeq, fs.PendN = entering, at, seq, 0
	lat, lon := fs.PendLat, fs.PendLon
	fs.PendMs, fs.PendSeq, fs.PendLat, fs.PendLon = 0, 0, 0, 0
	c.stateAlarmsAt(fs, f, lat, lon)
}

// stateAlarms raises the inside or outside alarm of the side fs is on.
func (c *ctx) stateAlarms(fs *fenceState, f *compiledFence) {
	c.stateAlarmsAt(fs, f, c.r.Lat, c.r.Lon)
}

func (c *ctx) stateAlarmsAt(fs *fenceState, f *compiledFence, lat, lon int32) {
	switch {
	case fs.Inside && f.events&evInside != 0:
		fs.InsideA = c.fenceAlert(TypeGeofenceInside, f, fs.SinceMs, fs.SinceSeq, lat, lon)
		c.raise(fs.InsideA)
	case !fs.Inside && f.events&evOutside != 0:
		fs.Outside = c.fenceAlert(TypeGeofenceOutside, f, fs.SinceMs, fs.SinceSeq, lat, lon)
		c.raise(fs.Outside)
	}
	c.dwell(fs, f)
}

// dwell raises the dwell alarm once the device has been inside longer
// than the fence's dwell time.
func (c *ctx) dwell(fs *fenceState, f *compiledFence) {
	if !fs.Inside || fs.Dwell != nil || f.events&evDwell == 0 {
		return
	}
	limit := f.dwellMs
	if limit == 0 {
		limit = c.p.geofence.Dwell.Ms()
	}
	if c.r.TimeMs-fs.SinceMs < limit {
		return
	}
	a := c.fenceAlert(TypeGeofenceDwell, f, fs.SinceMs, fs.SinceSeq, c.r.Lat, c.r.Lon)
	a.Threshold, a.Unit = float64(limit)/1000, "s"
	fs.Dwell = a
	c.raise(a)
}
