package router

import (
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/queue"
)

// TestLateSubscriberStartsAtTail: a subscriber registered while the log
// holds another's backlog starts at the log's tail (as its queue used to
// start empty): it gets what arrives from then on, nothing from before,
// and the log empties once both have acked.
func TestLateSubscriberStartsAtTail(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake"}
	cfg.FixedSubscribers = false // holders of the cluster key may register
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes)
	lake := startSub(t, rt.StoreAddr(), "lake", false) // acks nothing until told
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)
	r := rand.New(rand.NewPCG(8, 8))

	const before, after = 300, 200
	fe.appendN(t, before, 20, r)
	// lake has a window's worth in flight and acks nothing: the log holds
	// all of it.
	waitFor(t, 20*time.Second, "the router to hold the first readings for lake", func() bool {
		return fe.depth() == 0 && rt.subDepth("lake") == rt.mainDepth() && rt.mainDepth() > 0
	})
	late := startSub(t, rt.StoreAddr(), "late", true)
	waitFor(t, 10*time.Second, "late registered", func() bool { return rt.sub("late") != nil })
	fe.appendN(t, after, 20, r)
	lake.acking.Store(true)
	waitFor(t, 20*time.Second, "both to receive what came after", func() bool {
		dl, _ := lake.counts()
		d, _ := late.counts()
		return dl == (before+after)*recordsPerEntry && d == after*recordsPerEntry
	})
	waitFor(t, 10*time.Second, "the log to empty", func() bool {
		return fe.depth() == 0 && rt.mainDepth() == 0 && rt.subDepth("lake") == 0 && rt.subDepth("late") == 0
	})
	late.mu.Lock()
	defer late.mu.Unlock()
	for k := range late.readings {
		seq, _ := strconv.Atoi(k[strings.LastIndexByte(k, '/')+1:])
		if seq <= before*recordsPerEntry {
			t.Fatalf("the late subscriber got reading %s, appended before it registered", k)
		}
	}
	if n := len(late.readings); n != after*recordsPerEntry {
		t.Fatalf("the late subscriber got %d readings, want %d", n, after*recordsPerEntry)
	}
}
