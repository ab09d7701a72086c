package telemetry

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

// testNow is the server clock of the validation tests and the fuzz tests: fixed, so that seeds
// and cases stay valid.
var testNow = time.Date(2025, 11, 23, 12, 0, 0, 0, time.UTC)

func f32(v float32) *float32 { return &v }
func f64(v float64) *float64 { return &v }
func i32(v int32) *int32     { return &v }
func u32(v uint32) *uint32   { return &v }
func bl(v bool) *bool        { return &v }

// typicalReading is a reading with the full sensor set and realistic values: a truck on a
// motorway near Lyon, seq around a million.
func typicalReading(seq uint64, t time.Time) *Reading {
	return &Reading{
		Seq:                  seq,
		TimeMs:               t.UnixMilli(),
		LatE7:                i32(457_640_434),
		LonE7:                i32(48_356_728),
		AltitudeM:            f32(173.4),
		HeadingDeg:           f32(187.25),
		SpeedKmh:             f32(87.6),
		Satellites:           u32(11),
		Ignition:             bl(true),
		EngineTempC:          f32(88.5),
		EngineRpm:            f32(1450),
		FuelLevelPct:         f32(63.2),
		OdometerKm:           f64(412_873.4),
		BatteryVoltageV:      f32(27.6),
		BatteryCurrentA:      f32(-12.4),
		PneumaticPressureKpa: f32(815),
	}
}

// typicalFrame is n consecutive typical readings, one second apart, ending at t.
func typicalFrame(n int, firstSeq uint64, t time.Time) *Uplink {
	u := &Uplink{}
	for i := range n {
		r := typicalReading(firstSeq+uint64(i), t.Add(time.Duration(i-n+1)*time.Second))
		*r.LatE7 += int32(i * 2400)
		*r.OdometerKm += float64(i) * 0.024
		*r.SpeedKmh += float32(i%5) * 0.3
		u.Readings = append(u.Readings, r)
	}
	return u
}

func mustEncode(t testing.TB, u *Uplink, text bool) []byte {
	t.Helper()
	b, err := EncodeUplink(u, text)
	if err != nil {
		t.Fatalf("EncodeUplink(text=%v): %v", text, err)
	}
	return b
}

// asFrameError requires err to be a *FrameError and returns it.
func asFrameError(t testing.TB, err error) *FrameError {
	t.Helper()
	var fe *FrameError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v (%T) is not a *FrameError", err, err)
	}
	return fe
}

func clone(r *Reading) *Reading { return proto.Clone(r).(*Reading) }
