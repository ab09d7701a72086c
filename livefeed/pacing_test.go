package livefeed

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestOfferTakePacing drives one client's pending maps with a made-up
// clock: with a SendInterval, a take that hands out updates opens a window
// in which updates wait (conflated) and offers do not wake the writer;
// controls still go at once; after a quiet window the next update goes at
// once.
func TestOfferTakePacing(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Links = testLinks
	cfg.MaxRate = 1000 // the per-vehicle rate limit out of the way: pacing alone
	cfg.SendInterval = 20 * time.Millisecond
	f, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{f: f, who: &principal{name: "t", scope: newScope([]string{"f"})}, wake: make(chan struct{}, 1),
		stopCh: make(chan struct{}), due: map[string]pendingItem{}, held: map[string]pendingItem{}, shown: map[string]int64{}}
	sub, cerr := newSubscription(&subscribeMsg{}, c.who.scope, &f.cfg)
	if cerr != nil {
		t.Fatal(cerr)
	}
	c.sub = sub
	const ms = int64(time.Millisecond)
	state := func(id string, seq uint64) change {
		return change{v: merge(nil, rec(id, "f", seq, int64(seq), 1, 1), 0)}
	}
	woken := func() bool {
		select {
		case <-c.wake:
			return true
		default:
			return false
		}
	}
	var tb takeBuf
	take := func(now int64) []string {
		c.take(now, &tb)
		var out []string
		for _, p := range tb.items {
			out = append(out, fmt.Sprintf("%s:%d", p.v.id, p.v.seq))
		}
		slices.Sort(out)
		return out
	}

	c.offer([]change{state("a", 1)}, 0)
	if !woken() {
		t.Fatal("an update for an idle client did not wake its writer")
	}
	if got := take(1 * ms); !slices.Equal(got, []string{"a:1"}) || tb.next != 21*ms {
		t.Fatalf("first take %v next %v, want [a:1] and to come back at 21 ms", got, tb.next)
	}
	c.offer([]change{state("a", 2), state("b", 1)}, 5*ms)
	c.offer([]change{state("a", 3)}, 10*ms) // replaces a:2: conflated
	if woken() {
		t.Error("offers within the pacing window woke the writer")
	}
	if got := take(15 * ms); len(got) != 0 || tb.next != 21*ms {
		t.Fatalf("take at 15 ms %v next %v, want nothing until 21 ms", got, tb.next)
	}
	c.queueControl([]byte(`{"type":"error"}`))
	if !woken() {
		t.Error("a control message within the window did not wake the writer")
	}
	if got := take(16 * ms); len(got) != 0 || len(tb.controls) != 1 {
		t.Fatalf("take at 16 ms: %v and %d controls, want the control alone", got, len(tb.controls))
	}
	if got := take(21 * ms); !slices.Equal(got, []string{"a:3", "b:1"}) || tb.next != 41*ms {
		t.Fatalf("take at 21 ms %v next %v, want [a:3 b:1] in one take and the next window to 41 ms", got, tb.next)
	}
	// A quiet window: the writer comes at its end and finds nothing; the
	// next update goes at once.
	if got := take(41 * ms); len(got) != 0 || tb.next != 0 {
		t.Fatalf("take at 41 ms %v next %v, want nothing and no timer", got, tb.next)
	}
	c.offer([]change{state("b", 2)}, 100*ms)
	if !woken() {
		t.Error("an update after a quiet window did not wake the writer")
	}
	if got := take(100 * ms); !slices.Equal(got, []string{"b:2"}) {
		t.Fatalf("take at 100 ms %v, want [b:2]", got)
	}
	if n := testutil.ToFloat64(f.m.conflated); n != 1 {
		t.Errorf("conflated %v, want 1 (a:2 by a:3)", n)
	}
}

// TestPacedUpdatesComeTogether: a client following vehicles whose batches
// come faster than SendInterval gets every vehicle's latest state, never
// an older state after a newer one, and at most one update message per
// SendInterval.
func TestPacedUpdatesComeTogether(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	const interval = 200 * time.Millisecond
	rf := startFeed(t, func(c *Config) {
		c.SendInterval = interval
		c.MaxRate = 1000 // pacing, not the per-vehicle rate limit
	}, pub)
	t0 := time.Now().UnixMilli()
	const vehicles, last = 10, 9
	id := func(i int) string { return fmt.Sprintf("v%02d", i) }
	for i := range vehicles {
		pub.publish(rec(id(i), "f", 1, t0+1, 0, 0))
	}
	rf.waitVehicles(t, vehicles)
	c := dial(t, rf, devToken)
	c.subscribe(subscribeMsg{})

	start := time.Now()
	// A batch per vehicle reading, 5 ms apart: 80 batches in 0.4 s or more.
	for seq := 2; seq <= last; seq++ {
		for i := range vehicles {
			pub.publish(rec(id(i), "f", uint64(seq), t0+int64(seq), float64(seq), float64(i)))
			time.Sleep(5 * time.Millisecond)
		}
	}
	got := map[string]uint64{}
	done := func() bool {
		if len(got) < vehicles {
			return false
		}
		for _, s := range got {
			if s != last {
				return false
			}
		}
		return true
	}
	messages := 0
	for !done() {
		m := c.next(5 * time.Second)
		if m.Type != "update" {
			t.Fatalf("a %s message, want updates", m.Type)
		}
		messages++
		inMsg := map[string]bool{}
		for _, v := range m.Vehicles {
			if inMsg[v.ID] {
				t.Errorf("vehicle %s twice in one message", v.ID)
			}
			inMsg[v.ID] = true
			if v.Seq <= got[v.ID] {
				t.Errorf("vehicle %s: seq %d after %d", v.ID, v.Seq, got[v.ID])
			}
			got[v.ID] = v.Seq
		}
	}
	elapsed := time.Since(start)
	// Messages are at least interval apart at the livefeed: n of them span
	// (n-1) intervals, all within elapsed.
	if most := int(elapsed/interval) + 2; messages > most {
		t.Errorf("%d update messages in %v with a send interval of %v, want at most %d", messages, elapsed, interval, most)
	}
	t.Logf("%d batches of one vehicle in %v: %d update messages; conflated %v", vehicles*(last-1), elapsed, messages,
		testutil.ToFloat64(rf.m.conflated))
}
