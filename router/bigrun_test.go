package router

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/storagewriter"
)

// TestLargeLogRecordReachesBoundedWriter is the stall of issue 20 (make
// test's TestSinkOutageBackPressure, reverted merge 0bd23ef): after an
// outage a frontend's backlog arrives at once and the log's group commit
// puts several entries into one record, larger than a storage writer's
// whole queue bound. A cursor reads whole records; the sender used to send
// a record's consecutive entries as one store batch, which the writer
// appends as one queue record: refused as full (busy) every time, even
// with its queue empty, so the cursor never moved and the log stayed full.
// Here: a real router and a real storage writer (lake sink) whose queue
// bound is smaller than one record of the log; every entry reaches it, and
// no batch to the other subscriber is larger than the lane's run bound.
func TestLargeLogRecordReachesBoundedWriter(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	const (
		runBytes    = 32 << 10 // the store lane's batch and run bound here
		writerBound = 96 << 10 // the writer's queue: smaller than the record
		entries     = 8        // log entries in the one record
		per         = 22       // frontend entries in each (~20 KiB)
	)
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"influx", "lake"}
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes, func(r *Router) { r.timing.batchBytes = runBytes })
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	lake.mu.Lock()
	lake.maxBatch = runBytes
	lake.mu.Unlock()

	wcfg := storagewriter.DefaultConfig()
	wcfg.Name, wcfg.Sink = "influx", storagewriter.SinkLake
	wcfg.Routers, wcfg.Links = []string{rt.StoreAddr()}, testLinks
	wcfg.QueueDir, wcfg.Lake.Dir = filepath.Join(dir, "writer"), filepath.Join(dir, "lake")
	wcfg.Lake.CompactInterval, wcfg.BatchInterval = 0, 20*time.Millisecond
	wcfg.QueueMaxBytes = writerBound
	wreg := prometheus.NewRegistry()
	w, err := storagewriter.New(wcfg, testLogger("writer"), wreg)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	wdone := make(chan error, 1)
	go func() { wdone <- w.Run(wctx) }()
	t.Cleanup(func() {
		wcancel()
		if err := <-wdone; err != nil {
			t.Errorf("writer Run: %v", err)
		}
	})
	waitFor(t, 10*time.Second, "the writer to subscribe", func() bool {
		return metric(t, rt.reg, "drover_router_subscriber_connected", "subscriber", "influx") == 1
	})

	// One record of the log, as the group commit makes it when a backlog
	// arrives at once: entries of consecutive sequences.
	ents := make([][]byte, entries)
	size, k := 0, 0
	for i := range ents {
		fes := make([][]byte, per)
		for j := range fes {
			fes[j] = makeEntry(k)
			k++
		}
		first := uint64(i*per + 1)
		ents[i] = forward.AppendStored(nil, "frontend-1", first, first+per-1, fes)
		size += len(ents[i])
	}
	if size <= writerBound {
		t.Fatalf("the record holds %d bytes: not more than the writer's bound %d", size, writerBound)
	}
	if _, err := rt.q.Append(context.Background(), ents...); err != nil {
		t.Fatal(err)
	}

	waitFor(t, 20*time.Second, "the writer to take the whole record (the influx cursor to pass it)", func() bool {
		n, _ := rt.sub("influx").cur.Lag()
		return n == 0
	})
	if got := metric(t, wreg, "drover_writer_appended_entries_total"); got < entries {
		t.Errorf("the writer appended %v entries, want %d", got, entries)
	}
	waitFor(t, 10*time.Second, "lake to receive every reading", func() bool {
		d, _ := lake.counts()
		return d == k*recordsPerEntry
	})
	lake.mu.Lock()
	defer lake.mu.Unlock()
	if lake.oversized > 0 {
		t.Errorf("%d store batches of several entries carried more than %d bytes (the run bound)", lake.oversized, runBytes)
	}
}
