package telemetry

import (
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
)

// fuzzSeedFrames are realistic frames and edge cases, valid at testNow.
func fuzzSeedFrames() []*Uplink {
	withExtra := typicalReading(77, testNow)
	withExtra.Extra = map[string]float64{"tyre_fl_kpa": 812.5, "cargo_temp_c": -18.2}
	noFix := typicalReading(78, testNow)
	noFix.ClearPosition()
	edge := &Reading{
		Seq: 1, TimeMs: testNow.UnixMilli() + 5*60*1000, LatE7: i32(MaxLatE7), LonE7: i32(MinLonE7),
		HeadingDeg: f32(0), SpeedKmh: f32(400), Satellites: u32(64), FuelLevelPct: f32(100), OdometerKm: f64(0),
	}
	return []*Uplink{
		{Readings: []*Reading{typicalReading(1_000_000, testNow)}},
		typicalFrame(10, 1_000_000, testNow),
		{Readings: []*Reading{withExtra, noFix}},
		{Readings: []*Reading{edge}},
		{Readings: []*Reading{{Seq: 1, TimeMs: testNow.UnixMilli()}}},
		// Refused ones: seq order, range.
		{Readings: []*Reading{{Seq: 2, TimeMs: testNow.UnixMilli()}, {Seq: 2, TimeMs: testNow.UnixMilli()}}},
		{Readings: []*Reading{{Seq: 1, TimeMs: testNow.UnixMilli(), LatE7: i32(951_000_000), LonE7: i32(0)}}},
	}
}

// checkDecoded is the property both fuzz targets assert: a refused frame gets a usable
// *FrameError; an accepted frame re-encodes, in both encodings, to bytes that decode to an equal
// message which validates again.
func checkDecoded(t *testing.T, u *Uplink, err error) {
	if err != nil {
		fe := asFrameError(t, err)
		if fe.Reason == "" || fe.Kind.String() == "" || strings.HasPrefix(fe.Kind.String(), "kind_") {
			t.Fatalf("unusable FrameError %+v", fe)
		}
		if cr := fe.CloseReason(); len(cr) > MaxCloseReasonBytes || !utf8.ValidString(cr) {
			t.Fatalf("close reason %q: %d bytes or invalid UTF-8", cr, len(cr))
		}
		if fe.Index < -1 || fe.Index >= DefaultLimits().MaxReadingsPerFrame {
			t.Fatalf("index %d", fe.Index)
		}
		return
	}
	if u == nil || len(u.Readings) == 0 {
		t.Fatalf("accepted frame without readings: %v", u)
	}
	// JSON of an accepted binary frame may exceed the binary frame limit: re-decode without it.
	big := Limits{MaxFrameBytes: 1 << 30}
	for _, text := range []bool{false, true} {
		b, err := EncodeUplink(u, text)
		if err != nil {
			t.Fatalf("accepted frame does not re-encode (text=%v): %v", text, err)
		}
		u2, err := DecodeUplink(b, text, testNow, big)
		if err != nil {
			t.Fatalf("re-encoded frame refused (text=%v): %v\n%s", text, err, b)
		}
		if !proto.Equal(u, u2) {
			t.Fatalf("re-decoded frame differs (text=%v):\n got %v\nwant %v", text, u2, u)
		}
		if err := ValidateUplink(u2, testNow, DefaultLimits()); err != nil {
			t.Fatalf("re-decoded frame no longer validates: %v", err)
		}
	}
}

func FuzzDecodeUplinkBinary(f *testing.F) {
	for _, u := range fuzzSeedFrames() {
		f.Add(mustEncode(f, u, false))
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})                   // one empty reading
	f.Add([]byte{0x08, 0x01})                   // readings with the wrong wire type
	f.Add([]byte{0x0a, 0x05, 0x08, 0x01})       // truncated
	f.Add([]byte{0x0a, 0x03, 0x90, 0x01, 0x01}) // unknown field 18 in a reading
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := DecodeUplink(data, false, testNow, DefaultLimits())
		checkDecoded(t, u, err)
	})
}

func FuzzDecodeUplinkJSON(f *testing.F) {
	for _, u := range fuzzSeedFrames() {
		f.Add(string(compactJSON(f, mustEncode(f, u, true))))
	}
	for _, s := range []string{
		``, `{}`, `[]`, `null`, `{"readings":[]}`, `{"readings":[{}]}`, `{"readings":null}`,
		`{"readings":[{"seq":1,"time_ms":1763899200000,"lat_e7":0,"lon_e7":0}]}`,
		`{"readings":[{"seq":"1","timeMs":"1763899200000","speedKmh":"NaN"}]}`,
		`{"readings":[{"seq":1,"timeMs":1763899200000,"extra":{"a":1,"a":2}}]}`,
		`{"readings":[{"seq":1,"timeMs":1763899200000,"extra":{"":1}}]}`,
		`{"readings":[{"seq":1,"timeMs":1763899200000,"headingDeg":1e39}]}`,
		`{"readings":[{"seq":1,"timeMs":1763899200000}],"readings":[]}`,
		`{"readings":[{"seq":18446744073709551616,"timeMs":1763899200000}]}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := DecodeUplink([]byte(s), true, testNow, DefaultLimits())
		checkDecoded(t, u, err)
	})
}
