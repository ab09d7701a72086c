package influx

import (
	"bytes"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// fuzzNow is the server clock of FuzzValidReadingEncodes, fixed so that the
// seeds stay valid.
var fuzzNow = time.Date(2025, 11, 23, 12, 0, 0, 0, time.UTC)

// FuzzValidReadingEncodes: every reading of a frame the frontend accepts
// encodes as one line of line protocol, with nothing left out: one field per
// value it carries, no line break but the last. (That InfluxDB takes every
// such line is TestRealInfluxStoresEveryValidRecord's part.)
func FuzzValidReadingEncodes(f *testing.F) {
	ms := fuzzNow.UnixMilli()
	for _, u := range []*telemetry.Uplink{
		{Readings: []*telemetry.Reading{{Seq: 1, TimeMs: ms}}},
		{Readings: []*telemetry.Reading{{Seq: telemetry.MaxSeq, TimeMs: ms, Extra: map[string]float64{"a b,c=d": 1, "é\"#": -0.5, "x": 1e308}}}},
		{Readings: []*telemetry.Reading{{Seq: 7, TimeMs: ms, LatE7: ptr(int32(-900000000)), LonE7: ptr(int32(1800000000)),
			SpeedKmh: ptr(float32(400)), Satellites: ptr(uint32(64)), Ignition: ptr(false), OdometerKm: ptr(1e8)}}},
		// Refused by the frontend today; a seed so that a regression shows at once.
		{Readings: []*telemetry.Reading{{Seq: 1, TimeMs: ms, Extra: map[string]float64{`tail\`: 1}}}},
		{Readings: []*telemetry.Reading{{Seq: 1, TimeMs: ms, Extra: map[string]float64{"a\nb": 2}}}},
		{Readings: []*telemetry.Reading{{Seq: telemetry.MaxSeq + 1, TimeMs: ms}}},
	} {
		b, err := telemetry.EncodeUplink(u, false)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := telemetry.DecodeUplink(data, false, fuzzNow, telemetry.DefaultLimits())
		if err != nil {
			return
		}
		dropped := 0
		e := newEncoder("telemetry", func(n int) { dropped += n })
		for _, r := range u.Readings {
			rec := &telemetry.EnrichedRecord{Record: &telemetry.Record{DeviceId: "d", ReceivedMs: fuzzNow.UnixMilli(), Reading: r}}
			line, err := e.appendRecord(nil, rec)
			if err != nil {
				t.Fatalf("valid reading not encoded: %v\n%v", err, r)
			}
			if dropped != 0 {
				t.Fatalf("valid reading lost %d values: %q", dropped, line)
			}
			if bytes.IndexByte(line, '\n') != len(line)-1 {
				t.Fatalf("line break inside the line: %q", line)
			}
			if got, want := countFields(line), fieldsOf(r); got != want {
				t.Fatalf("%d fields in %q, want %d", got, line, want)
			}
		}
	})
}

func ptr[T any](v T) *T { return &v }

// fieldsOf is the number of fields a valid reading's point has: seq, lag_ms
// and received_ms, and one per value it carries (a position is two).
func fieldsOf(r *telemetry.Reading) int {
	n := 3 + len(r.Extra)
	if r.LatE7 != nil {
		n += 2
	}
	for _, present := range []bool{r.AltitudeM != nil, r.HeadingDeg != nil, r.SpeedKmh != nil, r.Satellites != nil,
		r.Ignition != nil, r.EngineTempC != nil, r.EngineRpm != nil, r.FuelLevelPct != nil, r.OdometerKm != nil,
		r.BatteryVoltageV != nil, r.BatteryCurrentA != nil, r.PneumaticPressureKpa != nil} {
		if present {
			n++
		}
	}
	return n
}

// countFields counts the unescaped '=' of the field set of one line: the
// part between the first and the last unescaped space (field keys escape
// ' ', ',' and '='; values are numbers and booleans).
func countFields(line []byte) int {
	var spaces []int
	for i := 0; i < len(line); i++ {
		switch line[i] {
		case '\\':
			i++
		case ' ':
			spaces = append(spaces, i)
		}
	}
	if len(spaces) != 2 {
		return -1
	}
	n := 0
	for i := spaces[0] + 1; i < spaces[1]; i++ {
		switch line[i] {
		case '\\':
			i++
		case '=':
			n++
		}
	}
	return n
}
