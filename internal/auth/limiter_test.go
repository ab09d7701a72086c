package auth

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var testLimit = LimitConfig{Failures: 3, Window: time.Minute, Block: 10 * time.Second, MaxBlock: 35 * time.Second, MaxKeys: 1024}

func TestLimiterBlocksBacksOffAndReleases(t *testing.T) {
	l := NewLimiter(testLimit)
	t0 := time.Unix(1_700_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	if d := l.Fail("k", at(0)); d != 0 {
		t.Fatalf("first failure blocked for %v", d)
	}
	if d := l.Fail("k", at(time.Second)); d != 0 {
		t.Fatalf("second failure blocked for %v", d)
	}
	if _, blocked := l.Blocked("k", at(2*time.Second)); blocked {
		t.Fatal("blocked before the third failure")
	}
	if d := l.Fail("k", at(2*time.Second)); d != 10*time.Second {
		t.Fatalf("third failure: blocked for %v, want 10s", d)
	}
	if left, blocked := l.Blocked("k", at(5*time.Second)); !blocked || left != 7*time.Second {
		t.Fatalf("3s into the block: %v, %v; want blocked with 7s left", left, blocked)
	}
	if _, blocked := l.Blocked("other", at(5*time.Second)); blocked {
		t.Fatal("another key is blocked")
	}
	if _, blocked := l.Blocked("k", at(12*time.Second)); blocked {
		t.Fatal("still blocked after the block ended")
	}
	// Failing again after the block: the next block doubles, then is capped.
	for i, want := range []time.Duration{20 * time.Second, 35 * time.Second, 35 * time.Second} {
		base := at(time.Duration(15+40*i) * time.Second)
		l.Fail("k", base)
		l.Fail("k", base.Add(time.Second))
		if d := l.Fail("k", base.Add(2*time.Second)); d != want {
			t.Fatalf("block %d: %v, want %v", i+2, d, want)
		}
	}
	// Quiet for longer than the longest block and a window: forgotten,
	// backoff included.
	late := at(1000 * time.Second)
	l.Fail("k", late)
	l.Fail("k", late)
	if d := l.Fail("k", late); d != 10*time.Second {
		t.Fatalf("after a long quiet: blocked for %v, want the first block again (10s)", d)
	}
	if n := l.Blocks(); n != 5 {
		t.Fatalf("Blocks() = %d, want 5", n)
	}
}

func TestLimiterCountsWithinTheWindowOnly(t *testing.T) {
	l := NewLimiter(testLimit)
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 10 {
		// Two failures a window, never three.
		if d := l.Fail("k", t0.Add(time.Duration(i)*31*time.Second)); d != 0 {
			t.Fatalf("failure %d, %v apart: blocked for %v", i, 31*time.Second, d)
		}
	}
}

func TestLimiterOffRemembersNothing(t *testing.T) {
	l := NewLimiter(LimitConfig{})
	for i := range 100 {
		if d := l.Fail("k", time.Now()); d != 0 {
			t.Fatalf("failure %d blocked", i)
		}
	}
	if _, b := l.Blocked("k", time.Now()); b || l.Len() != 0 {
		t.Fatal("an off limiter blocks or remembers")
	}
}

// An attacker inventing keys (addresses, device ids) must not grow the
// limiter: it keeps MaxKeys, forgets the least recently failed and counts
// what it forgets.
func TestLimiterMemoryIsBounded(t *testing.T) {
	cfg := testLimit
	cfg.MaxKeys = 4096
	l := NewLimiter(cfg)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	now := time.Now()
	const keys = 300_000
	for i := range keys {
		l.Fail(fmt.Sprintf("device-%09d-with-a-long-enough-id-to-cost-memory", i), now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if n := l.Len(); n > cfg.MaxKeys || n < cfg.MaxKeys/2 {
		t.Fatalf("Len() = %d after %d keys, want at most %d (and most of it used)", n, keys, cfg.MaxKeys)
	}
	if ev := l.Evictions(); ev != uint64(keys-l.Len()) {
		t.Fatalf("Evictions() = %d, want %d", ev, keys-l.Len())
	}
	// 4096 entries of ~300 bytes: about 1.2 MiB. 300,000 kept would be ~90 MiB.
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if grown > 8<<20 {
		t.Fatalf("heap grew by %d MiB for %d keys bounded to %d", grown>>20, keys, cfg.MaxKeys)
	}
	// A key longer than any valid one costs no more than maxKeyBytes.
	long := string(make([]byte, 16<<10))
	l.Fail(long, now)
	if _, b := l.Blocked(long[:maxKeyBytes]+"different tail", now); b {
		t.Fatal("unexpectedly blocked")
	}
}

func TestLimiterConcurrentUse(t *testing.T) {
	l := NewLimiter(testLimit)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				k := fmt.Sprintf("k%d", (g*2000+i)%300)
				if _, b := l.Blocked(k, time.Now()); !b {
					l.Fail(k, time.Now())
				}
			}
		})
	}
	wg.Wait()
	if l.Len() > testLimit.MaxKeys {
		t.Fatalf("Len() = %d", l.Len())
	}
}

func TestLimitConfigValidate(t *testing.T) {
	if err := testLimit.Validate("auth-"); err != nil {
		t.Fatal(err)
	}
	if err := (LimitConfig{}).Validate("auth-"); err != nil {
		t.Fatalf("off: %v", err)
	}
	bad := LimitConfig{Failures: 1, MaxBlock: -1, MaxKeys: 1}
	err := bad.Validate("auth-")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"auth-window", "auth-block", "auth-block-max", "auth-keys"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}
