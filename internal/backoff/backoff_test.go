package backoff

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// TestNextDoublesWithinJitter: the n-th wait lies in [d/2, d] with d =
// min(hi, lo·2^(n-1)), and Reset starts again from lo.
func TestNextDoublesWithinJitter(t *testing.T) {
	lo, hi := 100*time.Millisecond, 3*time.Second
	b := New(lo, hi, rand.New(rand.NewPCG(1, 2)))
	if b.Active() {
		t.Fatal("Active before any failure")
	}
	for round := range 2 {
		d := lo
		for n := 1; n <= 10; n++ {
			w := b.Next()
			if w < d/2 || w > d {
				t.Fatalf("round %d, failure %d: wait %v, want in [%v, %v]", round, n, w, d/2, d)
			}
			d = min(2*d, hi)
		}
		if !b.Active() {
			t.Fatal("not Active after failures")
		}
		b.Reset()
		if b.Active() {
			t.Fatal("Active after Reset")
		}
	}
}

// TestNextReachesMax: the cap is reached exactly, even when hi is not lo
// times a power of two, and never passed.
func TestNextReachesMax(t *testing.T) {
	b := New(50*time.Millisecond, 5*time.Second, nil)
	var longest time.Duration
	for range 1000 {
		longest = max(longest, b.Next())
	}
	if longest > 5*time.Second || longest < 4*time.Second {
		t.Fatalf("longest of 1000 waits %v, want within [4s, 5s]", longest)
	}
}

// TestJitterSpreads: many retriers refused at the same moment do not come
// back at the same moment.
func TestJitterSpreads(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 100 {
		b := New(time.Second, time.Minute, nil)
		seen[b.Next()] = true
	}
	if len(seen) < 90 {
		t.Fatalf("100 first waits took %d distinct values; want them spread", len(seen))
	}
}

// TestSeededIsReproducible: the simulator's seeded source gives the same
// waits on every run.
func TestSeededIsReproducible(t *testing.T) {
	a, b := New(time.Millisecond, time.Second, rand.New(rand.NewPCG(7, 7))), New(time.Millisecond, time.Second, rand.New(rand.NewPCG(7, 7)))
	for range 20 {
		if x, y := a.Next(), b.Next(); x != y {
			t.Fatalf("same seed, waits %v and %v", x, y)
		}
	}
}

func TestNewClampsBounds(t *testing.T) {
	b := New(0, -1, nil)
	if w := b.Next(); w < 0 || w > time.Nanosecond {
		t.Fatalf("wait %v with lo 0 and hi -1, want at most 1ns", w)
	}
}

func TestSleep(t *testing.T) {
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep with a live context reported a cut")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep with a cancelled context waited it all")
	}
	if time.Since(start) > time.Minute {
		t.Fatal("Sleep ignored the cancelled context")
	}
}

// TestFullJitterSpansTheWholeInterval: with NewFull the n-th wait lies in
// [0, d], and a herd's first waits fill it: some in its first half, which
// equal jitter never uses.
func TestFullJitterSpansTheWholeInterval(t *testing.T) {
	lo, hi := 200*time.Millisecond, 5*time.Second
	b := NewFull(lo, hi, rand.New(rand.NewPCG(3, 4)))
	d := lo
	for n := 1; n <= 8; n++ {
		if w := b.Next(); w < 0 || w > d {
			t.Fatalf("failure %d: wait %v, want in [0, %v]", n, w, d)
		}
		d = min(2*d, hi)
	}
	firstHalf := 0
	for range 1000 {
		b := NewFull(time.Second, time.Minute, nil)
		if b.Next() < 500*time.Millisecond {
			firstHalf++
		}
	}
	if firstHalf < 400 || firstHalf > 600 {
		t.Fatalf("%d of 1000 first waits under half of d, want about 500", firstHalf)
	}
}
