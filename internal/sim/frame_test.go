package sim

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/telemetry"
)

// TestAppendUplinkSamples holds the simulator's own binary encoder (frame.go) to protobuf-go's:
// frames of the vehicle model's readings, of every class and with events, decode (the frontend's
// full decode and validation) to the very Readings the protobuf path builds, pass the frontend's
// fast scan with their seqs in order, and are byte for byte what proto.Marshal writes wherever
// the encoding is deterministic (at most one extra entry: protobuf-go writes maps in random
// order).
func TestAppendUplinkSamples(t *testing.T) {
	now := time.Now()
	out := newOutbox(1 << 12)
	var seq uint64 = 1
	for i, class := range []string{"truck", "bus", "car"} {
		v := newVehicle(rand.New(rand.NewPCG(uint64(i), 11)), class)
		v.eventRate = 600 // events every few seconds of driving: extra entries are common
		for range 1000 {
			s := out.push()
			v.step(0.5, s)
			s.seq, s.timeMs = seq, now.Add(-time.Hour+time.Duration(seq)*time.Millisecond).UnixMilli()
			seq += 1 + seq%3 // gaps are allowed; order is not broken
		}
	}
	// All three events at once: the longest reading, whose length takes two bytes.
	s := out.push()
	*s = *out.at(out.len() - 2)
	s.seq, s.timeMs, s.events = seq, now.UnixMilli(), evHarshBraking|evOverheating|evSpeeding

	var events, multi, exact, long int
	var buf []byte
	scratch := make([]*frameReading, 50)
	for i := range scratch {
		scratch[i] = newFrameReading()
	}
	for i := 0; i < out.len(); i += 50 {
		k := min(50, out.len()-i)
		want := &telemetry.Uplink{}
		deterministic := true
		for j := range k {
			s := out.at(i + j)
			want.Readings = append(want.Readings, proto.Clone(scratch[j].fill(s)).(*telemetry.Reading))
			if s.events != 0 {
				events++
			}
			if n := len(want.Readings[j].Extra); n > 1 {
				multi++
				deterministic = false
			}
		}
		buf = appendUplink(buf[:0], out, i, k)

		got, err := telemetry.DecodeUplink(buf, false, now, telemetry.Limits{})
		if err != nil {
			t.Fatalf("frame at %d: the frontend refuses it: %v", i, err)
		}
		if !proto.Equal(got, want) {
			t.Fatalf("frame at %d decodes to\n%v\nwant\n%v", i, got, want)
		}
		refs, ok := telemetry.ScanUplink(buf, now, telemetry.Limits{}, nil)
		if !ok || len(refs) != k {
			t.Fatalf("frame at %d: ScanUplink ok=%v with %d readings, want ok with %d", i, ok, len(refs), k)
		}
		for j, r := range refs {
			if r.Seq != want.Readings[j].GetSeq() || (j > 0 && r.Seq <= refs[j-1].Seq) {
				t.Fatalf("frame at %d: reading %d has seq %d, want %d, increasing", i, j, r.Seq, want.Readings[j].GetSeq())
			}
			if len(r.Raw) >= 0x80 {
				long++
			}
		}
		if deterministic {
			ref, err := proto.Marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, ref) {
				t.Fatalf("frame at %d: bytes differ from proto.Marshal's\n got %x\nwant %x", i, buf, ref)
			}
			exact++
		}
	}
	// The cases above must have been met, or the test proves less than it says.
	if events == 0 || multi == 0 || exact == 0 || long == 0 {
		t.Fatalf("coverage: %d readings with events, %d with several, %d frames compared byte for byte, %d long readings", events, multi, exact, long)
	}
	t.Logf("%d readings: %d with events, %d with several; %d of %d frames byte-identical", out.len(), events, multi, exact, (out.len()+49)/50)
}
