package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

func openT(t testing.TB, dir string, opts Options) *Queue {
	t.Helper()
	q, err := Open(dir, opts, nil, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return q
}

// readAll reads everything committed without acking it.
func readAll(t testing.TB, q *Queue) []Entry {
	t.Helper()
	var out []Entry
	for {
		b, err := q.TryRead(1 << 20)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if len(b.Entries) == 0 {
			return out
		}
		out = append(out, b.Entries...)
	}
}

func payload(i int) []byte { return []byte(fmt.Sprintf("entry-%06d", i)) }

func TestAppendReadAckReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q := openT(t, dir, Options{ItemsPerSegment: 4})
	var seqs []uint64
	for i := range 50 {
		s, err := q.Append(ctx, payload(i))
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, s)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("sequence not increasing: %d then %d", seqs[i-1], seqs[i])
		}
	}
	if n, _ := q.Depth(); n != 50 {
		t.Fatalf("depth %d, want 50", n)
	}
	// Read 20 in small batches and ack them; read 10 more without acking.
	var acked int
	for acked < 20 {
		b, err := q.Read(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Entries) != 1 || !bytes.Equal(b.Entries[0].Data, payload(acked)) || b.Entries[0].Seq != seqs[acked] {
			t.Fatalf("read %d: got %+v", acked, b.Entries)
		}
		q.Ack(b)
		acked++
	}
	b, err := q.Read(ctx, 10*framedLen(len(payload(0))))
	if err != nil || len(b.Entries) != 10 {
		t.Fatalf("read 10: %d entries, %v", len(b.Entries), err)
	}
	waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == 30 })
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}

	q = openT(t, dir, Options{ItemsPerSegment: 4})
	defer q.Close()
	got := readAll(t, q)
	if len(got) != 30 {
		t.Fatalf("after reopen: %d entries, want 30 (unacked are kept)", len(got))
	}
	for i, e := range got {
		if !bytes.Equal(e.Data, payload(20+i)) || e.Seq != seqs[20+i] {
			t.Fatalf("entry %d after reopen: %q seq %d", i, e.Data, e.Seq)
		}
	}
	s, err := q.Append(ctx, []byte("after"))
	if err != nil || s <= seqs[len(seqs)-1] {
		t.Fatalf("append after reopen: seq %d (last was %d), %v", s, seqs[len(seqs)-1], err)
	}
}

func TestSequenceSurvivesEmptyQueue(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q := openT(t, dir, Options{ItemsPerSegment: 2})
	var last uint64
	for i := range 9 {
		s, err := q.Append(ctx, payload(i))
		if err != nil {
			t.Fatal(err)
		}
		last = s
	}
	for {
		b, _ := q.TryRead(1 << 20)
		if len(b.Entries) == 0 {
			break
		}
		q.Ack(b)
	}
	waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == 0 })
	q.Close()
	q = openT(t, dir, Options{ItemsPerSegment: 2})
	defer q.Close()
	s, err := q.Append(ctx, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if s <= last {
		t.Fatalf("sequence reused after the queue emptied: %d <= %d", s, last)
	}
}

// TestWipedQueueStartsElsewhere: a queue made anew in a wiped directory
// does not number its entries where its predecessor did, so that a
// consumer deduplicating by (producer, sequence) does not take them for
// entries it stored before.
func TestWipedQueueStartsElsewhere(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q := openT(t, dir, Options{})
	first, err := q.Append(ctx, payload(0), payload(1), payload(2))
	if err != nil {
		t.Fatal(err)
	}
	if first < 1<<20 {
		t.Errorf("a new queue starts at %d; want a random base of at least 2^20", first)
	}
	q.Close()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	q = openT(t, dir, Options{})
	defer q.Close()
	again, err := q.Append(ctx, payload(0))
	if err != nil {
		t.Fatal(err)
	}
	if again >= first && again <= first+2 {
		t.Fatalf("the wiped queue reuses sequence %d of its predecessor (%d..%d)", again, first, first+2)
	}
	if again == first {
		t.Fatalf("both queues start at %d", first)
	}
}

func TestNackAndRewindRedeliverInOrder(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	defer q.Close()
	ctx := context.Background()
	for i := range 6 {
		if _, err := q.Append(ctx, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	var bs []Batch
	for range 3 {
		b, err := q.Read(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
	}
	q.Ack(bs[1])
	q.Nack(bs[2])
	b, _ := q.Read(ctx, 1)
	if string(b.Entries[0].Data) != string(payload(2)) {
		t.Fatalf("after nack got %q, want entry 2 again", b.Entries[0].Data)
	}
	q.Rewind()
	got := readAll(t, q)
	var names []string
	for _, e := range got {
		names = append(names, string(e.Data))
	}
	want := []string{"entry-000000", "entry-000002", "entry-000003", "entry-000004", "entry-000005"}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("after rewind: %v, want %v (acked entry 1 not resent)", names, want)
	}
}

func TestReadBlocksUntilAppend(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan Batch, 1)
	go func() {
		b, err := q.Read(ctx, 1<<20)
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	if _, err := q.Append(ctx, []byte("wake")); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-got:
		if string(b.Entries[0].Data) != "wake" {
			t.Fatalf("got %q", b.Entries[0].Data)
		}
	case <-ctx.Done():
		t.Fatal("Read did not wake on Append")
	}
	short, c2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer c2()
	if _, err := q.Read(short, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Read on empty queue: %v, want deadline exceeded", err)
	}
}

func TestBoundsFailFast(t *testing.T) {
	q := openT(t, t.TempDir(), Options{MaxEntries: 10, MaxBytes: 1 << 20})
	defer q.Close()
	ctx := context.Background()
	for i := range 10 {
		if _, err := q.Append(ctx, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Append(ctx, payload(10)); !errors.Is(err, ErrFull) || !Retryable(err) {
		t.Fatalf("11th append: %v, want ErrFull", err)
	}
	b, _ := q.Read(ctx, 1<<20)
	q.Ack(b)
	waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == 0 })
	if _, err := q.Append(ctx, payload(10)); err != nil {
		t.Fatalf("append after drain: %v", err)
	}
	big := make([]byte, 600<<10)
	if _, err := q.Append(ctx, big); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized append: %v", err)
	}
	qb := openT(t, t.TempDir(), Options{MaxBytes: 100})
	defer qb.Close()
	if _, err := qb.Append(ctx, make([]byte, 101)); !errors.Is(err, ErrFull) {
		t.Fatalf("append over MaxBytes: %v", err)
	}
}

func TestLockedByAnotherOpen(t *testing.T) {
	dir := t.TempDir()
	q := openT(t, dir, Options{})
	if _, err := Open(dir, Options{}, nil, nil); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	q.Close()
	q2 := openT(t, dir, Options{})
	q2.Close()
}

func TestConcurrentAppendsShareFsyncs(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	defer q.Close()
	const G, N = 64, 50
	appendFrom(t, q, G, N, func(g, i int) []byte { return []byte(fmt.Sprintf("g%d-%d", g, i)) })
	got := readAll(t, q)
	if len(got) != G*N {
		t.Fatalf("%d entries, want %d", len(got), G*N)
	}
	// Per appender, entries are in the order appended.
	next := map[string]int{}
	for _, e := range got {
		var g, i int
		fmt.Sscanf(string(e.Data), "g%d-%d", &g, &i)
		k := fmt.Sprint(g)
		if i != next[k] {
			t.Fatalf("appender %d: entry %d after %d", g, i, next[k]-1)
		}
		next[k]++
	}
	fsyncs := testutilCounter(q.m.fsyncs)
	if fsyncs >= G*N/2 {
		t.Fatalf("%v fsyncs for %d appends from %d goroutines: group commit is not sharing them", fsyncs, G*N, G)
	}
	t.Logf("%d appends, %v fsyncs", G*N, fsyncs)
}

func waitFor(t testing.TB, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestReaderStaysOnTailAtPartialMarker: the committer publishes the tail
// segment's size as the committed end. A delete marker (4 bytes, written by
// the remover) that straddles a page boundary can be seen by a concurrent
// stat(2) with only its first bytes in the file, so the committed end may
// lie 1 to 3 bytes into a marker. The reader must then wait at the tail
// for the rest, not take the short header for the end of a finished
// segment and move on to the next one: that skipped every record appended
// to the tail afterwards (never sent, yet removed from dque's head in place
// of the records acked after them).
func TestReaderStaysOnTailAtPartialMarker(t *testing.T) {
	q := openT(t, t.TempDir(), Options{Sync: SyncNever})
	defer q.Close()
	if _, err := q.Append(context.Background(), payload(1)); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, q); len(got) != 1 {
		t.Fatalf("read %d entries, want 1", len(got))
	}
	// What a stat racing a straddling marker's write(2) publishes.
	q.rmu.Lock()
	q.committed.off += 3
	q.rmu.Unlock()
	if got := readAll(t, q); len(got) != 0 {
		t.Fatalf("read %d entries from a partial marker", len(got))
	}
	if _, err := q.Append(context.Background(), payload(2)); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, q)
	if len(got) != 1 || !bytes.Equal(got[0].Data, payload(2)) {
		t.Fatalf("after the partial marker the reader got %d entries, want entry 2: the tail was skipped", len(got))
	}
}

// CommitDelay: appends that keep coming share one commit per delay, and a
// lone append after a quiet spell is not held.
func TestCommitDelayGathersAppends(t *testing.T) {
	const delay = 50 * time.Millisecond
	q := openT(t, t.TempDir(), Options{CommitDelay: delay})
	defer q.Close()
	ctx := context.Background()
	// A lone append: the last commit (none) is long past.
	if _, err := q.Append(ctx, payload(0)); err != nil {
		t.Fatal(err)
	}
	if held := testutilCounter(q.m.held); held != 0 {
		t.Errorf("a lone append's commit was held (%v)", held)
	}
	// 8 appenders, each appending again as soon as its last is acked: each
	// commit after the first waits for all of them (they are back within
	// the delay), so the 80 appends take ~10 records, not one per round's
	// few stragglers.
	before := testutilCounter(q.m.records)
	const G, N = 8, 10
	appendFrom(t, q, G, N, func(g, i int) []byte { return payload(1 + g*N + i) })
	if testutilCounter(q.m.held) == 0 {
		t.Error("no commit held while appends kept coming")
	}
	if records := testutilCounter(q.m.records) - before; records > 2*N {
		t.Errorf("%v records for %d appends from %d appenders with a %v commit delay: want about %d", records, G*N, G, delay, N)
	}
	if got := len(readAll(t, q)); got != 1+G*N {
		t.Errorf("%d entries, want %d", got, 1+G*N)
	}
}

// appendFrom runs g appenders at once, each appending n entries one after
// another (data(appender, i)), and returns when all are done.
func appendFrom(t *testing.T, q *Queue, g, n int, data func(g, i int) []byte) {
	t.Helper()
	var wg sync.WaitGroup
	for a := range g {
		wg.Go(func() {
			for i := range n {
				if _, err := q.Append(context.Background(), data(a, i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestBeginFixesTheOrder: an append's place in the queue is fixed when
// Begin returns, whatever the order in which the appends are then waited
// for, from goroutines of their own (the router's batches of one sender).
func TestBeginFixesTheOrder(t *testing.T) {
	q := openT(t, t.TempDir(), Options{})
	defer q.Close()
	const n = 40
	pend := make([]Pending, n)
	for i := range n {
		p, err := q.Begin(payload(i), payload(1000+i))
		if err != nil {
			t.Fatal(err)
		}
		pend[i] = p
	}
	seqs := make([]uint64, n)
	var wg sync.WaitGroup
	for i := n - 1; i >= 0; i-- {
		wg.Go(func() {
			s, err := pend[i].Wait(context.Background())
			if err != nil {
				t.Errorf("wait %d: %v", i, err)
			}
			seqs[i] = s
		})
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if seqs[i] != seqs[i-1]+2 {
			t.Fatalf("append %d has seq %d after %d: not in the order begun", i, seqs[i], seqs[i-1])
		}
	}
	got := readAll(t, q)
	if len(got) != 2*n {
		t.Fatalf("read %d entries, want %d", len(got), 2*n)
	}
	for i, e := range got {
		want := payload(i / 2)
		if i%2 == 1 {
			want = payload(1000 + i/2)
		}
		if !bytes.Equal(e.Data, want) {
			t.Fatalf("entry %d is %q, want %q", i, e.Data, want)
		}
	}
}

// TestTurn: a Turn's Wait returns once it is placed (Placed may come more
// than once), at once for a nil Turn, and with ctx's error if ctx ends first.
func TestTurn(t *testing.T) {
	if err := (*Turn)(nil).Wait(context.Background()); err != nil {
		t.Fatalf("nil turn: %v", err)
	}
	tn := NewTurn()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := tn.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait on a turn not placed: %v, want the deadline", err)
	}
	done := make(chan error, 1)
	go func() { done <- tn.Wait(context.Background()) }()
	tn.Placed()
	tn.Placed()
	if err := <-done; err != nil {
		t.Fatalf("wait on a placed turn: %v", err)
	}
}
