package queue

import (
	"bytes"
	"context"
	"fmt"
	"testing"
)

// TestLargeRecordsRead: records that do not fit in the read-ahead chunk are
// read into buffers of their own (readBody), smaller ones through the
// read-ahead buffer; interleaved, across segments and a restart, every
// entry reads back whole and in order, and a batch given back (Nack) is
// read again intact after later reads reused the read-ahead buffer.
func TestLargeRecordsRead(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	opts := Options{ItemsPerSegment: 3, MaxRecordBytes: 1 << 20}
	q := openT(t, dir, opts)
	var want [][]byte
	for i := range 10 {
		size := 40
		if i%3 == 0 {
			size = readChunk + 1000*i // past the read-ahead: a buffer of its own
		}
		e := bytes.Repeat([]byte{byte('a' + i)}, size)
		e = append(e, fmt.Appendf(nil, "#%d", i)...)
		if _, err := q.Append(ctx, e, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		want = append(want, e, []byte{byte(i)})
	}
	check := func(got []Entry) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("read %d entries, want %d", len(got), len(want))
		}
		for i, e := range got {
			if !bytes.Equal(e.Data, want[i]) {
				t.Fatalf("entry %d: %d bytes ending %q, want %d ending %q", i, len(e.Data), e.Data[max(0, len(e.Data)-4):], len(want[i]), want[i][max(0, len(want[i])-4):])
			}
		}
	}
	first, err := q.Read(ctx, 1) // the first record alone
	if err != nil {
		t.Fatal(err)
	}
	rest := readAll(t, q)
	q.Nack(first)
	again, err := q.Read(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	check(append(again.Entries, rest...))
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openT(t, dir, opts)
	defer q.Close()
	check(readAll(t, q))
}
