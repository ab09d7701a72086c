package telemetry

import (
	"math"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestValidateReadingRules(t *testing.T) {
	lim := DefaultLimits()
	nowMs := testNow.UnixMilli()
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	key := func(n int) string { return strings.Repeat("k", n) }
	extras := func(n int) map[string]float64 {
		m := make(map[string]float64, n)
		for i := range n {
			m["s"+strings.Repeat("x", i)] = float64(i)
		}
		return m
	}

	cases := []struct {
		name      string
		mut       func(r *Reading)
		wantKind  FrameErrorKind // 0: valid
		wantField string
		wantIn    string // substring of Reason
	}{
		{"typical", func(r *Reading) {}, 0, "", ""},
		{"minimal", func(r *Reading) { *r = Reading{Seq: 1, TimeMs: nowMs} }, 0, "", ""},

		{"seq 0", func(r *Reading) { r.Seq = 0 }, KindSequence, "seq", "seq missing"},
		{"seq 1", func(r *Reading) { r.Seq = 1 }, 0, "", ""},
		{"seq 2^63-1", func(r *Reading) { r.Seq = MaxSeq }, 0, "", ""},
		{"seq 2^63", func(r *Reading) { r.Seq = MaxSeq + 1 }, KindSequence, "seq", "seq 9223372036854775808 out of range [1, 9223372036854775807]"},
		{"seq max uint64", func(r *Reading) { r.Seq = math.MaxUint64 }, KindSequence, "seq", "seq 18446744073709551615 out of range"},

		{"time 0", func(r *Reading) { r.TimeMs = 0 }, KindTime, "time_ms", "time_ms missing"},
		{"time at future skew", func(r *Reading) { r.TimeMs = nowMs + lim.MaxFutureSkew.Milliseconds() }, 0, "", ""},
		{"time past future skew", func(r *Reading) { r.TimeMs = nowMs + lim.MaxFutureSkew.Milliseconds() + 1 }, KindTime, "time_ms", "5m0.001s ahead of server time (limit 5m0s)"},
		{"time at max age", func(r *Reading) { r.TimeMs = nowMs - lim.MaxAge.Milliseconds() }, 0, "", ""},
		{"time past max age", func(r *Reading) { r.TimeMs = nowMs - lim.MaxAge.Milliseconds() - 1 }, KindTime, "time_ms", "30.0 days old (limit 30.0 days)"},
		{"time max int64", func(r *Reading) { r.TimeMs = math.MaxInt64 }, KindTime, "time_ms", "ahead"},
		{"time min int64", func(r *Reading) { r.TimeMs = math.MinInt64 }, KindTime, "time_ms", "more than 290 years old"},
		{"time negative", func(r *Reading) { r.TimeMs = -1 }, KindTime, "time_ms", "old"},

		{"no position", func(r *Reading) { r.ClearPosition() }, 0, "", ""},
		{"position 0,0", func(r *Reading) { r.LatE7, r.LonE7 = i32(0), i32(0) }, 0, "", ""},
		{"lat without lon", func(r *Reading) { r.LonE7 = nil }, KindRange, "lon_e7", "lat_e7 without lon_e7"},
		{"lon without lat", func(r *Reading) { r.LatE7 = nil }, KindRange, "lat_e7", "lon_e7 without lat_e7"},
		{"lat 90", func(r *Reading) { r.LatE7 = i32(MaxLatE7) }, 0, "", ""},
		{"lat -90", func(r *Reading) { r.LatE7 = i32(MinLatE7) }, 0, "", ""},
		{"lat above 90", func(r *Reading) { r.LatE7 = i32(MaxLatE7 + 1) }, KindRange, "lat_e7", "latitude 90.0000001 out of range [-90, 90]"},
		{"lat below -90", func(r *Reading) { r.LatE7 = i32(MinLatE7 - 1) }, KindRange, "lat_e7", "latitude -90.0000001 out of range"},
		{"lat 95.1", func(r *Reading) { r.LatE7 = i32(951_000_000) }, KindRange, "lat_e7", "latitude 95.1 out of range"},
		{"lat min int32", func(r *Reading) { r.LatE7 = i32(math.MinInt32) }, KindRange, "lat_e7", "latitude"},
		{"lon 180", func(r *Reading) { r.LonE7 = i32(MaxLonE7) }, 0, "", ""},
		{"lon -180", func(r *Reading) { r.LonE7 = i32(MinLonE7) }, 0, "", ""},
		{"lon above 180", func(r *Reading) { r.LonE7 = i32(MaxLonE7 + 1) }, KindRange, "lon_e7", "longitude 180.0000001 out of range [-180, 180]"},
		{"lon below -180", func(r *Reading) { r.LonE7 = i32(MinLonE7 - 1) }, KindRange, "lon_e7", "longitude"},

		{"altitude -1000", func(r *Reading) { r.AltitudeM = f32(-1000) }, 0, "", ""},
		{"altitude below -1000", func(r *Reading) { r.AltitudeM = f32(-1000.5) }, KindRange, "altitude_m", "altitude_m -1000.5 out of range [-1000, 10000]"},
		{"altitude 10000", func(r *Reading) { r.AltitudeM = f32(10000) }, 0, "", ""},
		{"altitude above 10000", func(r *Reading) { r.AltitudeM = f32(10000.5) }, KindRange, "altitude_m", "out of range"},
		{"altitude NaN", func(r *Reading) { r.AltitudeM = &nan }, KindRange, "altitude_m", "altitude_m is NaN"},
		{"altitude +Inf", func(r *Reading) { r.AltitudeM = &inf }, KindRange, "altitude_m", "altitude_m is infinite"},
		{"altitude -Inf", func(r *Reading) { r.AltitudeM = f32(float32(math.Inf(-1))) }, KindRange, "altitude_m", "infinite"},

		{"heading 0", func(r *Reading) { r.HeadingDeg = f32(0) }, 0, "", ""},
		{"heading just below 360", func(r *Reading) { r.HeadingDeg = f32(math.Nextafter32(360, 0)) }, 0, "", ""},
		{"heading 360", func(r *Reading) { r.HeadingDeg = f32(360) }, KindRange, "heading_deg", "heading_deg 360 out of range [0, 360)"},
		{"heading negative", func(r *Reading) { r.HeadingDeg = f32(-0.01) }, KindRange, "heading_deg", "out of range"},
		{"heading NaN", func(r *Reading) { r.HeadingDeg = &nan }, KindRange, "heading_deg", "NaN"},

		{"speed 0", func(r *Reading) { r.SpeedKmh = f32(0) }, 0, "", ""},
		{"speed -0", func(r *Reading) { r.SpeedKmh = f32(float32(math.Copysign(0, -1))) }, 0, "", ""},
		{"speed 400", func(r *Reading) { r.SpeedKmh = f32(400) }, 0, "", ""},
		{"speed above 400", func(r *Reading) { r.SpeedKmh = f32(400.1) }, KindRange, "speed_kmh", "speed_kmh 400.1 out of range [0, 400]"},
		{"speed negative", func(r *Reading) { r.SpeedKmh = f32(-0.1) }, KindRange, "speed_kmh", "out of range"},
		{"speed Inf", func(r *Reading) { r.SpeedKmh = &inf }, KindRange, "speed_kmh", "infinite"},

		{"satellites 0", func(r *Reading) { r.Satellites = u32(0) }, 0, "", ""},
		{"satellites 64", func(r *Reading) { r.Satellites = u32(64) }, 0, "", ""},
		{"satellites 65", func(r *Reading) { r.Satellites = u32(65) }, KindRange, "satellites", "satellites 65 out of range [0, 64]"},

		{"engine temp -60", func(r *Reading) { r.EngineTempC = f32(-60) }, 0, "", ""},
		{"engine temp below -60", func(r *Reading) { r.EngineTempC = f32(-60.5) }, KindRange, "engine_temp_c", "out of range [-60, 200]"},
		{"engine temp 200", func(r *Reading) { r.EngineTempC = f32(200) }, 0, "", ""},
		{"engine temp above 200", func(r *Reading) { r.EngineTempC = f32(200.5) }, KindRange, "engine_temp_c", "out of range"},
		{"engine temp NaN", func(r *Reading) { r.EngineTempC = &nan }, KindRange, "engine_temp_c", "NaN"},

		{"rpm 0", func(r *Reading) { r.EngineRpm = f32(0) }, 0, "", ""},
		{"rpm 20000", func(r *Reading) { r.EngineRpm = f32(20000) }, 0, "", ""},
		{"rpm above 20000", func(r *Reading) { r.EngineRpm = f32(20001) }, KindRange, "engine_rpm", "engine_rpm 20001 out of range [0, 20000]"},
		{"rpm negative", func(r *Reading) { r.EngineRpm = f32(-1) }, KindRange, "engine_rpm", "out of range"},

		{"fuel 0", func(r *Reading) { r.FuelLevelPct = f32(0) }, 0, "", ""},
		{"fuel 100", func(r *Reading) { r.FuelLevelPct = f32(100) }, 0, "", ""},
		{"fuel above 100", func(r *Reading) { r.FuelLevelPct = f32(100.01) }, KindRange, "fuel_level_pct", "out of range [0, 100]"},
		{"fuel negative", func(r *Reading) { r.FuelLevelPct = f32(-0.01) }, KindRange, "fuel_level_pct", "out of range"},

		{"battery V 0", func(r *Reading) { r.BatteryVoltageV = f32(0) }, 0, "", ""},
		{"battery V 1500", func(r *Reading) { r.BatteryVoltageV = f32(1500) }, 0, "", ""},
		{"battery V above 1500", func(r *Reading) { r.BatteryVoltageV = f32(1500.5) }, KindRange, "battery_voltage_v", "out of range [0, 1500]"},
		{"battery V negative", func(r *Reading) { r.BatteryVoltageV = f32(-0.1) }, KindRange, "battery_voltage_v", "out of range"},

		{"battery A 3000", func(r *Reading) { r.BatteryCurrentA = f32(3000) }, 0, "", ""},
		{"battery A -3000", func(r *Reading) { r.BatteryCurrentA = f32(-3000) }, 0, "", ""},
		{"battery A above 3000", func(r *Reading) { r.BatteryCurrentA = f32(3000.5) }, KindRange, "battery_current_a", "out of range [-3000, 3000]"},
		{"battery A below -3000", func(r *Reading) { r.BatteryCurrentA = f32(-3000.5) }, KindRange, "battery_current_a", "out of range"},

		{"pneumatic 0", func(r *Reading) { r.PneumaticPressureKpa = f32(0) }, 0, "", ""},
		{"pneumatic 2500", func(r *Reading) { r.PneumaticPressureKpa = f32(2500) }, 0, "", ""},
		{"pneumatic above 2500", func(r *Reading) { r.PneumaticPressureKpa = f32(2500.5) }, KindRange, "pneumatic_pressure_kpa", "out of range [0, 2500]"},
		{"pneumatic negative", func(r *Reading) { r.PneumaticPressureKpa = f32(-1) }, KindRange, "pneumatic_pressure_kpa", "out of range"},

		{"odometer 0", func(r *Reading) { r.OdometerKm = f64(0) }, 0, "", ""},
		{"odometer 1e8", func(r *Reading) { r.OdometerKm = f64(MaxOdometerKm) }, 0, "", ""},
		{"odometer above 1e8", func(r *Reading) { r.OdometerKm = f64(MaxOdometerKm + 0.001) }, KindRange, "odometer_km", "out of range [0, 1e8]"},
		{"odometer negative", func(r *Reading) { r.OdometerKm = f64(-0.001) }, KindRange, "odometer_km", "odometer_km -0.001 out of range"},
		{"odometer NaN", func(r *Reading) { r.OdometerKm = f64(math.NaN()) }, KindRange, "odometer_km", "odometer_km is NaN"},
		{"odometer -Inf", func(r *Reading) { r.OdometerKm = f64(math.Inf(-1)) }, KindRange, "odometer_km", "infinite"},

		{"extra max count", func(r *Reading) { r.Extra = extras(lim.MaxExtra) }, 0, "", ""},
		{"extra over count", func(r *Reading) { r.Extra = extras(lim.MaxExtra + 1) }, KindExtra, "extra", "33 extra values, limit 32"},
		{"extra key empty", func(r *Reading) { r.Extra = map[string]float64{"": 1} }, KindExtra, "extra", "extra key empty"},
		{"extra key max len", func(r *Reading) { r.Extra = map[string]float64{key(lim.MaxExtraKeyLen): 1} }, 0, "", ""},
		{"extra key too long", func(r *Reading) { r.Extra = map[string]float64{key(lim.MaxExtraKeyLen + 1): 1} }, KindExtra, "extra", "extra key of 65 bytes, limit 64"},
		{"extra key unicode", func(r *Reading) { r.Extra = map[string]float64{"température_huile": 92} }, 0, "", ""},
		{"extra key bad UTF-8", func(r *Reading) { r.Extra = map[string]float64{"a\xffb": 1} }, KindExtra, "extra", "not valid UTF-8"},
		{"extra key newline", func(r *Reading) { r.Extra = map[string]float64{"a\nb": 1} }, KindExtra, "extra", `extra key "a\nb" has a control character`},
		{"extra key DEL", func(r *Reading) { r.Extra = map[string]float64{"a\x7f": 1} }, KindExtra, "extra", "control character"},
		{"extra key C1", func(r *Reading) { r.Extra = map[string]float64{"a\u0085": 1} }, KindExtra, "extra", "control character"},
		{"extra key trailing backslash", func(r *Reading) { r.Extra = map[string]float64{`tail\`: 1} }, KindExtra, "extra", `extra key "tail\\" has a backslash`},
		{"extra key inner backslash", func(r *Reading) { r.Extra = map[string]float64{`a\,b`: 1} }, KindExtra, "extra", "has a backslash"},
		{"extra key punctuation", func(r *Reading) { r.Extra = map[string]float64{`tyre.fl-kpa:1 "a,b=c" #x/y`: 1} }, 0, "", ""},
		{"extra key 1 byte", func(r *Reading) { r.Extra = map[string]float64{"k": 1} }, 0, "", ""},
		{"extra value huge", func(r *Reading) { r.Extra = map[string]float64{"x": -math.MaxFloat64} }, 0, "", ""},
		{"extra value max", func(r *Reading) { r.Extra = map[string]float64{"x": math.MaxFloat64} }, 0, "", ""},
		{"extra value tiny", func(r *Reading) { r.Extra = map[string]float64{"x": math.SmallestNonzeroFloat64} }, 0, "", ""},
		{"extra value -0", func(r *Reading) { r.Extra = map[string]float64{"x": math.Copysign(0, -1)} }, 0, "", ""},
		{"extra value NaN", func(r *Reading) { r.Extra = map[string]float64{"x": math.NaN()} }, KindRange, "extra", `extra "x" is NaN`},
		{"extra value Inf", func(r *Reading) { r.Extra = map[string]float64{"x": math.Inf(1)} }, KindRange, "extra", `extra "x" is infinite`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := typicalReading(1_000_000, testNow)
			c.mut(r)
			err := ValidateReading(r, testNow, lim)
			if c.wantKind == 0 {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want %v error, got nil", c.wantKind)
			}
			fe := asFrameError(t, err)
			if fe.Kind != c.wantKind || fe.Field != c.wantField || fe.Index != -1 {
				t.Errorf("got kind %v field %q index %d, want kind %v field %q index -1 (%v)",
					fe.Kind, fe.Field, fe.Index, c.wantKind, c.wantField, err)
			}
			if !strings.Contains(fe.Reason, c.wantIn) {
				t.Errorf("reason %q does not contain %q", fe.Reason, c.wantIn)
			}
			if strings.HasPrefix(fe.Reason, "reading") {
				t.Errorf("reason %q of a lone reading names a reading index", fe.Reason)
			}

			// The same reading inside a frame, after a valid one, is refused with its index.
			if c.name == "extra key bad UTF-8" {
				return // protobuf itself refuses invalid UTF-8 in a string: see TestDecodeUplinkMalformed
			}
			u, idx := &Uplink{Readings: []*Reading{{Seq: 1, TimeMs: testNow.UnixMilli()}, r}}, 1
			if r.Seq <= 1 {
				u, idx = &Uplink{Readings: []*Reading{r}}, 0
			}
			_, err = DecodeUplink(mustEncode(t, u, false), false, testNow, lim)
			fe = asFrameError(t, err)
			if fe.Kind != c.wantKind || fe.Index != idx || !strings.HasPrefix(fe.Reason, "reading "+strconv.Itoa(idx)+": ") {
				t.Errorf("in frame: got kind %v index %d reason %q", fe.Kind, fe.Index, fe.Reason)
			}
		})
	}
}

func TestValidateReadingNil(t *testing.T) {
	fe := asFrameError(t, ValidateReading(nil, testNow, DefaultLimits()))
	if fe.Kind != KindMalformed {
		t.Fatalf("kind %v, want malformed", fe.Kind)
	}
}

func TestValidateReadingCustomLimits(t *testing.T) {
	r := typicalReading(5, testNow.Add(-2*time.Hour))
	r.Extra = map[string]float64{"abcd": 1, "efgh": 2}
	if err := ValidateReading(r, testNow, Limits{}); err != nil {
		t.Fatalf("zero Limits must mean DefaultLimits: %v", err)
	}
	for _, c := range []struct {
		lim  Limits
		kind FrameErrorKind
	}{
		{Limits{MaxAge: time.Hour}, KindTime},
		{Limits{MaxFutureSkew: time.Second, MaxAge: 3 * time.Hour}, 0},
		{Limits{MaxExtra: 1}, KindExtra},
		{Limits{MaxExtraKeyLen: 3}, KindExtra},
		{Limits{MaxExtra: 2, MaxExtraKeyLen: 4}, 0},
	} {
		err := ValidateReading(r, testNow, c.lim)
		if c.kind == 0 {
			if err != nil {
				t.Errorf("%+v: %v", c.lim, err)
			}
			continue
		}
		if fe := asFrameError(t, err); fe.Kind != c.kind {
			t.Errorf("%+v: kind %v, want %v", c.lim, fe.Kind, c.kind)
		}
	}
	// Future skew, just past a custom bound.
	r.TimeMs = testNow.Add(1001 * time.Millisecond).UnixMilli()
	if fe := asFrameError(t, ValidateReading(r, testNow, Limits{MaxFutureSkew: time.Second})); fe.Kind != KindTime {
		t.Errorf("kind %v, want time", fe.Kind)
	}
}

func TestDecodeUplinkFrameRules(t *testing.T) {
	lim := Limits{MaxReadingsPerFrame: 3}
	rd := func(seq uint64) *Reading { return &Reading{Seq: seq, TimeMs: testNow.UnixMilli()} }
	frame := func(seqs ...uint64) *Uplink {
		u := &Uplink{}
		for _, s := range seqs {
			u.Readings = append(u.Readings, rd(s))
		}
		return u
	}
	cases := []struct {
		name      string
		u         *Uplink
		wantKind  FrameErrorKind
		wantIndex int
		wantIn    string
	}{
		{"one reading", frame(7), 0, 0, ""},
		{"max readings", frame(1, 2, 3), 0, 0, ""},
		{"gaps in seq", frame(1, 5, 1000), 0, 0, ""},
		{"no readings", frame(), KindEmpty, -1, "frame has no reading"},
		{"too many readings", frame(1, 2, 3, 4), KindTooManyReadings, -1, "4 readings in frame, limit 3"},
		{"equal seqs", frame(1, 2, 2), KindSequence, 2, "reading 2: seq 2 not greater than seq 2 of reading 1"},
		{"decreasing seqs", frame(5, 4), KindSequence, 1, "reading 1: seq 4 not greater than seq 5 of reading 0"},
		{"seq 0 first", frame(0, 1), KindSequence, 0, "reading 0: seq missing"},
	}
	for _, c := range cases {
		for _, text := range []bool{false, true} {
			name := c.name + map[bool]string{false: "/binary", true: "/json"}[text]
			t.Run(name, func(t *testing.T) {
				data := mustEncode(t, c.u, text)
				got, err := DecodeUplink(data, text, testNow, lim)
				if c.wantKind == 0 {
					if err != nil {
						t.Fatalf("want valid, got %v", err)
					}
					if len(got.Readings) != len(c.u.Readings) || got.LastSeq() != c.u.LastSeq() {
						t.Fatalf("decoded %d readings, last seq %d", len(got.Readings), got.LastSeq())
					}
					return
				}
				if got != nil {
					t.Fatalf("refused frame returned a message: %v", got)
				}
				fe := asFrameError(t, err)
				if fe.Kind != c.wantKind || fe.Index != c.wantIndex || !strings.Contains(fe.Reason, c.wantIn) {
					t.Errorf("got kind %v index %d reason %q; want %v %d %q",
						fe.Kind, fe.Index, fe.Reason, c.wantKind, c.wantIndex, c.wantIn)
				}
			})
		}
	}
}

func TestDecodeUplinkOneBadReadingRefusesFrame(t *testing.T) {
	u := typicalFrame(10, 100, testNow)
	u.Readings[6].LatE7 = i32(951_000_000)
	for _, text := range []bool{false, true} {
		got, err := DecodeUplink(mustEncode(t, u, text), text, testNow, DefaultLimits())
		if got != nil {
			t.Fatalf("text=%v: frame with a bad reading returned %d readings", text, len(got.Readings))
		}
		fe := asFrameError(t, err)
		if fe.Index != 6 || fe.Reason != "reading 6: latitude 95.1 out of range [-90, 90]" {
			t.Errorf("text=%v: index %d reason %q", text, fe.Index, fe.Reason)
		}
	}
}

func TestDecodeUplinkFrameSize(t *testing.T) {
	u := typicalFrame(5, 1, testNow)
	for _, text := range []bool{false, true} {
		data := mustEncode(t, u, text)
		if _, err := DecodeUplink(data, text, testNow, Limits{MaxFrameBytes: len(data)}); err != nil {
			t.Errorf("text=%v: frame of exactly the limit refused: %v", text, err)
		}
		_, err := DecodeUplink(data, text, testNow, Limits{MaxFrameBytes: len(data) - 1})
		fe := asFrameError(t, err)
		if fe.Kind != KindTooLarge || fe.Index != -1 {
			t.Errorf("text=%v: kind %v index %d", text, fe.Kind, fe.Index)
		}
		want := "frame of " + strconv.Itoa(len(data)) + " bytes, limit " + strconv.Itoa(len(data)-1)
		if fe.Reason != want {
			t.Errorf("reason %q, want %q", fe.Reason, want)
		}
	}
}

func TestDecodeUplinkDefaultReadingLimit(t *testing.T) {
	lim := DefaultLimits()
	// Minimal readings, so that 1001 of them fit in 64 KiB.
	u := &Uplink{}
	for i := range lim.MaxReadingsPerFrame + 1 {
		u.Readings = append(u.Readings, &Reading{Seq: uint64(i + 1), TimeMs: testNow.UnixMilli()})
	}
	data := mustEncode(t, u, false)
	_, err := DecodeUplink(data, false, testNow, lim)
	if fe := asFrameError(t, err); fe.Kind != KindTooManyReadings || fe.Reason != "1001 readings in frame, limit 1000" {
		t.Fatalf("kind %v reason %q", fe.Kind, fe.Reason)
	}
	u.Readings = u.Readings[:lim.MaxReadingsPerFrame]
	if _, err := DecodeUplink(mustEncode(t, u, false), false, testNow, lim); err != nil {
		t.Fatalf("1000 readings refused: %v", err)
	}
}

func TestDecodeUplinkMalformed(t *testing.T) {
	valid := mustEncode(t, typicalFrame(2, 1, testNow), false)
	// Field 18 of a reading (varint 1), and field 3 of the frame (varint 1).
	inner := append(mustEncodeReading(t, &Reading{Seq: 1, TimeMs: testNow.UnixMilli()}), 0x90, 0x01, 0x01)
	unknownInReading := append([]byte{0x0a, byte(len(inner))}, inner...)
	unknownInFrame := append(append([]byte{}, valid...), 0x18, 0x01)

	cases := []struct {
		name   string
		data   []byte
		text   bool
		wantIn string
	}{
		{"garbage binary", []byte{0xff, 0xff, 0xff}, false, "bad protobuf"},
		{"truncated binary", valid[:len(valid)-3], false, "bad protobuf"},
		{"readings wrong wire type", []byte{0x08, 0x01}, false, "field readings has the wrong wire type in frame"},
		{"seq wrong wire type", []byte{0x0a, 0x02, 0x0a, 0x00}, false, "reading 0: field seq has the wrong wire type"},
		{"bad UTF-8 extra key", badUTF8ExtraFrame(t), false, "bad protobuf"},
		{"unknown field in reading", unknownInReading, false, "reading 0: unknown field 18"},
		{"unknown field in frame", unknownInFrame, false, "unknown field 3 in frame"},
		{"not JSON", []byte("hello"), true, "bad JSON"},
		{"empty JSON", []byte(""), true, "bad JSON"},
		{"JSON array", []byte(`[1,2]`), true, "bad JSON"},
		{"unknown JSON field", []byte(`{"readings":[{"seq":1,"timeMs":"1763899200000","speedKmH":3}]}`), true, `unknown field "speedKmH"`},
		{"unknown JSON frame field", []byte(`{"readings":[{"seq":1,"timeMs":"1763899200000"}],"v":2}`), true, `unknown field "v"`},
		{"JSON float for seq", []byte(`{"readings":[{"seq":1.5,"timeMs":"1763899200000"}]}`), true, "bad JSON"},
		{"JSON lat overflow", []byte(`{"readings":[{"seq":1,"timeMs":"1763899200000","latE7":3000000000,"lonE7":0}]}`), true, "bad JSON"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := DecodeUplink(c.data, c.text, testNow, DefaultLimits())
			if got != nil {
				t.Fatalf("malformed frame decoded: %v", got)
			}
			fe := asFrameError(t, err)
			if fe.Kind != KindMalformed || !strings.Contains(fe.Reason, c.wantIn) {
				t.Errorf("kind %v reason %q, want malformed %q", fe.Kind, fe.Reason, c.wantIn)
			}
			if strings.HasPrefix(fe.Reason, "bad") && fe.Unwrap() == nil {
				t.Errorf("decode error not wrapped")
			}
			if !strings.HasPrefix(fe.Error(), "invalid telemetry frame: ") {
				t.Errorf("Error() = %q", fe.Error())
			}
		})
	}
}

func mustEncodeReading(t *testing.T, r *Reading) []byte {
	t.Helper()
	b, err := binMarshal.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// badUTF8ExtraFrame hand-encodes a frame whose reading has extra key "\xff" (which the encoder
// refuses to produce).
func badUTF8ExtraFrame(t *testing.T) []byte {
	r := mustEncodeReading(t, &Reading{Seq: 1, TimeMs: testNow.UnixMilli()})
	// map entry: key (field 1, bytes "\xff"), value (field 2, fixed64 0).
	entry := []byte{0x0a, 0x01, 0xff, 0x11, 0, 0, 0, 0, 0, 0, 0, 0}
	r = append(r, 0x8a, 0x01, byte(len(entry)))
	r = append(r, entry...)
	return append([]byte{0x0a, byte(len(r))}, r...)
}

func TestDecodeUplinkJSONForms(t *testing.T) {
	ms := strconv.Itoa(int(testNow.UnixMilli()))
	for _, c := range []struct {
		name, json string
	}{
		{"camelCase, int64 as string", `{"readings":[{"seq":"7","timeMs":"` + ms + `","latE7":457640434,"lonE7":48356728,"speedKmh":87.5}]}`},
		{"proto names, int64 as number", `{"readings":[{"seq":7,"time_ms":` + ms + `,"lat_e7":457640434,"lon_e7":48356728,"speed_kmh":87.5}]}`},
		{"whitespace", "{ \"readings\" : [ { \"seq\" : 7 , \"timeMs\" : " + ms + " ,\n\"latE7\":457640434,\"lonE7\":48356728,\"speedKmh\":\"87.5\" } ] }"},
	} {
		u, err := DecodeUplink([]byte(c.json), true, testNow, DefaultLimits())
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		r := u.Readings[0]
		lat, lon, ok := r.Position()
		if r.Seq != 7 || r.TimeMs != testNow.UnixMilli() || !ok || lat != 45.7640434 || lon != 4.8356728 ||
			r.GetSpeedKmh() != 87.5 || r.AltitudeM != nil {
			t.Errorf("%s: decoded %v", c.name, r)
		}
	}
	// A JSON NaN is syntactically valid in the proto3 mapping, and refused by validation.
	_, err := DecodeUplink([]byte(`{"readings":[{"seq":1,"timeMs":`+ms+`,"speedKmh":"NaN"}]}`), true, testNow, DefaultLimits())
	if fe := asFrameError(t, err); fe.Kind != KindRange || fe.Reason != "reading 0: speed_kmh is NaN" {
		t.Errorf("NaN: kind %v reason %q", fe.Kind, fe.Reason)
	}
}

func TestValidateUplinkNil(t *testing.T) {
	if fe := asFrameError(t, ValidateUplink(nil, testNow, DefaultLimits())); fe.Kind != KindEmpty {
		t.Errorf("kind %v", fe.Kind)
	}
	u := &Uplink{Readings: []*Reading{nil}}
	if fe := asFrameError(t, ValidateUplink(u, testNow, DefaultLimits())); fe.Kind != KindMalformed || fe.Index != 0 {
		t.Errorf("kind %v index %d", fe.Kind, fe.Index)
	}
	if err := ValidateUplink(typicalFrame(3, 9, testNow), testNow, DefaultLimits()); err != nil {
		t.Errorf("typical frame: %v", err)
	}
}

func TestCloseReason(t *testing.T) {
	for _, c := range []struct {
		name, reason, want string
	}{
		{"short", "reading 3: latitude 95.1 out of range [-90, 90]", "reading 3: latitude 95.1 out of range [-90, 90]"},
		{"exactly 123", strings.Repeat("a", 123), strings.Repeat("a", 123)},
		{"124", strings.Repeat("a", 124), strings.Repeat("a", 120) + "..."},
		// "é" is two bytes: 119 a's then é spans bytes 119-120; a cut at 120 must not split it.
		{"rune at cut", strings.Repeat("a", 119) + strings.Repeat("é", 10), strings.Repeat("a", 119) + "..."},
		{"invalid UTF-8", "bad \xff key", "bad ? key"},
	} {
		fe := &FrameError{Reason: c.reason}
		got := fe.CloseReason()
		if got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
		if len(got) > MaxCloseReasonBytes {
			t.Errorf("%s: %d bytes", c.name, len(got))
		}
	}
}

func TestFrameErrorKindString(t *testing.T) {
	seen := map[string]bool{}
	for k := KindMalformed; k <= KindReport; k++ {
		s := k.String()
		if seen[s] || strings.HasPrefix(s, "kind_") {
			t.Errorf("kind %d: label %q duplicate or missing", k, s)
		}
		seen[s] = true
	}
	if got := FrameErrorKind(0).String(); got != "kind_0" {
		t.Errorf("unknown kind label %q", got)
	}
}

// TestValidateTimeWhatSinksStore: whatever the limits and the server clock, time_ms stays within
// what InfluxDB can store once the writer adds seq mod 10^6 nanoseconds (±(2^63 − 2) ns), which
// is narrower than the lake's years 1 to 9999.
func TestValidateTimeWhatSinksStore(t *testing.T) {
	const influxMaxNs = math.MaxInt64 - 1 // InfluxDB 1.8: models.MaxNanoTime
	const influxMinNs = math.MinInt64 + 2 // models.MinNanoTime
	// The bounds hold for every seq: the largest sub-millisecond part at the top, none at the
	// bottom, and one millisecond more breaks them.
	if hi := big.NewInt(MaxTimeMs); hi.Mul(hi, big.NewInt(1e6)).Add(hi, big.NewInt(999_999)).Cmp(big.NewInt(influxMaxNs)) > 0 {
		t.Errorf("MaxTimeMs×1e6 + 999999 = %v is beyond InfluxDB's %d", hi, int64(influxMaxNs))
	}
	if hi := big.NewInt(MaxTimeMs + 1); hi.Mul(hi, big.NewInt(1e6)).Add(hi, big.NewInt(999_999)).Cmp(big.NewInt(influxMaxNs)) <= 0 {
		t.Errorf("MaxTimeMs is not the largest: MaxTimeMs+1 fits too")
	}
	if lo := big.NewInt(MinTimeMs); lo.Mul(lo, big.NewInt(1e6)).Cmp(big.NewInt(influxMinNs)) < 0 {
		t.Errorf("MinTimeMs×1e6 = %v is below InfluxDB's %d", lo, int64(influxMinNs))
	}
	if lo := big.NewInt(MinTimeMs - 1); lo.Mul(lo, big.NewInt(1e6)).Cmp(big.NewInt(influxMinNs)) >= 0 {
		t.Errorf("MinTimeMs is not the smallest: MinTimeMs-1 fits too")
	}
	if got := time.UnixMilli(MinTimeMs).UTC().Format(time.RFC3339Nano); got != "1677-09-21T00:12:43.146Z" {
		t.Errorf("MinTimeMs is %s", got)
	}
	if got := time.UnixMilli(MaxTimeMs).UTC().Format(time.RFC3339Nano); got != "2262-04-11T23:47:16.853Z" {
		t.Errorf("MaxTimeMs is %s", got)
	}

	// A server clock at the reading's own time, so that the window of the limits lets it
	// through: only the absolute bounds remain.
	for _, c := range []struct {
		ms    int64
		valid bool
	}{
		{MinTimeMs, true}, {MaxTimeMs, true}, {-1, true}, {1, true},
		{MinTimeMs - 1, false}, {MaxTimeMs + 1, false}, {math.MinInt64, false}, {math.MaxInt64, false},
	} {
		err := ValidateReading(&Reading{Seq: MaxSeq, TimeMs: c.ms}, time.UnixMilli(c.ms), DefaultLimits())
		if c.valid {
			if err != nil {
				t.Errorf("time_ms %d: %v", c.ms, err)
			}
			continue
		}
		fe := asFrameError(t, err)
		if fe.Kind != KindTime || fe.Field != "time_ms" || !strings.Contains(fe.Reason, "outside years 1677 to 2262") {
			t.Errorf("time_ms %d: kind %v field %q reason %q", c.ms, fe.Kind, fe.Field, fe.Reason)
		}
	}
	// A server clock far in the future (year 2300): the window alone would let 2262+ through.
	future := time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
	_, err := DecodeUplink(mustEncode(t, &Uplink{Readings: []*Reading{{Seq: 1, TimeMs: future.UnixMilli()}}}, false), false, future, DefaultLimits())
	if fe := asFrameError(t, err); fe.Reason != "reading 0: time_ms 10413792000000 outside years 1677 to 2262 [-9223372036854, 9223372036853]" {
		t.Errorf("clock in 2300: reason %q", fe.Reason)
	}
}

func TestExtraKeyLenCap(t *testing.T) {
	r := &Reading{Seq: 1, TimeMs: testNow.UnixMilli(), Extra: map[string]float64{strings.Repeat("k", MaxExtraKeyLenCap): 1}}
	huge := Limits{MaxExtraKeyLen: 1 << 20}
	if err := ValidateReading(r, testNow, huge); err != nil {
		t.Fatalf("key of MaxExtraKeyLenCap bytes: %v", err)
	}
	r.Extra = map[string]float64{strings.Repeat("k", MaxExtraKeyLenCap+1): 1}
	if fe := asFrameError(t, ValidateReading(r, testNow, huge)); fe.Kind != KindExtra || !strings.Contains(fe.Reason, "limit 1024") {
		t.Errorf("key over the cap: kind %v reason %q", fe.Kind, fe.Reason)
	}
}

// TestSeqOverWireInJSON: a JSON device sends seq as a decimal string; 2^63 decodes (the wire type
// is uint64) and is refused by validation, 2^63 − 1 is accepted.
func TestSeqOverWireInJSON(t *testing.T) {
	ms := strconv.FormatInt(testNow.UnixMilli(), 10)
	_, err := DecodeUplink([]byte(`{"readings":[{"seq":"9223372036854775808","timeMs":"`+ms+`"}]}`), true, testNow, DefaultLimits())
	if fe := asFrameError(t, err); fe.Kind != KindSequence || fe.Index != 0 ||
		fe.CloseReason() != "reading 0: seq 9223372036854775808 out of range [1, 9223372036854775807]" {
		t.Errorf("seq 2^63: kind %v index %d reason %q", fe.Kind, fe.Index, fe.CloseReason())
	}
	u, err := DecodeUplink([]byte(`{"readings":[{"seq":"9223372036854775807","timeMs":"`+ms+`"}]}`), true, testNow, DefaultLimits())
	if err != nil || u.LastSeq() != MaxSeq {
		t.Errorf("seq 2^63-1: %v %v", u, err)
	}
}
