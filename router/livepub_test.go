package router

import (
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/queue"
)

// TestLiveAtReceipt: the live lane offers a batch as soon as the router
// has it, before the router's own append and fsync. With the main queue's
// appends held (the failpoint stands for a disk that stalls), a live
// client receives every reading that arrives, while the router has stored
// none of them and the frontend still holds them unacked; a frontend's
// resend of a batch whose append is under way is not offered again; once
// the disk goes on, the durable subscriber gets everything, and no reading
// reached the live lane twice.
func TestLiveAtReceipt(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake"}
	cfg.RegistryStore = testRegistry(t)
	var (
		mu      sync.Mutex
		stalled bool
		release = make(chan struct{})
	)
	hold := func() {
		mu.Lock()
		s := stalled
		mu.Unlock()
		if s {
			<-release
		}
	}
	rt := startRouter(t, cfg, withFastLanes, func(r *Router) { r.beforeAppend = hold })
	var once sync.Once
	unstall := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unstall) // runs before the router's stop
	live := startLiveRecorder(t, rt.LiveAddr())
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)
	rnd := rand.New(rand.NewPCG(21, 21))

	// Entries one at a time until the live SUB has joined.
	waitFor(t, 10*time.Second, "the live subscriber to receive", func() bool {
		fe.appendN(t, 1, 1, rnd)
		n, _ := live.got(0, fe.n)
		return n > 0
	})
	waitFor(t, 10*time.Second, "what came before to be stored", func() bool {
		d, _ := lake.counts()
		return fe.depth() == 0 && d == fe.n*recordsPerEntry
	})

	// The disk stalls: what arrives now reaches live, and nothing else.
	mu.Lock()
	stalled = true
	mu.Unlock()
	from := fe.n
	const more = 20 // within the drainer's window (4 batches of 16 KiB)
	fe.appendN(t, more, 5, rnd)
	waitFor(t, 10*time.Second, "live to receive what arrived while the router's appends are stalled", func() bool {
		n, _ := live.got(from, from+more)
		return n == more*recordsPerEntry
	})
	if d := rt.mainDepth(); d != 0 {
		t.Fatalf("main queue holds %d entries: the appends were not stalled, the test proves nothing", d)
	}
	if d := fe.depth(); d == 0 {
		t.Fatalf("the frontend's queue is empty: the router acked what it has not stored")
	}
	if d, _ := lake.counts(); d != from*recordsPerEntry {
		t.Fatalf("lake received %d readings, want the %d from before the stall", d, from*recordsPerEntry)
	}
	// The frontend times out (2 s) and resends; dedup sees the appends under
	// way and the resend is not offered live again.
	waitFor(t, 10*time.Second, "the frontend to resend what is stalled", func() bool {
		return metric(t, rt.reg, "drover_router_duplicate_entries_total") > 0
	})

	unstall()
	total := fe.n * recordsPerEntry
	waitFor(t, 30*time.Second, "lake to receive every reading", func() bool {
		d, _ := lake.counts()
		return d == total
	})
	waitFor(t, 10*time.Second, "queues to empty", func() bool {
		return fe.depth() == 0 && rt.mainDepth() == 0 && rt.subDepth("lake") == 0
	})
	if _, most := live.got(from, fe.n); most != 1 {
		t.Errorf("a reading reached the live lane %d times, want once", most)
	}
	if got := metric(t, rt.reg, "drover_router_fanout_rebuilt_entries_total"); got != 0 {
		t.Errorf("the fan-out rebuilt %v entries: what ingest built for live was not reused", got)
	}
}
