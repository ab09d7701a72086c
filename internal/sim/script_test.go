package sim

import (
	"math"
	"testing"
)

// TestScriptedTrip: a scripted vehicle drives its legs: the speeds, the
// harsh braking, the overheat and the idling are in its readings, and a
// silent leg takes none.
func TestScriptedTrip(t *testing.T) {
	off := false
	brake := 20.0
	sc := &Script{Start: [2]float64{-26, 28}, Class: "truck", Legs: []Leg{
		{Do: LegDrive, Seconds: 20, HeadingDeg: 90, SpeedKmh: 60},
		{Do: LegDrive, Seconds: 10, HeadingDeg: 90, SpeedKmh: 60, BrakeTo: &brake},
		{Do: LegStop, Seconds: 10, EngineTempC: 112},
		{Do: LegSilent, Seconds: 5},
		{Do: LegStop, Seconds: 5, Ignition: &off},
	}}
	if err := sc.Validate(); err != nil {
		t.Fatal(err)
	}
	v := newScripted(sc)
	var got []sample
	for range 50 {
		if v.silentNext(1) {
			continue
		}
		var s sample
		v.step(1, &s)
		got = append(got, s)
	}
	if len(got) != 45 {
		t.Fatalf("%d readings in 50 s with 5 silent, want 45", len(got))
	}
	if got[19].speedKmh != 60 || got[0].speedKmh != 3 {
		t.Errorf("speeds: first %v, at 20 s %v; want 3 (3 km/h a second) and 60", got[0].speedKmh, got[19].speedKmh)
	}
	if got[28].speedKmh != 20 || got[27].speedKmh != 60 {
		t.Errorf("harsh braking: %v then %v, want 60 then 20", got[27].speedKmh, got[28].speedKmh)
	}
	if got[30].speedKmh != 0 || !got[30].ignition || got[30].engTempC != 112 {
		t.Errorf("idling hot: %+v", got[30])
	}
	if last := got[44]; last.ignition || last.speedKmh != 0 {
		t.Errorf("parked: %+v", last)
	}
	// From 1 s to 20 s, ramping 6 to 60 km/h east: 174 m.
	dLon := float64(got[19].lonE7-got[0].lonE7) / 1e7 * 111_320 * math.Cos(26*math.Pi/180)
	if dLon < 165 || dLon > 185 || got[19].latE7 != got[0].latE7 {
		t.Errorf("moved %.0f m east (lat %d → %d), want 174 m due east", dLon, got[0].latE7, got[19].latE7)
	}
}
