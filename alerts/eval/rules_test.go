package eval

import (
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// speeds feeds one reading a second with the given speeds (km/h), moving
// east so that the fixes agree with the speed.
func speeds(dev string, from uint64, startSec float64, kmh []float32, opts ...opt) []*telemetry.EnrichedRecord {
	var out []*telemetry.EnrichedRecord
	x := 0.0
	for i, v := range kmh {
		x += float64(v) / 3.6
		o := append([]opt{speed(v), offset(x, 0)}, opts...)
		out = append(out, rec(dev, from+uint64(i), startSec+float64(i), o...))
	}
	return out
}

func repeat(v float32, n int) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func concat(parts ...[]float32) []float32 {
	var out []float32
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func TestOverspeed(t *testing.T) {
	rs := func() *RuleSet { return only([]string{KindOverspeed}) }
	cases := []struct {
		name  string
		class string
		kmh   []float32
		want  []string
		check func(t *testing.T, r *run)
	}{
		{name: "under the limit plus tolerance", class: "car", kmh: repeat(124, 60)},
		{name: "over, but shorter than the minimum duration", class: "car", kmh: concat(repeat(100, 5), repeat(140, 10), repeat(100, 20))},
		{name: "one episode with start, end, duration and peak", class: "car",
			kmh:  concat(repeat(100, 5), repeat(130, 10), repeat(150, 10), repeat(130, 10), repeat(100, 20)),
			want: []string{"overspeed:raised", "overspeed:cleared"},
			check: func(t *testing.T, r *run) {
				raised, cleared := r.events[0].Alert, r.events[1].Alert
				if secAt(raised.StartMs) != 5 || secAt(raised.RaisedMs) != 20 {
					t.Errorf("raised: start %v raised %v, want 5 and 20 (15 s minimum)", secAt(raised.StartMs), secAt(raised.RaisedMs))
				}
				if secAt(cleared.EndMs) != 35 || cleared.DurationMs != 30_000 || cleared.Peak != 150 || cleared.Threshold != 120 {
					t.Errorf("cleared: end %v duration %d peak %v threshold %v, want 35, 30000, 150, 120",
						secAt(cleared.EndMs), cleared.DurationMs, cleared.Peak, cleared.Threshold)
				}
				if raised.ID != cleared.ID || cleared.State != StateCleared || raised.State != StateActive {
					t.Errorf("ids %s %s states %s %s", raised.ID, cleared.ID, raised.State, cleared.State)
				}
				if cleared.FirstSeq != 6 || cleared.LastSeq != 35 {
					t.Errorf("seq range %d-%d, want 6-35", cleared.FirstSeq, cleared.LastSeq)
				}
			}},
		{name: "a dip shorter than clear_after does not split the episode", class: "car",
			kmh:  concat(repeat(130, 20), repeat(110, 5), repeat(130, 20), repeat(100, 15)),
			want: []string{"overspeed:raised", "overspeed:cleared"}},
		{name: "a dip longer than clear_after does", class: "car",
			kmh:  concat(repeat(130, 20), repeat(110, 12), repeat(130, 20), repeat(100, 15)),
			want: []string{"overspeed:raised", "overspeed:cleared", "overspeed:raised", "overspeed:cleared"}},
		{name: "a truck's limit is 80", class: "truck", kmh: concat(repeat(95, 30), repeat(70, 15)),
			want: []string{"overspeed:raised", "overspeed:cleared"},
			check: func(t *testing.T, r *run) {
				if a := r.events[1].Alert; a.Threshold != 80 || a.Severity != Major {
					t.Errorf("threshold %v severity %s, want 80 major", a.Threshold, a.Severity)
				}
			}},
		{name: "still speeding at the end: raised, not cleared", class: "car", kmh: repeat(140, 30),
			want: []string{"overspeed:raised"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRun(t, rs()).feed(speeds("v1", 1, 0, tc.kmh, class(tc.class))...)
			r.want(tc.want...)
			if tc.check != nil {
				tc.check(t, r)
			}
		})
	}
}

func TestOverspeedPerFleetAndClass(t *testing.T) {
	rs := only([]string{KindOverspeed},
		Rule{ID: "acme", Kind: KindOverspeed, Fleet: "acme", Settings: raw(`{"limit_kmh":100}`), Severity: Critical},
		Rule{ID: "acme-bus", Kind: KindOverspeed, Fleet: "acme", Class: "bus", Settings: raw(`{"limit_kmh":70}`)},
		Rule{ID: "bus", Kind: KindOverspeed, Class: "bus", Settings: raw(`{"limit_kmh":90,"min_duration":"5s"}`)},
	)
	for _, tc := range []struct {
		fleet, class string
		kmh          float32
		rule         string
		limit        float64
		sev          Severity
	}{
		{"acme", "car", 110, "acme", 100, Critical},        // the fleet's rule over the built-in class default
		{"acme", "bus", 80, "acme-bus", 70, Critical},      // the fleet's class rule; severity from the fleet rule
		{"beta", "bus", 100, "bus", 90, Major},             // the class rule
		{"beta", "car", 130, "only-overspeed", 120, Major}, // the built-in class default under the global rule (which sets nothing)
	} {
		r := newRun(t, rs).feed(speeds("v1", 1, 0, repeat(tc.kmh, 20), fleet(tc.fleet), class(tc.class))...)
		ev := r.of(TypeOverspeed)
		if len(ev) != 1 {
			t.Fatalf("%s/%s: %d overspeed events, want 1\n%s", tc.fleet, tc.class, len(ev), r.dump())
		}
		if a := ev[0].Alert; a.Rule != tc.rule || a.Threshold != tc.limit || a.Severity != tc.sev {
			t.Errorf("%s/%s: rule %s limit %v severity %s, want %s %v %s", tc.fleet, tc.class, a.Rule, a.Threshold, a.Severity,
				tc.rule, tc.limit, tc.sev)
		}
	}
	// The bus rule's min_duration (5 s) survives the fleet class rule that
	// does not set it: settings merge field by field.
	r := newRun(t, rs).feed(speeds("v1", 1, 0, repeat(80, 8), fleet("acme"), class("bus"))...)
	if ev := r.of(TypeOverspeed); len(ev) != 1 || secAt(ev[0].Alert.RaisedMs) != 5 {
		t.Fatalf("merged min_duration: %s", r.dump())
	}
}

func TestSpeedZone(t *testing.T) {
	rs := only([]string{KindOverspeed, KindGeofence})
	rs.Geofences = []Fence{{ID: "town", Geometry: square(1000, 0, 1200), SpeedLimit: 60}}
	// 70 km/h through a 60 km/h zone: the zone limit applies once the
	// vehicle is confirmed inside (hysteresis), and the 120 km/h limit
	// outside.
	var recs []*telemetry.EnrichedRecord
	x := 0.0
	for i := range 120 {
		x += 70 / 3.6
		recs = append(recs, rec("v1", uint64(i+1), float64(i), speed(70), offset(x, 0)))
	}
	r := newRun(t, rs).feed(recs...)
	r.want("overspeed:raised", "overspeed:cleared")
	a := r.events[1].Alert
	if a.Threshold != 60 {
		t.Errorf("threshold %v, want the zone's 60", a.Threshold)
	}
	// Enters at x=400 m (t≈20 s) + 3 fixes to confirm, leaves at 1600 m
	// (t≈82 s): the episode is inside.
	// The zone's limit applies from the fix after the entry is confirmed:
	// 20 m (the margin) inside at ~21 s, plus 5 s.
	if s := secAt(a.StartMs); s < 21 || s > 28 {
		t.Errorf("start %v s, want just after the entry at ~21-27 s", s)
	}
	if e := secAt(a.EndMs); e < 82 || e > 100 {
		t.Errorf("end %v s, want after the exit at ~82 s", e)
	}
}

func TestHarsh(t *testing.T) {
	rs := only([]string{KindHarshAccel, KindHarshBrake, KindHarshCorner})
	t.Run("braking from fixes", func(t *testing.T) {
		// 90 → 60 km/h in one second: 8.3 m/s².
		r := newRun(t, rs).feed(speeds("v1", 1, 0, []float32{90, 90, 60, 58, 56})...)
		r.want("harsh_braking:instant")
		if a := r.events[0].Alert; a.Peak < 8.3 || a.Peak > 8.4 || secAt(a.StartMs) != 2 {
			t.Errorf("peak %v at %v s, want 8.33 m/s² at 2 s", a.Peak, secAt(a.StartMs))
		}
	})
	t.Run("acceleration from fixes", func(t *testing.T) {
		newRun(t, rs).feed(speeds("v1", 1, 0, []float32{20, 20, 40, 42})...).want("harsh_acceleration:instant")
	})
	t.Run("gentle braking", func(t *testing.T) {
		newRun(t, rs).feed(speeds("v1", 1, 0, []float32{90, 80, 70, 60, 50, 40})...).want()
	})
	t.Run("fixes too far apart say nothing", func(t *testing.T) {
		newRun(t, rs).feed(rec("v1", 1, 0, speed(90)), rec("v1", 2, 10, speed(0))).want()
	})
	t.Run("cooldown", func(t *testing.T) {
		newRun(t, rs).feed(speeds("v1", 1, 0, []float32{90, 60, 90, 60, 90, 60})...).want(
			"harsh_braking:instant", "harsh_acceleration:instant")
	})
	t.Run("cornering from fixes", func(t *testing.T) {
		// 50 km/h turning 30° in a second: 13.9 m/s × 0.52 rad/s = 7.3 m/s².
		newRun(t, rs).feed(rec("v1", 1, 0, speed(50), heading(0)), rec("v1", 2, 1, speed(50), heading(30))).want(
			"harsh_cornering:instant")
	})
	t.Run("cornering slowly is not harsh", func(t *testing.T) {
		newRun(t, rs).feed(rec("v1", 1, 0, speed(10), heading(0)), rec("v1", 2, 1, speed(10), heading(90))).want()
	})
	t.Run("from the accelerometer, not from fixes too", func(t *testing.T) {
		newRun(t, rs).feed(
			rec("v1", 1, 0, speed(90), extra("accel_long_ms2", -0.5)),
			rec("v1", 2, 1, speed(60), extra("accel_long_ms2", -5.2)),
			rec("v1", 3, 2, speed(60), extra("accel_lat_ms2", 6), heading(10)),
			rec("v1", 4, 3, speed(10)), // a big speed drop but the device has an accelerometer
		).want("harsh_braking:instant", "harsh_cornering:instant")
	})
}

func TestVehicleHealth(t *testing.T) {
	series := func(o func(float32) opt, vals ...float32) []*telemetry.EnrichedRecord {
		var out []*telemetry.EnrichedRecord
		for i, v := range vals {
			out = append(out, rec("v1", uint64(i+1), float64(i*10), o(v), ign(true)))
		}
		return out
	}
	cases := []struct {
		name, kind string
		class      string
		recs       []*telemetry.EnrichedRecord
		want       []string
		peak       float64
	}{
		{"overheat 30 s and more", KindOverheat, "car", series(temp, 95, 106, 108, 112, 109, 104, 101, 99, 98, 97),
			[]string{"engine_overheat:raised", "engine_overheat:cleared"}, 112},
		{"overheat, but briefly", KindOverheat, "car", series(temp, 95, 108, 106, 101, 100, 99, 98), nil, 0},
		{"redline", KindRPM, "car", series(rpm, 3000, 4800, 5000, 4000, 3000), []string{"rpm_redline:raised", "rpm_redline:cleared"}, 5000},
		{"a truck's redline is lower", KindRPM, "truck", series(rpm, 1800, 2500, 2400, 1900, 1900), []string{"rpm_redline:raised", "rpm_redline:cleared"}, 2500},
		{"air pressure low", KindAirPressure, "truck", series(air, 800, 500, 450, 480, 700, 720, 730),
			[]string{"air_pressure_low:raised", "air_pressure_low:cleared"}, 450},
		{"battery low (24 V truck)", KindBatteryLow, "truck", series(battery, 27, 23, 22.8, 22.9, 23, 23.1, 23, 23, 23, 23, 23, 23, 23, 23, 23, 23, 26, 27, 27, 27, 27, 27, 27, 27),
			[]string{"battery_low:raised", "battery_low:cleared"}, 22.8},
		{"12 V is fine for a car", KindBatteryLow, "car", series(battery, 12.5, 12.2, 12.4, 12.3, 12.2, 12.2, 12.2, 12.2, 12.2, 12.2, 12.2, 12.2, 12.2), nil, 0},
		{"battery high", KindBatteryHigh, "car", series(battery, 14, 15.5, 15.6, 15.5, 15.8, 15.5, 15.5, 15.5, 14, 14, 14, 14, 14, 14, 14),
			[]string{"battery_high:raised", "battery_high:cleared"}, 15.8},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rs := only([]string{tc.kind})
			for _, x := range tc.recs {
				class(tc.class)(x)
			}
			r := newRun(t, rs).feed(tc.recs...)
			r.want(tc.want...)
			if len(r.events) == 2 {
				if got := r.events[1].Alert.Peak; float32(got) != float32(tc.peak) {
					t.Errorf("peak %v, want %v", got, tc.peak)
				}
			}
		})
	}
	t.Run("air pressure with the ignition off is not an alarm", func(t *testing.T) {
		rs := only([]string{KindAirPressure})
		var recs []*telemetry.EnrichedRecord
		for i := range 10 {
			recs = append(recs, rec("v1", uint64(i+1), float64(i*10), air(300), ign(false), class("truck")))
		}
		newRun(t, rs).feed(recs...).want()
	})
}

func TestIdling(t *testing.T) {
	rs := only([]string{KindIdling})
	var recs []*telemetry.EnrichedRecord
	seq := uint64(0)
	add := func(fromSec, toSec int, o ...opt) {
		for s := fromSec; s < toSec; s += 30 {
			seq++
			recs = append(recs, rec("v1", seq, float64(s), o...))
		}
	}
	add(0, 60, speed(50), ign(true))
	add(60, 60+15*60, speed(0), ign(true)) // 15 min idling
	add(60+15*60, 60+16*60, speed(30), ign(true))
	add(60+16*60, 60+30*60, speed(0), ign(false)) // parked, engine off
	r := newRun(t, rs).feed(recs...)
	r.want("idling:raised", "idling:cleared")
	raised, cleared := r.events[0].Alert, r.events[1].Alert
	if secAt(raised.StartMs) != 60 || secAt(raised.RaisedMs) != 660 {
		t.Errorf("raised: start %v raised %v, want 60 and 660", secAt(raised.StartMs), secAt(raised.RaisedMs))
	}
	if cleared.DurationMs != 15*60*1000 {
		t.Errorf("duration %v, want 15 min", time.Duration(cleared.DurationMs)*time.Millisecond)
	}
}

func TestIgnition(t *testing.T) {
	off := only(nil)
	newRun(t, off).feed(rec("v1", 1, 0, ign(false)), rec("v1", 2, 1, ign(true))).want()
	on := only([]string{KindIgnition})
	newRun(t, on).feed(
		rec("v1", 1, 0, ign(false)), // the first reading is the state, not a change
		rec("v1", 2, 1, ign(true)),
		rec("v1", 3, 2),            // says nothing about the ignition
		rec("v1", 4, 3, ign(true)), // no change
		rec("v1", 5, 4, ign(false)),
	).want("ignition_on:instant", "ignition_off:instant")
}

func TestFuelDrop(t *testing.T) {
	rs := only([]string{KindFuelDrop})
	series := func(moving bool, pcts ...float32) []*telemetry.EnrichedRecord {
		var out []*telemetry.EnrichedRecord
		for i, p := range pcts {
			o := []opt{fuelPct(p), speed(0), ign(false)}
			if moving {
				o = []opt{fuelPct(p), speed(80), ign(true)}
			}
			out = append(out, rec("v1", uint64(i+1), float64(i*60), o...))
		}
		return out
	}
	t.Run("drained while parked", func(t *testing.T) {
		r := newRun(t, rs).feed(series(false, 60, 60, 59, 55, 51, 48, 45, 44, 44, 44)...)
		r.want("fuel_drop:instant")
		if a := r.events[0].Alert; a.Peak < 8 || secAt(a.StartMs) != 0 {
			t.Errorf("drop %v from %v s, want ≥ 8 from 0 s", a.Peak, secAt(a.StartMs))
		}
	})
	t.Run("burnt while driving", func(t *testing.T) {
		newRun(t, rs).feed(series(true, 60, 58, 55, 52, 50, 47, 45)...).want()
	})
	t.Run("refuelled while parked", func(t *testing.T) {
		newRun(t, rs).feed(series(false, 20, 20, 40, 60, 80, 95, 95)...).want()
	})
	t.Run("a slow drift is not theft", func(t *testing.T) {
		var pcts []float32
		for i := range 60 {
			pcts = append(pcts, 60-float32(i)*0.2) // 12 points in an hour
		}
		newRun(t, rs).feed(series(false, pcts...)...).want()
	})
}

func TestImplausibleFix(t *testing.T) {
	rs := only([]string{KindImplausible, KindOverspeed, KindGeofence})
	rs.Geofences = []Fence{{ID: "far", Geometry: square(50_000, 0, 2000)}}
	r := newRun(t, rs).feed(
		rec("v1", 1, 0, offset(0, 0), speed(50)),
		rec("v1", 2, 1, offset(14, 0), speed(50)),
		rec("v1", 3, 2, offset(50_000, 0), speed(250)), // 50 km in a second, into the fence
		rec("v1", 4, 3, offset(50_014, 0), speed(250)), // agrees with the jump, not with the last good fix
		rec("v1", 5, 4, offset(42, 0), speed(50)),      // back where the vehicle really is
		rec("v1", 6, 5, offset(56, 0), speed(50)),
	)
	r.want("implausible_fix:instant")
	if a := r.events[0].Alert; a.Peak < 100_000 || a.FirstSeq != 3 {
		t.Errorf("peak %v km/h seq %d, want ≥ 100000 km/h at seq 3", a.Peak, a.FirstSeq)
	}
	// Three implausible fixes that agree with each other are believed.
	r = newRun(t, only([]string{KindImplausible})).feed(
		rec("v1", 1, 0, offset(0, 0)),
		rec("v1", 2, 100, offset(80_000, 0)),
		rec("v1", 3, 101, offset(80_010, 0)),
		rec("v1", 4, 102, offset(80_020, 0)),
		rec("v1", 5, 103, offset(80_030, 0)),
	)
	r.want("implausible_fix:instant")
	if d := r.e.devices["v1"]; d.FixMs != base+102_000 && d.FixMs != base+103_000 {
		t.Errorf("last good fix at %v s, want the re-anchored one", secAt(d.FixMs))
	}
}

func TestSilence(t *testing.T) {
	rs := only([]string{KindSilence})
	t.Run("by the clock, then back online", func(t *testing.T) {
		r := newRun(t, rs).feed(rec("v1", 1, 0), rec("v2", 1, 0))
		// v2 keeps talking (the watermark moves); v1 says nothing.
		for s := 60; s <= 11*60; s += 60 {
			r.feed(rec("v2", uint64(s/60+1), float64(s)))
			r.tick(base + int64(s)*1000 + 500)
		}
		r.want("silence:raised")
		if a := r.events[0].Alert; a.Device != "v1" || a.StartMs != base+200 || a.Late {
			t.Errorf("silence %+v, want v1 from its last receive time, not late", a)
		}
		r.feed(rec("v1", 2, 700))
		r.want("silence:raised", "silence:cleared")
		if a := r.events[1].Alert; a.EndMs != base+700_200 || a.DurationMs != 700_000 {
			t.Errorf("cleared at %v after %v, want 700.2 s and 700 s", secAt(a.EndMs), a.DurationMs)
		}
	})
	t.Run("nothing arrives at all: an outage upstream, not a silence", func(t *testing.T) {
		r := newRun(t, rs).feed(rec("v1", 1, 0), rec("v2", 1, 0))
		for s := 60; s <= 3600; s += 60 {
			r.tick(base + int64(s)*1000)
		}
		r.want()
		// When data flows again it shows who really was silent: v2 came
		// back at once (its readings were delayed upstream, received in
		// time), v1 only after 50 min.
		r.feed(rec("v2", 2, 30, recvAt(base+31_000)), rec("v1", 2, 3000))
		r.want("silence:raised", "silence:cleared")
		if a := r.events[1].Alert; a.Device != "v1" || !a.Late {
			t.Errorf("%+v: want v1's silence, late", a)
		}
	})
	t.Run("parked with the ignition off is not silent", func(t *testing.T) {
		r := newRun(t, rs).feed(rec("v1", 1, 0, ign(false)), rec("v2", 1, 0))
		for s := 60; s <= 3600; s += 60 {
			r.feed(rec("v2", uint64(s/60+1), float64(s)))
			r.tick(base + int64(s)*1000)
		}
		r.want()
	})
}
