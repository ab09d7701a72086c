package telemetry

import (
	"math"
	"math/big"
	"strconv"
	"strings"
	"testing"
	"unicode"
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
		// The largest seq every sink stores.
		{Readings: []*Reading{{Seq: MaxSeq, TimeMs: testNow.UnixMilli(), Extra: map[string]float64{"tyre.fl-kpa": -0.5}}}},
		// Refused ones: seq order, range, seq beyond the sinks' int64, a backslash in a key.
		{Readings: []*Reading{{Seq: 2, TimeMs: testNow.UnixMilli()}, {Seq: 2, TimeMs: testNow.UnixMilli()}}},
		{Readings: []*Reading{{Seq: 1, TimeMs: testNow.UnixMilli(), LatE7: i32(951_000_000), LonE7: i32(0)}}},
		{Readings: []*Reading{{Seq: MaxSeq + 1, TimeMs: testNow.UnixMilli()}}},
		{Readings: []*Reading{{Seq: 1, TimeMs: testNow.UnixMilli(), Extra: map[string]float64{`tail\`: 1}}}},
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
	if u == nil || len(u.Readings) == 0 && len(u.Reports) == 0 {
		t.Fatalf("accepted frame without readings or command reports: %v", u)
	}
	for i, r := range u.Reports {
		if unk := r.ProtoReflect().GetUnknown(); len(unk) > 0 {
			t.Fatalf("accepted report %d with an unknown field: %v", i, r)
		}
	}
	for i, r := range u.Readings {
		if why := unstorable(r); why != "" {
			t.Fatalf("accepted reading %d would be refused by a sink: %s: %v", i, why, r)
		}
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

// unstorable says why a sink would refuse r for good, or "" when both store it unchanged. It
// restates the sinks' limits apart from the validation code: InfluxDB integers and the lake's seq
// column are int64; the InfluxDB writer's timestamp time_ms×10^6 + seq mod 10^6 must be within
// InfluxDB's ±(2^63−2) ns; extra keys become InfluxDB field keys x_<key>, where a backslash or a
// control character cannot be carried; values are finite.
func unstorable(r *Reading) string {
	if r.Seq == 0 || r.Seq > math.MaxInt64 {
		return "seq"
	}
	ns := new(big.Int).Mul(big.NewInt(r.TimeMs), big.NewInt(1e6))
	ns.Add(ns, new(big.Int).SetUint64(r.Seq%1e6))
	if ns.Cmp(big.NewInt(math.MinInt64+2)) < 0 || ns.Cmp(big.NewInt(math.MaxInt64-1)) > 0 {
		return "time_ms"
	}
	for k, v := range r.Extra {
		if strings.ContainsFunc(k, func(c rune) bool { return c == '\\' || unicode.IsControl(c) }) ||
			!utf8.ValidString(k) || math.IsNaN(v) || math.IsInf(v, 0) {
			return "extra " + strconv.Quote(k)
		}
	}
	return ""
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
		checkScan(t, data, u, err)
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
		`{"readings":[{"seq":"9223372036854775808","timeMs":"1763899200000"}]}`,
		`{"readings":[{"seq":"9223372036854775807","timeMs":"1763899200000","extra":{"a.b-c:d e":1.7976931348623157e308}}]}`,
		`{"readings":[{"seq":1,"timeMs":1763899200000,"extra":{"tail\\":1}}]}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := DecodeUplink([]byte(s), true, testNow, DefaultLimits())
		checkDecoded(t, u, err)
	})
}
