package queue

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// nextT reads a Tail until it has n entries, failing after timeout.
func nextT(t *testing.T, tl *Tail, n int, maxBytes int) []Entry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []Entry
	for len(out) < n {
		es, err := tl.Next(ctx, maxBytes)
		if err != nil {
			t.Fatalf("tail next after %d of %d entries: %v", len(out), n, err)
		}
		out = append(out, es...)
	}
	return out
}

// TestTailFollowsWithoutTheConsumer: a Tail sees every entry committed
// after it was made, once, in order, across segment rollovers, while the
// consumer neither reads nor acks anything (the router's live lane while
// the fan-out is blocked); the consumer then still gets every entry, the
// ones before the Tail was made included.
func TestTailFollowsWithoutTheConsumer(t *testing.T) {
	ctx := context.Background()
	q := openT(t, t.TempDir(), Options{ItemsPerSegment: 4, MaxBytes: -1})
	defer q.Close()
	for i := range 10 {
		if _, err := q.Append(ctx, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	tl := q.Tail()
	defer tl.Close()
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if es, err := tl.Next(short, 1<<20); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("tail made after 10 appends returned %d entries, %v: want to wait for new ones", len(es), err)
	}
	const n = 50
	for i := 10; i < 10+n; i++ {
		if _, err := q.Append(ctx, payload(i), payload(1000+i)); err != nil {
			t.Fatal(err)
		}
	}
	// A small budget: one record (two entries) per call.
	got := nextT(t, tl, 2*n, 1)
	if len(got) != 2*n {
		t.Fatalf("tail returned %d entries, want %d", len(got), 2*n)
	}
	for k, e := range got {
		i := 10 + k/2
		want := payload(i)
		if k%2 == 1 {
			want = payload(1000 + i)
		}
		if !bytes.Equal(e.Data, want) || (k > 0 && e.Seq != got[k-1].Seq+1) {
			t.Fatalf("tail entry %d: seq %d %q, want %q after seq %d", k, e.Seq, e.Data, want, got[max(k-1, 0)].Seq)
		}
	}
	if d, _ := q.Depth(); d != 10+2*n {
		t.Fatalf("depth %d after the tail read: want %d (a tail removes nothing)", d, 10+2*n)
	}
	if c := q.Inflight(); c != 0 {
		t.Fatalf("%d entries in flight: a tail must not count as the consumer", c)
	}
	var all []Entry
	for {
		b, err := q.TryRead(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Entries) == 0 {
			break
		}
		all = append(all, b.Entries...)
		q.Ack(b)
	}
	if len(all) != 10+2*n || !bytes.Equal(all[0].Data, payload(0)) {
		t.Fatalf("consumer read %d entries: want all %d from the first", len(all), 10+2*n)
	}
	// Entries are copies: still valid after the consumer removed them.
	waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == 0 })
	if !bytes.Equal(got[0].Data, payload(10)) {
		t.Fatalf("tail entry changed after removal: %q", got[0].Data)
	}
	// It goes on after the removals.
	if _, err := q.Append(ctx, payload(99)); err != nil {
		t.Fatal(err)
	}
	if es := nextT(t, tl, 1, 1<<20); len(es) != 1 || !bytes.Equal(es[0].Data, payload(99)) {
		t.Fatalf("after removals the tail returned %d entries, first %q; want payload 99", len(es), es[0].Data)
	}
	q.Close()
	if _, err := tl.Next(ctx, 1<<20); !errors.Is(err, ErrClosed) {
		t.Fatalf("tail of a closed queue: %v, want ErrClosed", err)
	}
}

// TestTailFallenBehind: a Tail whose unread segments the consumer has
// removed skips them without error and follows on.
func TestTailFallenBehind(t *testing.T) {
	ctx := context.Background()
	q := openT(t, t.TempDir(), Options{ItemsPerSegment: 2, MaxBytes: -1})
	defer q.Close()
	tl := q.Tail()
	defer tl.Close()
	for i := range 20 {
		if _, err := q.Append(ctx, payload(i)); err != nil {
			t.Fatal(err)
		}
	}
	for {
		b, err := q.TryRead(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Entries) == 0 {
			break
		}
		q.Ack(b)
	}
	waitFor(t, 5*time.Second, func() bool { n, _ := q.Depth(); return n == 0 })
	if _, err := q.Append(ctx, payload(20)); err != nil {
		t.Fatal(err)
	}
	var got []Entry
	for len(got) == 0 || !bytes.Equal(got[len(got)-1].Data, payload(20)) {
		got = append(got, nextT(t, tl, 1, 1<<20)...)
	}
	for k := 1; k < len(got); k++ {
		if got[k].Seq <= got[k-1].Seq {
			t.Fatalf("tail went back: seq %d after %d", got[k].Seq, got[k-1].Seq)
		}
	}
	t.Logf("the tail returned %d of 21 entries (the rest was removed before it read them)", len(got))
}
