package telemetry

import (
	"bytes"
	"math"
	"strconv"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// checkScan is the property FuzzDecodeUplinkBinary asserts of the fast path: ScanUplink accepts
// only frames DecodeUplink accepts, with readings whose encodings decode to DecodeUplink's.
func checkScan(t *testing.T, data []byte, u *Uplink, err error) {
	t.Helper()
	refs, ok := ScanUplink(data, testNow, DefaultLimits(), nil)
	if !ok {
		if len(refs) != 0 {
			t.Fatalf("scan not sure but returned %d readings", len(refs))
		}
		return
	}
	if err != nil {
		t.Fatalf("scan accepted a frame DecodeUplink refuses (%v)", err)
	}
	if len(refs) != len(u.Readings) {
		t.Fatalf("scan found %d readings, DecodeUplink %d", len(refs), len(u.Readings))
	}
	for i, ref := range refs {
		r := u.Readings[i]
		var got Reading
		if err := proto.Unmarshal(ref.Raw, &got); err != nil {
			t.Fatalf("reading %d: raw does not decode: %v", i, err)
		}
		if ref.Seq != r.Seq || ref.TimeMs != r.TimeMs || !proto.Equal(&got, r) {
			t.Fatalf("reading %d: scan %d/%d %v, decode %v", i, ref.Seq, ref.TimeMs, &got, r)
		}
	}
}

// The frames devices send every second must take the fast path: the property above holds for
// a scanner that is never sure, so this is what makes it worth having.
func TestScanUplinkTakesTypicalFrames(t *testing.T) {
	withExtra := typicalReading(7, testNow)
	withExtra.Extra = map[string]float64{"tyre_fl_kpa": 812.5, "cargo_temp_c": -18.2, "x": 0}
	noFix := typicalReading(8, testNow)
	noFix.ClearPosition()
	frames := []*Uplink{
		typicalFrame(1, 1, testNow),
		typicalFrame(50, 1_000_000, testNow),
		typicalFrame(700, 1, testNow), // near the 64 KiB frame limit
		{Readings: []*Reading{withExtra, noFix}},
		{Readings: []*Reading{{Seq: MaxSeq, TimeMs: testNow.UnixMilli()}}},
	}
	for i, u := range frames {
		data := mustEncode(t, u, false)
		dec, err := DecodeUplink(data, false, testNow, DefaultLimits())
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		refs, ok := ScanUplink(data, testNow, DefaultLimits(), nil)
		if !ok {
			t.Fatalf("frame %d (%d readings): scanner not sure of a valid frame", i, len(u.Readings))
		}
		checkScan(t, data, dec, nil)
		if len(refs) != len(u.Readings) {
			t.Fatalf("frame %d: %d refs", i, len(refs))
		}
	}
}

// What the scanner leaves to DecodeUplink: every refusal, and frames it does not handle.
func TestScanUplinkLeavesTheRest(t *testing.T) {
	now := testNow.UnixMilli()
	cases := map[string][]byte{
		"empty":          {},
		"reports":        mustEncode(t, &Uplink{Readings: []*Reading{{Seq: 1, TimeMs: now}}, Reports: []*CommandReport{{Id: "c1", Status: CommandStatus_COMMAND_STATUS_RECEIVED}}}, false),
		"seq order":      mustEncode(t, &Uplink{Readings: []*Reading{{Seq: 2, TimeMs: now}, {Seq: 2, TimeMs: now}}}, false),
		"latitude":       mustEncode(t, &Uplink{Readings: []*Reading{{Seq: 1, TimeMs: now, LatE7: i32(951_000_000), LonE7: i32(0)}}}, false),
		"lat alone":      mustEncode(t, &Uplink{Readings: []*Reading{{Seq: 1, TimeMs: now, LatE7: i32(1)}}}, false),
		"seq over int64": mustEncode(t, &Uplink{Readings: []*Reading{{Seq: MaxSeq + 1, TimeMs: now}}}, false),
		"too old":        mustEncode(t, &Uplink{Readings: []*Reading{{Seq: 1, TimeMs: now - 31*24*3600*1000}}}, false),
		"heading 360":    mustEncode(t, &Uplink{Readings: []*Reading{{Seq: 1, TimeMs: now, HeadingDeg: f32(360)}}}, false),
		"backslash key":  mustEncode(t, &Uplink{Readings: []*Reading{{Seq: 1, TimeMs: now, Extra: map[string]float64{`a\`: 1}}}}, false),
		"unknown field":  {0x0a, 0x03, 0x90, 0x01, 0x01},
		"truncated":      {0x0a, 0x05, 0x08, 0x01},
		"wrong type":     {0x08, 0x01},
		// speed_kmh (a float) sent as a varint: protobuf keeps it as unknown.
		"float as varint": {0x0a, 0x06, 0x08, 0x01, 0x10, 0x01, 0x38, 0x01},
	}
	for name, data := range cases {
		if _, ok := ScanUplink(data, testNow, DefaultLimits(), nil); ok {
			t.Errorf("%s: scanner sure of a frame it must leave to DecodeUplink", name)
		}
		u, err := DecodeUplink(data, false, testNow, DefaultLimits())
		checkScan(t, data, u, err)
	}
	// Too many readings for the limits: refused by both.
	data := mustEncode(t, typicalFrame(11, 1, testNow), false)
	if _, ok := ScanUplink(data, testNow, Limits{MaxReadingsPerFrame: 10}, nil); ok {
		t.Error("scanner sure of a frame over MaxReadingsPerFrame")
	}
	if _, ok := ScanUplink(data, testNow, Limits{MaxFrameBytes: len(data) - 1}, nil); ok {
		t.Error("scanner sure of a frame over MaxFrameBytes")
	}
}

// A map key repeated in one reading: DecodeUplink keeps the last value; the scanner is sure
// only when every value passes, and then both agree.
func TestScanUplinkRepeatedExtraKey(t *testing.T) {
	now := testNow.UnixMilli()
	entry := func(k string, v float64) []byte {
		e := protowire.AppendTag(nil, 1, protowire.BytesType)
		e = protowire.AppendString(e, k)
		e = protowire.AppendTag(e, 2, protowire.Fixed64Type)
		return protowire.AppendFixed64(e, math.Float64bits(v))
	}
	r, _ := proto.Marshal(&Reading{Seq: 1, TimeMs: now})
	for _, v := range []float64{1, 2} {
		r = protowire.AppendTag(r, 17, protowire.BytesType)
		r = protowire.AppendBytes(r, entry("k", v))
	}
	data := protowire.AppendTag(nil, 1, protowire.BytesType)
	data = protowire.AppendBytes(data, r)
	u, err := DecodeUplink(data, false, testNow, DefaultLimits())
	if err != nil || u.Readings[0].Extra["k"] != 2 {
		t.Fatalf("decode: %v %v", u, err)
	}
	if _, ok := ScanUplink(data, testNow, DefaultLimits(), nil); !ok {
		t.Fatal("scanner not sure of a repeated, valid key")
	}
	checkScan(t, data, u, err)
}

// AppendRecords writes what proto.Marshal writes for the same Batch, so queue entries on disk are
// unchanged by the fast path (readings without extras: map order is random in proto.Marshal).
func TestAppendRecordsMatchesMarshal(t *testing.T) {
	for _, n := range []int{1, 3, 50} {
		u := typicalFrame(n, 1_000_000, testNow)
		for _, dev := range []string{"truck-7", ""} {
			for _, recv := range []int64{testNow.UnixMilli(), 0} {
				refs, err := AppendReadingRefs(nil, u.Readings)
				if err != nil {
					t.Fatal(err)
				}
				b := &Batch{}
				for _, r := range u.Readings {
					b.Records = append(b.Records, &Record{DeviceId: dev, ReceivedMs: recv, Reading: r})
				}
				want, err := proto.Marshal(b)
				if err != nil {
					t.Fatal(err)
				}
				got := AppendRecords([]byte("prefix"), dev, recv, refs)
				if !bytes.Equal(got[6:], want) || string(got[:6]) != "prefix" {
					t.Fatalf("n=%d dev=%q recv=%d: AppendRecords differs from proto.Marshal", n, dev, recv)
				}
				if s := RecordsSize(dev, recv, refs); s != len(want) {
					t.Fatalf("RecordsSize %d, encoded %d", s, len(want))
				}
			}
		}
	}
}

func BenchmarkScanUplink(b *testing.B) {
	lim := DefaultLimits()
	for _, n := range []int{1, 50} {
		data := mustEncode(b, typicalFrame(n, 1_000_000, testNow), false)
		b.Run("readings="+strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			var refs []ReadingRef
			for b.Loop() {
				var ok bool
				if refs, ok = ScanUplink(data, testNow, lim, refs[:0]); !ok {
					b.Fatal("not sure")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/reading")
		})
	}
}

func TestWireFieldNumbers(t *testing.T) {
	for _, c := range []struct {
		m    proto.Message
		name string
		want protowire.Number
	}{
		{&Record{}, "device_id", recordDeviceID},
		{&Record{}, "received_ms", recordReceivedMs},
		{&Record{}, "reading", recordReading},
		{&Batch{}, "records", batchRecords},
		{&Enrichment{}, "fleet", enrichmentFleet},
		{&Enrichment{}, "vehicle_class", enrichmentClass},
		{&Enrichment{}, "region", enrichmentRegion},
		{&EnrichedRecord{}, "record", enrichedRecord},
		{&EnrichedRecord{}, "enrichment", enrichedEnrichment},
		{&PublishBatch{}, "router", publishRouter},
		{&PublishBatch{}, "seq", publishSeq},
		{&PublishBatch{}, "records", publishRecords},
		{&Downlink{}, "ack", downlinkAck},
		{&Ack{}, "seq", ackSeq},
	} {
		f := c.m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(c.name))
		if f == nil || f.Number() != c.want {
			t.Errorf("%s.%s: descriptor says %v, scan.go %d", c.m.ProtoReflect().Descriptor().FullName(), c.name, f, c.want)
		}
	}
	for k, r := range floatRules {
		f := (&Reading{}).ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(r.name))
		if f == nil || int(f.Number()) != r.num || f.Kind() != protoreflect.FloatKind {
			t.Errorf("floatRules[%d] %s: field %d, descriptor %v", k, r.name, r.num, f)
		}
	}
}
