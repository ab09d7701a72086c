package telemetry

import (
	"math/rand/v2"
	"testing"
)

// TestParseAck: a device's fast path for acks reads the seq of every ack a frontend writes, and
// takes nothing DecodeDownlink would read otherwise: for any bytes it accepts, DecodeDownlink
// gives an Ack of the same seq.
func TestParseAck(t *testing.T) {
	for _, seq := range []uint64{0, 1, 127, 128, 1 << 32, 1<<63 - 1, 1<<64 - 1} {
		b := AppendAck(nil, seq)
		got, ok := ParseAck(b)
		if !ok || got != seq {
			t.Errorf("ParseAck(AppendAck(%d)) = %d, %v", seq, got, ok)
		}
	}
	others := [][]byte{
		nil,
		mustEncodeDownlinkAck(t, NewError(1, "no")),
		mustEncodeDownlinkAck(t, NewReportAck([]string{"c1"})),
		append(AppendAck(nil, 5), 0x08, 0x01),                                    // a second field
		{0x0a, 0x04, 0x08, 0x05, 0x10, 0x01},                                     // an Ack with an unknown field
		{0x0a, 0x03, 0x08, 0x05},                                                 // truncated
		{0x0a, 0x02, 0x08, 0x80},                                                 // malformed varint
		{0x0a, 0x09, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, // truncated varint
	}
	for _, b := range others {
		if seq, ok := ParseAck(b); ok {
			t.Errorf("ParseAck(% x) = %d, true; want it left to DecodeDownlink", b, seq)
		}
	}
	// Random mutations of acks: whatever ParseAck accepts, DecodeDownlink reads the same.
	rng := rand.New(rand.NewPCG(1, 2))
	accepted := 0
	for range 20000 {
		b := AppendAck(nil, rng.Uint64()>>rng.IntN(64))
		for range 1 + rng.IntN(2) {
			switch i := rng.IntN(len(b) + 1); {
			case i == len(b):
				b = append(b, byte(rng.IntN(256)))
			default:
				b[i] = byte(rng.IntN(256))
			}
		}
		seq, ok := ParseAck(b)
		if !ok {
			continue
		}
		accepted++
		dl, err := DecodeDownlink(b, false)
		if err != nil || dl.GetAck() == nil || dl.GetAck().GetSeq() != seq {
			t.Fatalf("ParseAck(% x) = %d, but DecodeDownlink gives %v, %v", b, seq, dl, err)
		}
	}
	if accepted == 0 {
		t.Fatal("no mutated ack was accepted: the comparison proves nothing")
	}
}

func mustEncodeDownlinkAck(t *testing.T, d *Downlink) []byte {
	t.Helper()
	b, err := EncodeDownlink(d, false)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
