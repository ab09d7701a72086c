package telemetry

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"
)

// The router's byte-level path (WalkBatchRecords, AppendEnrichment, AppendPublishBatch) writes
// what proto.Marshal writes for the PublishBatch built from the decoded Batch.
func TestPublishBatchMatchesMarshal(t *testing.T) {
	in := &Batch{Sender: "fe-1", Seq: 7, LastSeq: 9}
	for i, r := range typicalFrame(6, 100, testNow).Readings {
		in.Records = append(in.Records, &Record{DeviceId: []string{"a", "a", "b", "", "c", "a"}[i], ReceivedMs: testNow.UnixMilli(), Reading: r})
	}
	data, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	enrich := map[string]*Enrichment{"a": {Fleet: "f1", VehicleClass: "truck", Region: "za"}, "c": {Region: "zw"}}
	for _, withReg := range []bool{true, false} {
		want := &PublishBatch{Router: "rt-1", Seq: 42}
		var recs []RawEnriched
		var devs []string
		err := WalkBatchRecords(data, func(rec, dev []byte) {
			devs = append(devs, string(dev))
			re := RawEnriched{Record: rec, HasEnrichment: withReg}
			er := &EnrichedRecord{Record: in.Records[len(recs)]}
			if withReg {
				e := enrich[string(dev)]
				if e == nil {
					e = &Enrichment{}
				}
				re.Enrichment = AppendEnrichment(nil, e.Fleet, e.VehicleClass, e.Region)
				er.Enrichment = e
			}
			recs = append(recs, re)
			want.Records = append(want.Records, er)
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(devs) != len(in.Records) || devs[2] != "b" || devs[3] != "" {
			t.Fatalf("devices %q", devs)
		}
		wantBytes, err := proto.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendPublishBatch(nil, "rt-1", 42, recs)
		if !bytes.Equal(got, wantBytes) {
			t.Fatalf("withReg=%v: AppendPublishBatch differs from proto.Marshal", withReg)
		}
		if n := PublishBatchSize("rt-1", 42, recs); n != len(got) {
			t.Fatalf("PublishBatchSize %d, encoded %d", n, len(got))
		}
	}
}

func TestWalkBatchRecordsMalformed(t *testing.T) {
	good, _ := proto.Marshal(&Batch{Records: []*Record{{DeviceId: "a", Reading: &Reading{Seq: 1}}}})
	for name, b := range map[string][]byte{
		"truncated":        good[:len(good)-1],
		"bad tag":          {0xff},
		"record bad field": {0x1a, 0x02, 0x0a, 0x05},
	} {
		if err := WalkBatchRecords(b, func(_, _ []byte) {}); !errors.Is(err, ErrMalformedBatch) {
			t.Errorf("%s: err %v, want ErrMalformedBatch", name, err)
		}
	}
}

func TestAppendAckMatchesEncodeDownlink(t *testing.T) {
	for _, seq := range []uint64{0, 1, 127, 128, 1 << 35, MaxSeq, 1<<64 - 1} {
		want, err := EncodeDownlink(NewAck(seq), false)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendAck(nil, seq); !bytes.Equal(got, want) {
			t.Errorf("seq %d: AppendAck % x, EncodeDownlink % x", seq, got, want)
		}
	}
}
