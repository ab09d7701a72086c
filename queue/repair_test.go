package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/joncrlsn/dque"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestRepairDamage is the damage table: each case builds the same queue
// (14 one-entry records in segments of 4, the first 2 consumed), damages
// its files as a crash or the disk could, and checks what Open makes of it:
// which entries survive, which repair is counted, and that the queue then
// drains to empty and takes appends. dqueFails says whether dque on its own
// refuses (or stalls on) the damaged folder, i.e. whether the case is real.
func TestRepairDamage(t *testing.T) {
	const perSeg = 4
	all := func(from, to int) []int { // entries from..to inclusive
		var out []int
		for i := from; i <= to; i++ {
			out = append(out, i)
		}
		return out
	}
	seg := func(dir string, n int) string { return segmentFile(filepath.Join(dir, segmentsName), n) }
	appendBytes := func(t *testing.T, path string, b []byte) {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	itemOffsets := func(t *testing.T, path string) []int64 {
		s, err := scanSegment(path, 0)
		if err != nil {
			t.Fatal(err)
		}
		var offs []int64
		for _, it := range s.items {
			offs = append(offs, it.off)
		}
		return offs
	}
	cases := []struct {
		name      string
		damage    func(t *testing.T, dir string)
		reopenIPS int   // ItemsPerSegment at reopen (0: same)
		want      []int // entries expected after repair
		repair    string
		dqueFails bool
	}{
		{
			name:   "clean",
			damage: func(*testing.T, string) {},
			want:   all(2, 13),
		},
		{
			name:      "torn length",
			damage:    func(t *testing.T, dir string) { appendBytes(t, seg(dir, 4), []byte{0x40, 0x01}) },
			want:      all(2, 13),
			repair:    repairTornTail,
			dqueFails: true,
		},
		{
			name: "torn body",
			damage: func(t *testing.T, dir string) {
				b := binary.LittleEndian.AppendUint32(nil, 300)
				appendBytes(t, seg(dir, 4), append(b, bytes.Repeat([]byte{7}, 100)...))
			},
			want:      all(2, 13),
			repair:    repairTornTail,
			dqueFails: true,
		},
		{
			name: "last record cut short",
			damage: func(t *testing.T, dir string) {
				p := seg(dir, 4)
				st, _ := os.Stat(p)
				os.Truncate(p, st.Size()-10)
			},
			want:      all(2, 12), // entry 13 was being written: never acked
			repair:    repairTornTail,
			dqueFails: true,
		},
		{
			name: "garbage segment",
			damage: func(t *testing.T, dir string) {
				p := seg(dir, 2)
				st, _ := os.Stat(p)
				os.WriteFile(p, bytes.Repeat([]byte{0xAB}, int(st.Size())), 0o644)
			},
			want:      append(all(2, 3), all(8, 13)...), // segment 2 held 4..7
			repair:    repairQuarantine,
			dqueFails: true,
		},
		{
			name: "bit flip inside a record",
			damage: func(t *testing.T, dir string) {
				p := seg(dir, 3)
				offs := itemOffsets(t, p)
				b, _ := os.ReadFile(p)
				b[offs[2]+20] ^= 0x10 // third record of segment 3 (entry 10)
				os.WriteFile(p, b, 0o644)
			},
			want:   append(all(2, 9), all(12, 13)...), // 8, 9 kept; 10, 11 after the flip lost
			repair: repairQuarantine,
			// dque decodes gob without a checksum: it may accept the flip and
			// hand out a damaged record. Our CRC catches it.
		},
		{
			name:      "missing segment file",
			damage:    func(t *testing.T, dir string) { os.Remove(seg(dir, 3)) },
			want:      append(all(2, 7), all(12, 13)...),
			repair:    repairMissing,
			dqueFails: true,
		},
		{
			name: "consumed segment not deleted",
			damage: func(t *testing.T, dir string) {
				// Segment 1 has 4 items and 2 markers; two more markers
				// consume it, as if the crash came before its unlink.
				appendBytes(t, seg(dir, 1), make([]byte, 8))
			},
			want:      all(4, 13),
			repair:    repairConsumed,
			dqueFails: true,
		},
		{
			name: "excess delete markers",
			damage: func(t *testing.T, dir string) {
				appendBytes(t, seg(dir, 1), make([]byte, 4*5)) // 2 consume, 3 excess
			},
			want:      all(4, 13),
			repair:    repairExcessMarkers,
			dqueFails: true,
		},
		{
			name:      "items per segment changed",
			damage:    func(*testing.T, string) {},
			reopenIPS: 8,
			want:      all(2, 13),
			repair:    repairPadding,
			dqueFails: false, // dque opens, but stalls after segment 1
		},
		{
			name: "foreign files",
			damage: func(t *testing.T, dir string) {
				os.WriteFile(filepath.Join(dir, segmentsName, "notes.txt"), []byte("x"), 0o644)
				os.WriteFile(filepath.Join(dir, segmentsName, "0000000000009.dque.bak"), []byte("x"), 0o644)
			},
			want: all(2, 13),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ctx := context.Background()
			q := openT(t, dir, Options{ItemsPerSegment: perSeg})
			for i := range 14 {
				if _, err := q.Append(ctx, payload(i)); err != nil {
					t.Fatal(err)
				}
			}
			for range 2 {
				b, _ := q.Read(ctx, 1)
				q.Ack(b)
			}
			waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == 12 })
			q.Close()
			tc.damage(t, dir)

			if tc.dqueFails {
				if ok := dqueDrains(t, dir, perSeg); ok {
					t.Fatalf("dque alone opened and drained the damaged queue: the case does not test a repair")
				}
			}

			ips := perSeg
			if tc.reopenIPS != 0 {
				ips = tc.reopenIPS
			}
			reg := prometheus.NewRegistry()
			q, err := Open(dir, Options{ItemsPerSegment: ips}, nil, reg)
			if err != nil {
				t.Fatalf("open after damage: %v", err)
			}
			defer q.Close()
			if tc.repair != "" {
				if n := testutil.ToFloat64(q.m.repairs.WithLabelValues(tc.repair)); n < 1 {
					t.Fatalf("repair %q not counted", tc.repair)
				}
			}
			if tc.repair == repairQuarantine {
				ents, _ := os.ReadDir(filepath.Join(dir, "quarantine"))
				if len(ents) != 1 {
					t.Fatalf("quarantine holds %d files, want 1", len(ents))
				}
			}
			var got []int
			for _, e := range readAll(t, q) {
				var i int
				fmt.Sscanf(string(e.Data), "entry-%d", &i)
				got = append(got, i)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("after repair: entries %v, want %v", got, tc.want)
			}
			if n, _ := q.Depth(); n != int64(len(tc.want)) {
				t.Fatalf("depth %d, want %d", n, len(tc.want))
			}
			// It drains to the end and goes on working.
			q.Rewind()
			for {
				b, _ := q.TryRead(1 << 20)
				if len(b.Entries) == 0 {
					break
				}
				q.Ack(b)
			}
			waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == 0 })
			if _, err := q.Append(ctx, []byte("after")); err != nil {
				t.Fatalf("append after repair: %v", err)
			}
			b, err := q.Read(ctx, 1<<20)
			if err != nil || string(b.Entries[0].Data) != "after" {
				t.Fatalf("read after repair: %v %v", b.Entries, err)
			}
		})
	}
}

// dqueDrains opens a copy of the queue's segments with dque alone and
// dequeues until dque says empty; it reports whether that worked and
// reached every item dque counts.
func dqueDrains(t *testing.T, dir string, perSeg int) bool {
	t.Helper()
	cp := t.TempDir()
	src := filepath.Join(dir, segmentsName)
	if err := os.MkdirAll(filepath.Join(cp, segmentsName), 0o755); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(src, e.Name()))
		os.WriteFile(filepath.Join(cp, segmentsName, e.Name()), b, 0o644)
	}
	dq, err := dque.Open(segmentsName, cp, perSeg, newRecordObject)
	if err != nil {
		return false
	}
	defer dq.Close()
	size := dq.Size()
	for n := 0; ; n++ {
		if _, err := dq.Dequeue(); err != nil {
			return err == dque.ErrEmpty && n == size
		}
	}
}

// TestRepairLoneConsumedSegment: a crash between dque writing the last
// delete marker of a lone, full segment and deleting the file leaves a
// consumed segment and nothing else. The queue must go on removing what is
// acked after the restart (else every acked entry comes back after the next
// one).
func TestRepairLoneConsumedSegment(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	opts := Options{ItemsPerSegment: 4}
	q, err := Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if _, err := q.Append(ctx, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	// What dque leaves when it is killed after the fourth marker: the
	// segment with its four records and four delete markers.
	segs, _ := filepath.Glob(filepath.Join(dir, "*", "*.dque"))
	if len(segs) != 1 {
		t.Fatalf("segments: %v, want one", segs)
	}
	f, err := os.OpenFile(segs[0], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(make([]byte, 16))
	f.Close()

	q, err = Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Append(ctx, []byte("after")); err != nil {
		t.Fatal(err)
	}
	b, err := q.Read(ctx, 1<<20)
	if err != nil || len(b.Entries) != 1 || string(b.Entries[0].Data) != "after" {
		t.Fatalf("read %v, %v; want the one entry appended after the restart", b.Entries, err)
	}
	q.Ack(b)
	waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == 0 })
	q.Close()

	q, err = Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if n, _ := q.Depth(); n != 0 {
		t.Fatalf("depth %d after a restart; want 0: the acked entry was not removed", n)
	}
}
