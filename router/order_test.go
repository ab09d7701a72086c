package router

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/forward"
)

// TestSenderBatchesKeepTheirOrder: a frontend has several batches in
// flight, and the router stores each in a goroutine of its own. Its first
// batch's append is held; the batches it sent after wait for it (they are
// not acked meanwhile), another sender's batch does not, and the main
// queue holds the first sender's batches in the order sent. Before the
// router kept the order, the later batches overtook the held one, and a
// device's readings landed in the log after its later ones (the alerts
// evaluator then took them for a late stretch).
func TestSenderBatchesKeepTheirOrder(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	var calls atomic.Int32
	entered, release := make(chan struct{}), make(chan struct{})
	hold := func() {
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
	}
	released := false
	rt := startRouter(t, testConfig(dir, "router-a"), func(r *Router) { r.beforeAppend = hold })
	t.Cleanup(func() {
		if !released {
			close(release)
		}
	})
	const n = 20
	f := fakeFrontend(n + 1)
	p := dialPeer(t, rt.Addr(), "peer-1")
	p.sendBatch(f, "fe", 1, 1)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the first batch never reached its append")
	}
	for s := uint64(2); s <= n; s++ {
		p.sendBatch(f, "fe", s, s)
	}
	// Another sender's batch is not held behind "fe"'s.
	p.sendBatch(f, "other", 1, 1)
	p.expect(forward.TypeAck, 1, 1)
	// None of "fe"'s later batches may be acked while its first is held:
	// give them the time an append takes many times over.
	select {
	case m := <-p.in:
		t.Fatalf("%s %d..%d while the sender's first batch is held: a later batch did not wait", m.Type, m.First, m.Last)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	released = true
	acked := map[uint64]bool{}
	deadline := time.After(10 * time.Second)
	for len(acked) < n {
		select {
		case m := <-p.in:
			if m.Type != forward.TypeAck || m.First != m.Last {
				t.Fatalf("got %s %d..%d (%s), want acks", m.Type, m.First, m.Last, m.Reason)
			}
			acked[m.First] = true
		case <-deadline:
			t.Fatalf("%d of %d batches acked", len(acked), n)
		}
	}
	rt.stop(t)

	var order []uint64
	scanStored(t, dir, func(si forward.StoredInfo, _ []byte) {
		if si.Sender == "fe" {
			order = append(order, si.First)
		}
	})
	if len(order) != n {
		t.Fatalf("the log holds %d of fe's batches, want %d: %v", len(order), n, order)
	}
	for i, s := range order {
		if s != uint64(i+1) {
			t.Fatalf("the log holds fe's batches in the order %v, want 1..%d", order, n)
		}
	}
}
