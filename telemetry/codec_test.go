package telemetry

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

func TestUplinkRoundTrip(t *testing.T) {
	withExtra := typicalReading(12, testNow)
	withExtra.Extra = map[string]float64{"tyre_fl_kpa": 812.5, "température_huile": -0.25, "x": 1e300}
	noFix := typicalReading(13, testNow)
	noFix.ClearPosition()
	zeros := &Reading{ // explicit zeros must survive: "present and 0" is not "absent"
		Seq: 14, TimeMs: testNow.UnixMilli(), LatE7: i32(0), LonE7: i32(0), SpeedKmh: f32(0),
		Satellites: u32(0), Ignition: bl(false), OdometerKm: f64(0), BatteryCurrentA: f32(float32(math.Copysign(0, -1))),
	}
	frames := map[string]*Uplink{
		"typical":    {Readings: []*Reading{typicalReading(1_000_000, testNow)}},
		"ten":        typicalFrame(10, 1_000_000, testNow),
		"extra":      {Readings: []*Reading{withExtra}},
		"no fix":     {Readings: []*Reading{noFix}},
		"zeros":      {Readings: []*Reading{zeros}},
		"max values": {Readings: []*Reading{{Seq: MaxSeq, TimeMs: testNow.UnixMilli(), LatE7: i32(MinLatE7), LonE7: i32(MaxLonE7)}}},
	}
	for name, u := range frames {
		for _, text := range []bool{false, true} {
			data := mustEncode(t, u, text)
			got, err := DecodeUplink(data, text, testNow, DefaultLimits())
			if err != nil {
				t.Fatalf("%s text=%v: %v\n%s", name, text, err, data)
			}
			if !proto.Equal(got, u) {
				t.Errorf("%s text=%v: round trip differs:\n got %v\nwant %v", name, text, got, u)
			}
		}
	}
	// Presence survives: zero values are present, absent sensors stay absent.
	got, _ := DecodeUplink(mustEncode(t, frames["zeros"], true), true, testNow, DefaultLimits())
	r := got.Readings[0]
	if !r.HasPosition() || r.SpeedKmh == nil || r.Ignition == nil || r.AltitudeM != nil || r.EngineRpm != nil {
		t.Errorf("presence lost in JSON: %v", r)
	}
	if !math.Signbit(float64(r.GetBatteryCurrentA())) {
		t.Errorf("-0 lost")
	}
}

func TestAppendUplinkReusesBuffer(t *testing.T) {
	u := typicalFrame(3, 1, testNow)
	buf := make([]byte, 0, 4096)
	for _, text := range []bool{false, true} {
		out, err := AppendUplink(buf[:0], u, text)
		if err != nil {
			t.Fatal(err)
		}
		if &out[0] != &buf[:1][0] {
			t.Errorf("text=%v: buffer with room was not reused", text)
		}
		if want := mustEncode(t, u, text); !bytes.Equal(out, want) {
			t.Errorf("text=%v: AppendUplink differs from EncodeUplink", text)
		}
	}
	prefix := []byte("hdr")
	out, err := AppendUplink(prefix, u, false)
	if err != nil || !bytes.HasPrefix(out, prefix) || !bytes.Equal(out[3:], mustEncode(t, u, false)) {
		t.Errorf("AppendUplink does not append: %v", err)
	}
	// Encoding errors are wrapped and leave dst as it was.
	bad := &Uplink{Readings: []*Reading{{Seq: 1, Extra: map[string]float64{"\xff": 1}}}}
	out, err = AppendUplink(prefix, bad, false)
	if err == nil || !strings.HasPrefix(err.Error(), "encode uplink: ") || string(out) != "hdr" {
		t.Errorf("got %q, %v", out, err)
	}
}

func TestDownlinkRoundTrip(t *testing.T) {
	for _, d := range []*Downlink{NewAck(1_000_042), NewAck(math.MaxUint64), NewError(ErrCodeOverloaded, "queue full, retry in 5s"), {}} {
		for _, text := range []bool{false, true} {
			b, err := EncodeDownlink(d, text)
			if err != nil {
				t.Fatal(err)
			}
			got, err := DecodeDownlink(b, text)
			if err != nil {
				t.Fatalf("text=%v %s: %v", text, b, err)
			}
			if !proto.Equal(got, d) {
				t.Errorf("text=%v: got %v want %v", text, got, d)
			}
		}
	}
	// An ack of a typical seq is a few bytes on the wire.
	b, _ := EncodeDownlink(NewAck(1_000_042), false)
	if len(b) != 6 {
		t.Errorf("binary ack of seq 1000042 is %d bytes, want 6", len(b))
	}
	if got := NewAck(5).GetAck().GetSeq(); got != 5 {
		t.Errorf("NewAck seq %d", got)
	}
	if e := NewError(ErrCodeInvalidFrame, "x").GetError(); e.GetCode() != 1 || e.GetReason() != "x" {
		t.Errorf("NewError: %v", e)
	}
}

func TestDecodeDownlinkIgnoresUnknownKinds(t *testing.T) {
	// A newer server's kind (field 5, reserved for firmware), binary and JSON: decodes with Kind nil.
	bin := []byte{0x2a, 0x02, 0x08, 0x01}
	d, err := DecodeDownlink(bin, false)
	if err != nil || d.Kind != nil {
		t.Fatalf("binary: %v, %v", d, err)
	}
	d, err = DecodeDownlink([]byte(`{"firmware":{"reboot":true}}`), true)
	if err != nil || d.Kind != nil {
		t.Fatalf("json: %v, %v", d, err)
	}
	// Known kind beside an unknown field still decodes.
	d, err = DecodeDownlink([]byte(`{"ack":{"seq":"9"},"future":1}`), true)
	if err != nil || d.GetAck().GetSeq() != 9 {
		t.Fatalf("json ack: %v, %v", d, err)
	}
	for _, c := range []struct {
		data []byte
		text bool
	}{{[]byte{0x0a, 0x05}, false}, {[]byte(`{"ack":`), true}} {
		if _, err := DecodeDownlink(c.data, c.text); err == nil || !strings.HasPrefix(err.Error(), "decode downlink: ") {
			t.Errorf("text=%v: malformed downlink: %v", c.text, err)
		}
	}
}

func TestReadingHelpers(t *testing.T) {
	r := &Reading{}
	if r.HasPosition() {
		t.Fatal("empty reading has a position")
	}
	if _, _, ok := r.Position(); ok {
		t.Fatal("Position ok without fix")
	}
	r.SetPosition(45.7640434, -4.8356728)
	lat, lon, ok := r.Position()
	if !ok || *r.LatE7 != 457640434 || *r.LonE7 != -48356728 || lat != 45.7640434 || lon != -4.8356728 {
		t.Errorf("SetPosition: %v %v %v (%d %d)", lat, lon, ok, *r.LatE7, *r.LonE7)
	}
	r.ClearPosition()
	if r.HasPosition() {
		t.Error("ClearPosition left a position")
	}
	var nilReading *Reading
	if nilReading.HasPosition() {
		t.Error("nil reading has a position")
	}
	for _, c := range []struct {
		deg  float64
		want int32
	}{
		{0, 0}, {90, 900_000_000}, {-180, -1_800_000_000}, {1e-7, 1}, {0.5e-7, 1}, {-0.5e-7, -1},
		{300, math.MaxInt32}, {-300, math.MinInt32}, {math.NaN(), math.MaxInt32}, {math.Inf(-1), math.MinInt32},
	} {
		if got := DegreesToE7(c.deg); got != c.want {
			t.Errorf("DegreesToE7(%v) = %d, want %d", c.deg, got, c.want)
		}
	}
	// A clamped position is refused, not wrapped into range.
	r.SetPosition(300, 0)
	if err := ValidateReading(&Reading{Seq: 1, TimeMs: testNow.UnixMilli(), LatE7: r.LatE7, LonE7: r.LonE7}, testNow, Limits{}); err == nil {
		t.Error("latitude 300 accepted")
	}
	if got := (&Reading{TimeMs: 1_763_899_200_123}).Time(); !got.Equal(time.UnixMilli(1_763_899_200_123)) {
		t.Errorf("Time() = %v", got)
	}
	if (*Uplink)(nil).LastSeq() != 0 || (&Uplink{}).LastSeq() != 0 || typicalFrame(4, 10, testNow).LastSeq() != 13 {
		t.Error("LastSeq")
	}
}

// compactJSON removes the optional spaces protojson may emit, giving the size a device that
// writes compact JSON sends.
func compactJSON(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestEncodedSize measures a typical reading (full sensor set, realistic values, seq ~1e6,
// time now) and a 10-reading frame, binary against JSON, and bounds them: these are the
// figures docs/wire-format.md quotes.
func TestEncodedSize(t *testing.T) {
	now := time.Now()
	one := &Uplink{Readings: []*Reading{typicalReading(1_000_000, now)}}
	ten := typicalFrame(10, 1_000_000, now)

	readingBin := proto.Size(one.Readings[0])
	oneBin := len(mustEncode(t, one, false))
	oneJSON := len(compactJSON(t, mustEncode(t, one, true)))
	tenBin := len(mustEncode(t, ten, false))
	tenJSON := len(compactJSON(t, mustEncode(t, ten, true)))
	t.Logf("typical reading: %d bytes protobuf (inside a frame: %d)", readingBin, oneBin)
	t.Logf("1-reading frame: %d bytes protobuf, %d bytes compact JSON (%.1fx)", oneBin, oneJSON, float64(oneJSON)/float64(oneBin))
	t.Logf("10-reading frame: %d bytes protobuf (%.1f per reading), %d bytes compact JSON (%.1f per reading, %.1fx)",
		tenBin, float64(tenBin)/10, tenJSON, float64(tenJSON)/10, float64(tenJSON)/float64(tenBin))

	bounds := []struct {
		what     string
		got, max int
	}{
		{"typical reading, protobuf", readingBin, 84},
		{"1-reading frame, protobuf", oneBin, 86},
		{"1-reading frame, JSON", oneJSON, 360},
		{"10-reading frame, protobuf", tenBin, 860},
		{"10-reading frame, JSON", tenJSON, 3500},
	}
	for _, b := range bounds {
		if b.got > b.max {
			t.Errorf("%s: %d bytes, bound %d", b.what, b.got, b.max)
		}
	}
	if oneJSON < 3*oneBin {
		t.Errorf("JSON (%d) expected well above protobuf (%d): did the fixture lose fields?", oneJSON, oneBin)
	}
	// A reading without fix or sensors costs only seq and time.
	if n := proto.Size(&Reading{Seq: 1_000_000, TimeMs: now.UnixMilli()}); n != 11 {
		t.Errorf("minimal reading: %d bytes, want 11", n)
	}
}
