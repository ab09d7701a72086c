package queue

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func openCursorT(t testing.TB, q *Queue, name string, opts CursorOptions) *Cursor {
	t.Helper()
	c, err := q.OpenCursor(name, opts)
	if err != nil {
		t.Fatalf("open cursor %s: %v", name, err)
	}
	return c
}

// readCursor reads n entries (or everything there is, n < 0) without
// acking them.
func readCursor(t testing.TB, c *Cursor, n int) ([]Entry, []Batch) {
	t.Helper()
	var out []Entry
	var bs []Batch
	for n < 0 || len(out) < n {
		max := 1 << 20
		if n >= 0 {
			max = 1 // whole records of one entry each below
		}
		b, err := c.TryRead(max)
		if err != nil {
			t.Fatalf("cursor %s read: %v", c.Name(), err)
		}
		if len(b.Entries) == 0 {
			break
		}
		out = append(out, b.Entries...)
		bs = append(bs, b)
	}
	return out, bs
}

func appendPayloads(t testing.TB, q *Queue, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := q.Append(context.Background(), payload(i)); err != nil {
			t.Fatal(err)
		}
	}
}

func wantPayloads(t testing.TB, what string, got []Entry, from, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%s: %d entries, want %d", what, len(got), n)
	}
	for i, e := range got {
		if string(e.Data) != string(payload(from+i)) {
			t.Fatalf("%s: entry %d is %q, want %q", what, i, e.Data, payload(from+i))
		}
	}
}

func depthIs(t testing.TB, q *Queue, want int64) {
	t.Helper()
	waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == want })
}

// TestCursorsReadAtTheirOwnPace: two cursors read one queue; each gets
// every entry, a record leaves the disk only when both have acked it, a
// restart resumes each where it was, and deleting the slow one frees what
// only it held.
func TestCursorsReadAtTheirOwnPace(t *testing.T) {
	dir := t.TempDir()
	opts := Options{ItemsPerSegment: 4, RemovalSyncInterval: time.Millisecond}
	q := openT(t, dir, opts)
	fast := openCursorT(t, q, "fast", CursorOptions{Start: StartHead})
	slow := openCursorT(t, q, "slow", CursorOptions{Start: StartHead})
	appendPayloads(t, q, 0, 40)

	got, bs := readCursor(t, fast, -1)
	wantPayloads(t, "fast", got, 0, 40)
	for _, b := range bs {
		fast.Ack(b)
	}
	if e, _ := fast.Lag(); e != 0 {
		t.Fatalf("fast lag %d after acking everything", e)
	}
	// Nothing may go: slow has read nothing.
	time.Sleep(20 * time.Millisecond) // a removal would have run by now; the check below is what must hold
	if n, _ := q.Depth(); n != 40 {
		t.Fatalf("depth %d while the slow cursor has passed nothing, want 40", n)
	}
	got, bs = readCursor(t, slow, 10)
	wantPayloads(t, "slow", got, 0, 10)
	// Acked out of order: nothing passes until the first is acked.
	for _, b := range bs[1:] {
		slow.Ack(b)
	}
	if e, _ := slow.Lag(); e != 40 {
		t.Fatalf("slow lag %d with its first batch unacked, want 40", e)
	}
	slow.Ack(bs[0])
	depthIs(t, q, 30)
	if e, _ := slow.Lag(); e != 30 {
		t.Fatalf("slow lag %d, want 30", e)
	}
	// Nack and Rewind give back to this cursor only.
	got, bs = readCursor(t, slow, 2)
	slow.Nack(bs[0])
	slow.Rewind()
	again, _ := readCursor(t, slow, 2)
	wantPayloads(t, "slow after rewind", again, 10, 2)
	_ = got
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	q, err := Open(dir, opts, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if got := q.CursorNames(); len(got) != 2 {
		t.Fatalf("cursors after reopen: %v", got)
	}
	fast = openCursorT(t, q, "fast", CursorOptions{})
	slow = openCursorT(t, q, "slow", CursorOptions{})
	if _, err := q.OpenCursor("slow", CursorOptions{}); err == nil {
		t.Fatal("a cursor opened twice")
	}
	if got, _ := readCursor(t, fast, -1); len(got) != 0 {
		t.Fatalf("fast cursor read %d entries again after a clean restart", len(got))
	}
	got, _ = readCursor(t, slow, -1)
	wantPayloads(t, "slow after reopen", got, 10, 30)
	if v := testutil.ToFloat64(q.m.cursorLagEntries.WithLabelValues("slow")); v != 30 {
		t.Fatalf("lag metric of slow: %v, want 30", v)
	}
	slow.Rewind()
	if err := q.DeleteCursor("slow"); err != nil {
		t.Fatal(err)
	}
	depthIs(t, q, 0)
	if _, err := slow.TryRead(100); !errors.Is(err, ErrClosed) {
		t.Fatalf("read of a deleted cursor: %v, want ErrClosed", err)
	}
	if _, err := os.Stat(filepath.Join(dir, cursorsName, "slow")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("deleted cursor's file: %v", err)
	}
}

// TestCursorStartsAtTail: a new cursor gets what is appended after it was
// made, not what the queue held; StartHead gets that too.
func TestCursorStartsAtTail(t *testing.T) {
	q := openT(t, t.TempDir(), Options{ItemsPerSegment: 4})
	defer q.Close()
	appendPayloads(t, q, 0, 5)
	tail := openCursorT(t, q, "tail", CursorOptions{})
	head := openCursorT(t, q, "head", CursorOptions{Start: StartHead})
	appendPayloads(t, q, 5, 3)
	got, _ := readCursor(t, tail, -1)
	wantPayloads(t, "tail", got, 5, 3)
	got, _ = readCursor(t, head, -1)
	wantPayloads(t, "head", got, 0, 8)
	if _, err := q.OpenCursor("../x", CursorOptions{}); err == nil {
		t.Fatal("a cursor name that is a path was taken")
	}
}

// TestCursorRepair: what a crash or damage can leave in a cursor file, and
// where the cursor then reads from. Never later than what it had acked.
func TestCursorRepair(t *testing.T) {
	opts := Options{ItemsPerSegment: 4, RemovalSyncInterval: time.Millisecond}
	// setup: 20 entries; cursor "a" acked 8 and holds the head; cursor "b"
	// acked all 20. Returns the dir and a's file.
	setup := func(t *testing.T) (string, []byte) {
		dir := t.TempDir()
		q := openT(t, dir, opts)
		t.Cleanup(func() { q.Close() }) // a failed check must not leave it open
		a := openCursorT(t, q, "a", CursorOptions{Start: StartHead})
		b := openCursorT(t, q, "b", CursorOptions{Start: StartHead})
		appendPayloads(t, q, 0, 20)
		_, bs := readCursor(t, a, 8)
		for _, x := range bs {
			a.Ack(x)
		}
		_, bs = readCursor(t, b, -1)
		for _, x := range bs {
			b.Ack(x)
		}
		depthIs(t, q, 12)
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		f, err := os.ReadFile(filepath.Join(dir, cursorsName, "a"))
		if err != nil {
			t.Fatal(err)
		}
		return dir, f
	}
	reopen := func(t *testing.T, dir string) (*Queue, *prometheus.Registry) {
		reg := prometheus.NewRegistry()
		q, err := Open(dir, opts, nil, reg)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		t.Cleanup(func() { q.Close() })
		return q, reg
	}
	writeA := func(t *testing.T, dir string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, cursorsName, "a"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("clean", func(t *testing.T) {
		dir, _ := setup(t)
		q, _ := reopen(t, dir)
		got, _ := readCursor(t, openCursorT(t, q, "a", CursorOptions{}), -1)
		wantPayloads(t, "a", got, 8, 12)
	})
	t.Run("torn file", func(t *testing.T) {
		dir, f := setup(t)
		writeA(t, dir, f[:11])
		q, _ := reopen(t, dir)
		got, _ := readCursor(t, openCursorT(t, q, "a", CursorOptions{}), -1)
		wantPayloads(t, "a from the head", got, 8, 12) // the head is where a was
		if v := testutil.ToFloat64(q.m.repairs.WithLabelValues("cursor_damaged")); v != 1 {
			t.Fatalf("cursor_damaged repairs %v, want 1", v)
		}
	})
	t.Run("bad checksum", func(t *testing.T) {
		dir, f := setup(t)
		f[3] ^= 1
		writeA(t, dir, f)
		q, _ := reopen(t, dir)
		got, _ := readCursor(t, openCursorT(t, q, "a", CursorOptions{}), -1)
		wantPayloads(t, "a from the head", got, 8, 12)
	})
	t.Run("older than the head", func(t *testing.T) {
		dir, _ := setup(t)
		writeA(t, dir, cursorFile(pos{1, 0})) // segment 1 was deleted
		q, _ := reopen(t, dir)
		got, _ := readCursor(t, openCursorT(t, q, "a", CursorOptions{}), -1)
		wantPayloads(t, "a", got, 8, 12)
		if v := testutil.ToFloat64(q.m.repairs.WithLabelValues("cursor_moved")); v != 1 {
			t.Fatalf("cursor_moved repairs %v, want 1", v)
		}
	})
	t.Run("past the end", func(t *testing.T) {
		dir, _ := setup(t)
		writeA(t, dir, cursorFile(pos{99, 0}))
		q, _ := reopen(t, dir)
		a := openCursorT(t, q, "a", CursorOptions{})
		if got, _ := readCursor(t, a, -1); len(got) != 0 {
			t.Fatalf("cursor past the end read %d entries", len(got))
		}
		appendPayloads(t, q, 20, 1)
		got, _ := readCursor(t, a, -1)
		wantPayloads(t, "a after an append", got, 20, 1)
	})
	t.Run("inside a record", func(t *testing.T) {
		dir, f := setup(t)
		p, err := parseCursorFile(f)
		if err != nil {
			t.Fatal(err)
		}
		writeA(t, dir, cursorFile(pos{p.seg, p.off + 9}))
		q, _ := reopen(t, dir)
		got, _ := readCursor(t, openCursorT(t, q, "a", CursorOptions{}), -1)
		wantPayloads(t, "a from the record's start", got, 8, 12)
	})
	t.Run("temporary file ignored", func(t *testing.T) {
		dir, _ := setup(t)
		if err := os.WriteFile(filepath.Join(dir, cursorsName, ".a.tmp123"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
		q, _ := reopen(t, dir)
		if got := q.CursorNames(); len(got) != 2 {
			t.Fatalf("cursors %v", got)
		}
	})
}

// TestCursorLagAndFull: the lag is what the cursor has not acked; past its
// bound the cursor is full, and only that cursor.
func TestCursorLagAndFull(t *testing.T) {
	q := openT(t, t.TempDir(), Options{MaxBytes: -1})
	defer q.Close()
	a := openCursorT(t, q, "a", CursorOptions{MaxBytes: 100})
	b := openCursorT(t, q, "b", CursorOptions{MaxBytes: 100})
	appendPayloads(t, q, 0, 10) // 10 × (1 + 12) bytes
	if e, by := a.Lag(); e != 10 || by != 130 {
		t.Fatalf("lag %d entries %d bytes, want 10 and 130", e, by)
	}
	if !a.Full() || !b.Full() {
		t.Fatal("cursors past their bound are not full")
	}
	_, bs := readCursor(t, b, -1)
	for _, x := range bs {
		b.Ack(x)
	}
	if !a.Full() || b.Full() {
		t.Fatalf("a full %v, b full %v: want only a", a.Full(), b.Full())
	}
	if v := testutil.ToFloat64(q.m.cursorFill.WithLabelValues("a")); v != 1.3 {
		t.Fatalf("fill ratio of a %v, want 1.3", v)
	}
	if _, err := parseCursorFile(append(cursorFile(pos{1, 2}), 0)); err == nil {
		t.Fatal("a cursor file of 21 bytes parsed")
	}
}

// TestScanLeavesConsumersAlone: Scan sees every entry and moves nothing.
func TestScanLeavesConsumersAlone(t *testing.T) {
	q := openT(t, t.TempDir(), Options{ItemsPerSegment: 4})
	defer q.Close()
	appendPayloads(t, q, 0, 9)
	n := 0
	if err := q.Scan(context.Background(), func(e Entry) error {
		if string(e.Data) != string(payload(n)) {
			t.Fatalf("scan entry %d: %q", n, e.Data)
		}
		n++
		return nil
	}); err != nil || n != 9 {
		t.Fatalf("scan: %d entries, %v", n, err)
	}
	wantPayloads(t, "read after scan", readAll(t, q), 0, 9)
}
