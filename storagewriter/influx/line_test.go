package influx

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

func TestEncodeFullRecord(t *testing.T) {
	tm := time.UnixMilli(1_763_900_000_123)
	e := newEncoder("telemetry", nil)
	got, err := e.appendRecord(nil, fullRecord("truck-1", 1_000_042, tm))
	if err != nil {
		t.Fatal(err)
	}
	want := "telemetry,class=truck,device=truck-1,fleet=acme,region=rhone " +
		"seq=1000042i,lag_ms=250i,received_ms=1763900000373i,lat=45.7640434,lon=4.8356728," +
		"altitude_m=173.4,heading_deg=187.25,speed_kmh=87.6,satellites=11i,ignition=true," +
		"engine_temp_c=88.5,engine_rpm=1450,fuel_level_pct=63.2,odometer_km=412873.4," +
		"battery_voltage_v=27.6,battery_current_a=-12.4,pneumatic_pressure_kpa=815," +
		"x_cargo_temp_c=-18,x_tyre.fl-kpa=830.5 " +
		"1763900000123000042\n"
	if string(got) != want {
		t.Errorf("line:\n got %q\nwant %q", got, want)
	}
}

func TestEncodeMinimalRecord(t *testing.T) {
	e := newEncoder("my telemetry,v1", nil)
	got, err := e.appendRecord([]byte("prefix\n"), minimalRecord("d", 7, time.UnixMilli(5)))
	if err != nil {
		t.Fatal(err)
	}
	if want := "prefix\nmy\\ telemetry\\,v1,device=d seq=7i 5000007\n"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestTimestamp(t *testing.T) {
	for _, tc := range []struct {
		ms   int64
		seq  uint64
		want int64
	}{
		{1_000, 1, 1_000_000_001},
		{1_000, 999_999, 1_000_999_999},
		{1_000, 1_000_000, 1_000_000_000}, // a million readings in one ms: the one collision left
		{1_000, 1_234_567, 1_000_234_567},
		{-1, 5, -999_995},
	} {
		if got := Timestamp(tc.ms, tc.seq); got != tc.want {
			t.Errorf("Timestamp(%d, %d) = %d, want %d", tc.ms, tc.seq, got, tc.want)
		}
	}
	// Distinct sequences in one millisecond never share a point, nor spill
	// into the next millisecond.
	if Timestamp(7, 41) == Timestamp(7, 42) || Timestamp(7, 999_999) >= Timestamp(8, 0) {
		t.Error("sequence does not separate points within a millisecond")
	}
}

func TestTagEscaping(t *testing.T) {
	for in, want := range map[string]string{
		"plain":      "plain",
		"a,b=c d":    `a\,b\=c\ d`,
		`back\slash`: `back\slash`,
		"ünïcode":    "ünïcode",
	} {
		got, err := appendTagValue(nil, "fleet", in)
		if err != nil || string(got) != want {
			t.Errorf("appendTagValue(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// What line protocol would have to change is refused, never replaced:
	// "tail\\" written as "tail_" met the device "tail_" (issue 14).
	for _, in := range []string{"tab\there", "line\nbreak", `trailing\`, "del\x7f", "c1\u0085"} {
		got, err := appendTagValue([]byte("x"), "device", in)
		if !errors.Is(err, errEncode) || string(got) != "x" {
			t.Errorf("appendTagValue(%q) = %q, %v; want errEncode and the buffer unchanged", in, got, err)
		}
	}
}

func TestExtraField(t *testing.T) {
	for in, want := range map[string]string{
		"tyre.fl-kpa": "x_tyre.fl-kpa",
		"CargoTemp":   "x_CargoTemp",
		"a b,c=d":     "x_a b,c=d",
		"ü":           "x_ü",
	} {
		if got := ExtraField(in); got != want {
			t.Errorf("ExtraField(%q) = %q, want %q", in, got, want)
		}
	}
	if got := string(appendExtraField(nil, "a b,c=d")); got != `x_a\ b\,c\=d` {
		t.Errorf("escaped field key %q", got)
	}
}

// TestEncodeKeepsExtraKeysApart: keys that a sanitising writer would have
// merged ("a.b", "a-b", "a_b" all as x_a_b) are three fields.
func TestEncodeKeepsExtraKeysApart(t *testing.T) {
	dropped := 0
	e := newEncoder("telemetry", func(n int) { dropped += n })
	r := minimalRecord("d", 1, time.UnixMilli(1))
	r.Record.Reading.Extra = map[string]float64{"a.b": 1, "a-b": 2, "a_b": 3, "a b": 4, "é": 5}
	got, err := e.appendRecord(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	if want := `telemetry,device=d seq=1i,x_a\ b=4,x_a-b=2,x_a.b=1,x_a_b=3,x_é=5 1000001` + "\n"; string(got) != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if dropped != 0 {
		t.Errorf("dropped %d values", dropped)
	}
}

func TestEncodeDropsWhatLineProtocolCannotCarry(t *testing.T) {
	dropped := 0
	e := newEncoder("telemetry", func(n int) { dropped += n })
	r := minimalRecord("d", 1, time.UnixMilli(1))
	r.Record.Reading.SpeedKmh = f32(float32(math.Inf(1)))
	r.Record.Reading.OdometerKm = f64(math.NaN())
	r.Record.Reading.EngineRpm = f32(1e6)
	// Only a record from before the frontend refused these can carry them.
	r.Record.Reading.Extra = map[string]float64{"ok": 1, `tail\`: 2, "a\nb": 3, "nan": math.NaN()}
	got, err := e.appendRecord(nil, r)
	if err != nil {
		t.Fatal(err)
	}
	if want := "telemetry,device=d seq=1i,engine_rpm=1e+06,x_ok=1 1000001\n"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if dropped != 5 {
		t.Errorf("dropped %d values, want 5", dropped)
	}
}

func TestEncodeRefuses(t *testing.T) {
	e := newEncoder("telemetry", nil)
	for name, rec := range map[string]*telemetry.EnrichedRecord{
		"nil record":      {},
		"no reading":      {Record: &telemetry.Record{DeviceId: "d"}},
		"no device":       minimalRecord("", 1, time.UnixMilli(1)),
		"seq 2^63":        {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{Seq: telemetry.MaxSeq + 1, TimeMs: 1}}},
		"huge seq":        {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{Seq: math.MaxUint64, TimeMs: 1}}},
		"time too far":    {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{Seq: 1, TimeMs: math.MaxInt64 / 1000}}},
		"time past max":   {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{Seq: 1, TimeMs: telemetry.MaxTimeMs + 1}}},
		"time before min": {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{Seq: 1, TimeMs: telemetry.MinTimeMs - 1}}},
		"device tail\\":   minimalRecord(`tail\`, 1, time.UnixMilli(1)),
		"fleet newline": {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{Seq: 1, TimeMs: 1}},
			Enrichment: &telemetry.Enrichment{Fleet: "a\nb"}},
	} {
		got, err := e.appendRecord([]byte("x"), rec)
		if err == nil || string(got) != "x" {
			t.Errorf("%s: got %q, %v; want the buffer unchanged and an error", name, got, err)
		}
	}
}

// TestEncodeTimeBounds: the extreme times validation lets through encode to
// timestamps InfluxDB accepts (±(2^63 − 2) ns), whatever the seq.
func TestEncodeTimeBounds(t *testing.T) {
	e := newEncoder("telemetry", nil)
	for _, c := range []struct {
		ms   int64
		seq  uint64
		want string
	}{
		{telemetry.MaxTimeMs, telemetry.MaxSeq, " 9223372036853775807\n"},
		{telemetry.MaxTimeMs, 999_999, " 9223372036853999999\n"},
		{telemetry.MinTimeMs, 1_000_000, " -9223372036854000000\n"},
	} {
		got, err := e.appendRecord(nil, minimalRecord("d", c.seq, time.UnixMilli(c.ms)))
		if err != nil || !strings.HasSuffix(string(got), c.want) {
			t.Errorf("time_ms %d seq %d: %q, %v; want it to end in %q", c.ms, c.seq, got, err, c.want)
		}
	}
}

func TestEncodeIsDeterministic(t *testing.T) {
	e := newEncoder("telemetry", nil)
	r := fullRecord("d", 3, time.UnixMilli(1))
	for i := range 20 {
		r.Record.Reading.Extra[strings.Repeat("k", i+1)] = float64(i)
	}
	first, _ := e.appendRecord(nil, r)
	for range 20 {
		if again, _ := e.appendRecord(nil, r); string(again) != string(first) {
			t.Fatalf("same record, different lines:\n%s\n%s", first, again)
		}
	}
}
