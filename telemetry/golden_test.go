package telemetry

import (
	"bytes"
	"encoding/hex"
	"testing"

	"google.golang.org/protobuf/proto"
)

// Golden bytes of the formats drover keeps on disk and sends between its processes. A frontend's
// queue entry and a router's PublishBatch written by this version must be readable by the next
// one and the other way round (a rolling upgrade drains old queues with new code): if a change
// makes these differ, it changes a format, and that needs a version, not a new golden value.
const (
	// A device frame: two readings (seq 41, 42; the second with one extra value).
	goldenFrame = "0a4f082910989cd784ab3318e4a7b8b40320f0f58e2e2d66662d433500403b433d3333af42400b4801550000b1425d00" +
		"40b54465cdcc7c42699a9999992533194175cdccdc417d666646c1850100c04b440a68082a1080a4d784ab3318a4cdb8" +
		"b40320f0f58e2e2d66662d433500403b433dcdccaf42400b4801550000b1425d0040b54465cdcc7c4269560e2db22533" +
		"194175cdccdc417d666646c1850100c04b448a01160a0b747972655f666c5f6b7061110000000000648940"
	// The frontend's queue entry for it: device truck-7, received 250 ms after testNow.
	goldenEntry = "1a610a07747275636b2d3710faa5d784ab331a4f082910989cd784ab3318e4a7b8b40320f0f58e2e2d66662d43350040" +
		"3b433d3333af42400b4801550000b1425d0040b54465cdcc7c42699a9999992533194175cdccdc417d666646c1850100" +
		"c04b441a7a0a07747275636b2d3710faa5d784ab331a68082a1080a4d784ab3318a4cdb8b40320f0f58e2e2d66662d43" +
		"3500403b433dcdccaf42400b4801550000b1425d0040b54465cdcc7c4269560e2db22533194175cdccdc417d666646c1" +
		"850100c04b448a01160a0b747972655f666c5f6b7061110000000000648940"
	// The router's PublishBatch of that entry: router-1, main queue seq 77, enrichment acme/truck/za-gp.
	goldenPublish = "0a08726f757465722d31104d1a790a610a07747275636b2d3710faa5d784ab331a4f082910989cd784ab3318e4a7b8b4" +
		"0320f0f58e2e2d66662d433500403b433d3333af42400b4801550000b1425d0040b54465cdcc7c42699a999999253319" +
		"4175cdccdc417d666646c1850100c04b4412140a0461636d651205747275636b1a057a612d67701a92010a7a0a077472" +
		"75636b2d3710faa5d784ab331a68082a1080a4d784ab3318a4cdb8b40320f0f58e2e2d66662d433500403b433dcdccaf" +
		"42400b4801550000b1425d0040b54465cdcc7c4269560e2db22533194175cdccdc417d666646c1850100c04b448a0116" +
		"0a0b747972655f666c5f6b706111000000000064894012140a0461636d651205747275636b1a057a612d6770"
	// The binary ack of seq 42.
	goldenAck = "0a02082a"
)

func TestGoldenFormats(t *testing.T) {
	unhex := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	frame := unhex(goldenFrame)
	refs, ok := ScanUplink(frame, testNow, DefaultLimits(), nil)
	if !ok || len(refs) != 2 || refs[0].Seq != 41 || refs[1].Seq != 42 {
		t.Fatalf("scan of the golden frame: ok=%v %d readings", ok, len(refs))
	}
	recv := testNow.UnixMilli() + 250
	entry := AppendRecords(nil, "truck-7", recv, refs)
	if !bytes.Equal(entry, unhex(goldenEntry)) {
		t.Errorf("queue entry changed:\n got %x\nwant %s", entry, goldenEntry)
	}
	var recs []RawEnriched
	if err := WalkBatchRecords(entry, func(rec, dev []byte) {
		if string(dev) != "truck-7" {
			t.Errorf("device %q", dev)
		}
		recs = append(recs, RawEnriched{Record: rec, Enrichment: AppendEnrichment(nil, "acme", "truck", "za-gp"), HasEnrichment: true})
	}); err != nil {
		t.Fatal(err)
	}
	if pb := AppendPublishBatch(nil, "router-1", 77, recs); !bytes.Equal(pb, unhex(goldenPublish)) {
		t.Errorf("PublishBatch changed:\n got %x\nwant %s", pb, goldenPublish)
	}
	if ack := AppendAck(nil, 42); !bytes.Equal(ack, unhex(goldenAck)) {
		t.Errorf("ack changed: %x, want %s", ack, goldenAck)
	}

	// And what they decode to, with the generated code (as the sinks read them).
	u, err := DecodeUplink(frame, false, testNow, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	var pub PublishBatch
	if err := proto.Unmarshal(unhex(goldenPublish), &pub); err != nil {
		t.Fatal(err)
	}
	if pub.Router != "router-1" || pub.Seq != 77 || len(pub.Records) != 2 {
		t.Fatalf("PublishBatch %v", &pub)
	}
	for i, er := range pub.Records {
		rec, e := er.GetRecord(), er.GetEnrichment()
		if rec.GetDeviceId() != "truck-7" || rec.GetReceivedMs() != recv || !proto.Equal(rec.GetReading(), u.Readings[i]) ||
			e.GetFleet() != "acme" || e.GetVehicleClass() != "truck" || e.GetRegion() != "za-gp" {
			t.Errorf("record %d: %v", i, er)
		}
	}
	// The generated code writes the same bytes (one extra value: no map order to vary).
	b := &Batch{}
	for _, r := range u.Readings {
		b.Records = append(b.Records, &Record{DeviceId: "truck-7", ReceivedMs: recv, Reading: r})
	}
	if m, err := proto.Marshal(b); err != nil || !bytes.Equal(m, unhex(goldenEntry)) {
		t.Errorf("proto.Marshal of the entry's Batch differs from the golden entry (%v)", err)
	}
	if u.Readings[1].Extra["tyre_fl_kpa"] != 812.5 {
		t.Errorf("extra %v", u.Readings[1].Extra)
	}
}
