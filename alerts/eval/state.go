package eval

import (
	"math"

	"github.com/golang/geo/s2"

	"github.com/drover-telemetry/drover/telemetry"
)

// reading is what the rules need of one record, compact: held readings
// (reordering) live in the device state and in snapshots.
type reading struct {
	Seq    uint64  `json:"s"`
	TimeMs int64   `json:"t"`
	RecvMs int64   `json:"r"`
	Has    uint16  `json:"h"` // has* bits
	Lat    int32   `json:"la,omitempty"`
	Lon    int32   `json:"lo,omitempty"`
	Speed  float32 `json:"sp,omitempty"` // km/h
	Head   float32 `json:"hd,omitempty"`
	Ign    bool    `json:"ig,omitempty"`
	Temp   float32 `json:"te,omitempty"`
	RPM    float32 `json:"rp,omitempty"`
	Fuel   float32 `json:"fu,omitempty"`
	Batt   float32 `json:"ba,omitempty"`
	Air    float32 `json:"ai,omitempty"`
	AccLon float32 `json:"al,omitempty"` // m/s², forward positive
	AccLat float32 `json:"at,omitempty"` // m/s²
	// HeldAt is the engine's clock (the last tick) when the reading was
	// put on hold for a gap.
	HeldAt int64 `json:"ha,omitempty"`
}

// Bits of reading.Has.
const (
	hasFix uint16 = 1 << iota
	hasSpeed
	hasHead
	hasIgn
	hasTemp
	hasRPM
	hasFuel
	hasBatt
	hasAir
	hasAccLon
	hasAccLat
)

func (r *reading) has(bit uint16) bool { return r.Has&bit != 0 }

// readingOf converts a record's reading, taking the accelerometer from the
// extra keys the profile names.
func readingOf(rec *telemetry.Record, p *Profile) reading {
	rd := rec.GetReading()
	r := reading{Seq: rd.GetSeq(), TimeMs: rd.GetTimeMs(), RecvMs: rec.GetReceivedMs()}
	if rd.HasPosition() {
		r.Has |= hasFix
		r.Lat, r.Lon = rd.GetLatE7(), rd.GetLonE7()
	}
	f32 := func(p *float32, bit uint16, dst *float32) {
		if p != nil && !math.IsNaN(float64(*p)) && !math.IsInf(float64(*p), 0) {
			r.Has |= bit
			*dst = *p
		}
	}
	f32(rd.SpeedKmh, hasSpeed, &r.Speed)
	f32(rd.HeadingDeg, hasHead, &r.Head)
	f32(rd.EngineTempC, hasTemp, &r.Temp)
	f32(rd.EngineRpm, hasRPM, &r.RPM)
	f32(rd.FuelLevelPct, hasFuel, &r.Fuel)
	f32(rd.BatteryVoltageV, hasBatt, &r.Batt)
	f32(rd.PneumaticPressureKpa, hasAir, &r.Air)
	if rd.Ignition != nil {
		r.Has |= hasIgn
		r.Ign = *rd.Ignition
	}
	if x := rd.GetExtra(); len(x) > 0 && p != nil {
		if s := p.Settings(KindHarshBrake).(*HarshSettings); s.ExtraKey != "" {
			if v, ok := x[s.ExtraKey]; ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
				r.Has |= hasAccLon
				r.AccLon = float32(v * s.ExtraScale)
			}
		}
		if s := p.Settings(KindHarshCorner).(*HarshSettings); s.ExtraKey != "" {
			if v, ok := x[s.ExtraKey]; ok && !math.IsNaN(v) && !math.IsInf(v, 0) {
				r.Has |= hasAccLat
				r.AccLat = float32(v * s.ExtraScale)
			}
		}
	}
	return r
}

// episode is an alert in the making or under way: a condition that holds
// from StartMs, raised once it has held long enough, cleared once it has
// stopped holding for long enough.
type episode struct {
	StartMs  int64   `json:"st"`
	FirstSeq uint64  `json:"fs"`
	LastMs   int64   `json:"lm"`
	LastSeq  uint64  `json:"ls"`
	Peak     float32 `json:"pk"`
	// BelowMs is when the condition stopped holding (0 while it holds).
	BelowMs  int64  `json:"bm,omitempty"`
	BelowSeq uint64 `json:"bs,omitempty"`
	Raised   bool   `json:"rd,omitempty"`
	// The alert as raised (what the cleared event repeats).
	Alert *Alert `json:"a,omitempty"`
}

// fenceState is a device's standing with one fence: the side it is
// confirmed on, since when, and a crossing waiting for confirmation.
type fenceState struct {
	ID       string `json:"f"`
	fence    int32  // index in the compiled rule set; -1 once the fence is gone
	hint     int32  // the corridor edge closest at the last fix (a speed-up only)
	Inside   bool   `json:"in,omitempty"`
	SinceMs  int64  `json:"sm"`
	SinceSeq uint64 `json:"ss"`
	// A crossing being confirmed: fixes on the other side beyond the margin.
	PendN   uint16 `json:"pn,omitempty"`
	PendMs  int64  `json:"pm,omitempty"`
	PendSeq uint64 `json:"ps,omitempty"`
	PendLat int32  `json:"pa,omitempty"`
	PendLon int32  `json:"po,omitempty"`
	// The state alarms under way (inside, outside, dwell): their alerts.
	Dwell   *Alert `json:"dw,omitempty"`
	InsideA *Alert `json:"ia,omitempty"`
	Outside *Alert `json:"oa,omitempty"`
}

// devState is everything the engine remembers of one device. It is what
// snapshots hold; most of it is small and fixed, episodes and fences are
// allocated only while under way.
type devState struct {
	Fleet string `json:"fl,omitempty"`
	Class string `json:"cl,omitempty"`
	prof  *Profile
	gen   uint64 // rule set generation prof was resolved in

	Seq    uint64 `json:"sq"` // last evaluated seq (0: none yet)
	TimeMs int64  `json:"tm"` // its device time
	RecvMs int64  `json:"rv"` // the last received time of any reading (silence)
	Ign    int8   `json:"ig"` // ignition of the last reading saying it: -1 unknown, 0 off, 1 on
	Accel  bool   `json:"ac,omitempty"`

	// The last accepted fix (implausible ones are not), and speed/heading
	// of the last reading with them.
	FixMs      int64   `json:"fm,omitempty"`
	Lat        int32   `json:"la,omitempty"`
	Lon        int32   `json:"lo,omitempty"`
	FixGen     int64   `json:"fg,omitempty"` // rule set version of the last fix's fence evaluation
	Fenced     bool    `json:"fd,omitempty"` // a fix was evaluated against the fences (FixGen is set)
	SpeedMs    int64   `json:"vm,omitempty"`
	Speed      float32 `json:"vs,omitempty"`
	Head       float32 `json:"vh,omitempty"`
	HasHeading bool    `json:"vH,omitempty"`

	// Implausible fixes: the last rejected one, how many agreed in a row.
	RejMs    int64 `json:"jm,omitempty"`
	RejLat   int32 `json:"ja,omitempty"`
	RejLon   int32 `json:"jo,omitempty"`
	RejN     uint8 `json:"jn,omitempty"`
	ImplNext int64 `json:"jx,omitempty"` // no implausible-fix alert before this (cooldown)

	HarshNext [3]int64 `json:"hx"` // accel, brake, corner: cooldowns

	Over    *episode   `json:"os,omitempty"`
	Heat    *episode   `json:"oh,omitempty"`
	RPM     *episode   `json:"or,omitempty"`
	Air     *episode   `json:"oa,omitempty"`
	BattLo  *episode   `json:"bl,omitempty"`
	BattHi  *episode   `json:"bh,omitempty"`
	Idle    *episode   `json:"id,omitempty"`
	Silence *Alert     `json:"si,omitempty"`
	Fuel    *fuelState `json:"fu,omitempty"`

	Fences []fenceState `json:"fe,omitempty"`

	// Reordering: readings after a seq gap, waiting for it to fill.
	Held []reading `json:"hr,omitempty"`
	// The last gap the evaluation went over, and the state before it: a
	// late stretch inside the gap is evaluated from there (Branch).
	Gap    *gap      `json:"gp,omitempty"`
	Branch *devState `json:"br,omitempty"`
	// BranchRecv is the received time of the branch's newest reading;
	// BranchAt the engine's clock when it came.
	BranchRecv int64 `json:"bv,omitempty"`
	BranchAt   int64 `json:"ba,omitempty"`
	late       bool  // this state is a branch: every alert is late

	// The fences near the last fix's cell (see fenceIndex.near): derived,
	// not saved.
	cell    s2.CellID
	cellGen uint64
	near    []int32
}

// gap is a hole in a device's seqs that the evaluation went over: from
// After (the last seq before it) to Before (the first after it), with the
// device's state at After.
type gap struct {
	After  uint64    `json:"a"`
	Before uint64    `json:"b"`
	At     int64     `json:"r"` // the engine's clock when the evaluation went over it
	State  *devState `json:"s"`
}

// fuelState follows the fuel level while parked: a few samples spread
// over the window, to find the highest level within it.
type fuelState struct {
	Parked  bool      `json:"p,omitempty"`
	Alerted bool      `json:"a,omitempty"` // an alert this parked period
	Samples [4]fuelPt `json:"s"`
	N       uint8     `json:"n"`
}

type fuelPt struct {
	Ms  int64   `json:"t"`
	Pct float32 `json:"v"`
	Seq uint64  `json:"q"`
}

// clone copies the state for a gap checkpoint: episodes and fence states
// are copied, reordering and branches are not.
func (d *devState) clone() *devState {
	c := *d
	c.Held, c.Gap, c.Branch, c.BranchRecv, c.BranchAt = nil, nil, nil, 0, 0
	for _, p := range []**episode{&c.Over, &c.Heat, &c.RPM, &c.Air, &c.BattLo, &c.BattHi, &c.Idle} {
		if *p != nil {
			e := **p
			*p = &e
		}
	}
	if c.Fuel != nil {
		f := *c.Fuel
		c.Fuel = &f
	}
	c.Fences = append([]fenceState(nil), d.Fences...)
	return &c
}
