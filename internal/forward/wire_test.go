package forward

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/telemetry"
)

func TestMessageRoundTrip(t *testing.T) {
	for _, m := range []Message{
		{Type: TypeBatch, Sender: "frontend-0", First: 7, Last: 9, Entries: [][]byte{[]byte("a"), {}, []byte("ccc")}},
		{Type: TypeAck, First: 1, Last: 1},
		{Type: TypeBusy, First: 3, Last: 40, Reason: "queue full"},
		{Type: TypeReject, First: 3, Last: 4, Reason: "entry 0: bad"},
		{Type: TypePing, Nonce: 12345},
		{Type: TypePong, Nonce: 12345, Incarnation: 99, Router: "router-a"},
		{Type: TypeSubscribe, Nonce: 77, Name: "lake"},
		{Type: TypeBatch, Packed: true, Sender: "frontend-0", First: 7, Last: 9, Entries: [][]byte{[]byte("a"), {}, []byte("ccc")}},
		{Type: TypeSubscribe, Nonce: 0, Name: "influx-2_b"},
	} {
		frames, err := m.Frames()
		if err != nil {
			t.Fatalf("%s: Frames: %v", m.Type, err)
		}
		wantType := m.Type
		if m.Packed {
			wantType = TypePackedBatch
			if len(frames) != 2 {
				t.Errorf("packed batch in %d frames, want 2", len(frames))
			}
		}
		if frames[0][0] != Version || Type(frames[0][1]) != wantType {
			t.Errorf("%s: header starts %v, want version %d and type %d", m.Type, frames[0][:2], Version, wantType)
		}
		got, err := Decode(frames)
		if err != nil {
			t.Fatalf("%s: Decode: %v", m.Type, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%s: round trip gave %+v, want %+v", m.Type, got, m)
		}
	}
}

func TestEncodeRefuses(t *testing.T) {
	for name, m := range map[string]Message{
		"batch count":  {Type: TypeBatch, Sender: "f", First: 1, Last: 3, Entries: [][]byte{{1}}},
		"batch empty":  {Type: TypeBatch, Sender: "f", First: 1, Last: 1},
		"batch sender": {Type: TypeBatch, Sender: "a/b", First: 1, Last: 1, Entries: [][]byte{{1}}},
		"seq 0":        {Type: TypeAck, First: 0, Last: 1},
		"reversed":     {Type: TypeBusy, First: 5, Last: 4},
		"pong router":  {Type: TypePong, Router: ""},
		"unknown type": {Type: 99},
		"sub empty":    {Type: TypeSubscribe, Nonce: 1},
		"sub upper":    {Type: TypeSubscribe, Nonce: 1, Name: "Lake"},
		"sub slash":    {Type: TypeSubscribe, Nonce: 1, Name: "a/b"},
		"sub dash":     {Type: TypeSubscribe, Nonce: 1, Name: "-a"},
		"sub long":     {Type: TypeSubscribe, Nonce: 1, Name: strings.Repeat("a", MaxSubscriberNameLen+1)},
	} {
		if _, err := m.Frames(); err == nil {
			t.Errorf("%s: Frames accepted %+v", name, m)
		}
	}
	long := Message{Type: TypeBusy, First: 1, Last: 1, Reason: strings.Repeat("é", MaxReasonLen)}
	frames, err := long.Frames()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(frames)
	if err != nil || len(got.Reason) > MaxReasonLen || !strings.HasPrefix(long.Reason, got.Reason) {
		t.Errorf("long reason: decoded %q (%d bytes), %v", got.Reason, len(got.Reason), err)
	}
}

func TestDecodeErrors(t *testing.T) {
	batch, _ := Message{Type: TypeBatch, Sender: "f", First: 1, Last: 2, Entries: [][]byte{{1}, {2}}}.Frames()
	ack, _ := Message{Type: TypeAck, First: 1, Last: 2}.Frames()
	packed, _ := Message{Type: TypeBatch, Packed: true, Sender: "f", First: 1, Last: 2, Entries: [][]byte{{1}, {2}}}.Frames()
	for _, tc := range []struct {
		name   string
		frames [][]byte
		want   error
	}{
		{"no frames", nil, ErrMalformed},
		{"short header", [][]byte{{Version}}, ErrMalformed},
		{"version", [][]byte{{Version + 1, byte(TypeAck)}}, ErrVersion},
		{"unknown type", [][]byte{{Version, 200}}, ErrUnknownType},
		{"missing entry", batch[:2], ErrMalformed},
		{"extra entry", append(append([][]byte{}, batch...), []byte{3}), ErrMalformed},
		{"ack with entries", append(append([][]byte{}, ack...), []byte{3}), ErrMalformed},
		{"ack too long", [][]byte{append(append([]byte{}, ack[0]...), 'x')}, ErrMalformed},
		{"ping short", [][]byte{{Version, byte(TypePing), 1}}, ErrMalformed},
		{"batch no sender", [][]byte{batch[0][:hdrBase+hdrRange], {1}, {2}}, ErrMalformed},
		{"packed no entries", [][]byte{packed[0], {}}, ErrMalformed},
		{"packed short entry", [][]byte{packed[0], {5, 'a'}}, ErrMalformed},
		{"packed count", [][]byte{packed[0], {1, 'a'}}, ErrMalformed},
		{"packed extra frame", [][]byte{packed[0], packed[1], {1}}, ErrMalformed},
		{"subscribe no name", [][]byte{{Version, byte(TypeSubscribe), 0, 0, 0, 0, 0, 0, 0, 1}}, ErrMalformed},
		{"subscribe bad name", [][]byte{append([]byte{Version, byte(TypeSubscribe), 0, 0, 0, 0, 0, 0, 0, 1}, "../x"...)}, ErrMalformed},
		{"subscribe with entries", [][]byte{append([]byte{Version, byte(TypeSubscribe), 0, 0, 0, 0, 0, 0, 0, 1}, "lake"...), {1}}, ErrMalformed},
	} {
		if _, err := Decode(tc.frames); !errors.Is(err, tc.want) {
			t.Errorf("%s: Decode error %v, want %v", tc.name, err, tc.want)
		}
	}
	m, err := Decode([][]byte{{Version, 200}})
	if m.Type != 200 || !errors.Is(err, ErrUnknownType) {
		t.Errorf("unknown type: got %v, %v; want the type kept", m.Type, err)
	}
}

func entryOf(t testing.TB, recs ...*telemetry.Record) []byte {
	t.Helper()
	b, err := proto.Marshal(&telemetry.Batch{Records: recs})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rec(dev string, seq uint64) *telemetry.Record {
	return &telemetry.Record{DeviceId: dev, ReceivedMs: 1_763_899_200_000, Reading: &telemetry.Reading{Seq: seq, TimeMs: 1_763_899_200_000}}
}

// TestStoredMerges checks the router entry format: concatenated entries and
// a trailer decode as one Batch, and ParseStored reads it without decoding.
func TestStoredMerges(t *testing.T) {
	entries := [][]byte{
		entryOf(t, rec("dev-a", 1), rec("dev-a", 2)),
		entryOf(t), // a frame may be empty of records
		entryOf(t, rec("dev-b", 7)),
	}
	e := AppendStored(nil, "frontend-3", 40, 42, entries)
	if len(e) != StoredSize("frontend-3", 40, 42, entries) {
		t.Errorf("StoredSize = %d, entry is %d bytes", StoredSize("frontend-3", 40, 42, entries), len(e))
	}
	var b telemetry.Batch
	if err := proto.Unmarshal(e, &b); err != nil {
		t.Fatal(err)
	}
	if b.Sender != "frontend-3" || b.Seq != 40 || b.LastSeq != 42 || len(b.Records) != 3 {
		t.Fatalf("decoded sender %q seq %d..%d with %d records", b.Sender, b.Seq, b.LastSeq, len(b.Records))
	}
	if b.Records[2].DeviceId != "dev-b" || b.Records[2].Reading.Seq != 7 {
		t.Errorf("third record %v", b.Records[2])
	}
	// The trailer is what proto.Marshal writes for the same header.
	hdr, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&telemetry.Batch{Sender: "frontend-3", Seq: 40, LastSeq: 42})
	if !bytes.HasSuffix(e, hdr) {
		t.Errorf("trailer %x is not the marshalled header %x", e[len(e)-len(hdr):], hdr)
	}
	si, err := ParseStored(e)
	if err != nil {
		t.Fatal(err)
	}
	if si != (StoredInfo{Sender: "frontend-3", First: 40, Last: 42, Records: 3}) {
		t.Errorf("ParseStored = %+v", si)
	}
	if n, err := CountRecords(entries[0]); n != 2 || err != nil {
		t.Errorf("CountRecords = %d, %v; want 2", n, err)
	}
	if _, err := CountRecords([]byte{0x1a, 0x05, 1}); !errors.Is(err, ErrMalformed) {
		t.Errorf("CountRecords of a cut record: %v, want ErrMalformed", err)
	}
	if _, err := ParseStored(entries[0]); !errors.Is(err, ErrMalformed) {
		t.Errorf("ParseStored of an entry without trailer: %v, want ErrMalformed", err)
	}
}
