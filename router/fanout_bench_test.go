package router

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// BenchmarkFanout measures the router's durable lane with two durable
// subscribers (lake and influx, acking writers that decode nothing): b.N
// entries (device frames of 10 readings) are in a frontend queue before
// the clock starts; the clock stops when the router has them durable and
// both subscribers have acked them all. Reported per reading, for the
// whole test process (drainer, router, the two subscribers):
// allocs/reading and B/reading (runtime.MemStats), write-B/reading
// (/proc/self/io write_bytes: the router's queues, cursor files and dedup
// journal, and the frontend queue's delete markers), and fsyncs/1k-readings
// of the router's queues (drover_queue_fsyncs_total). These are the
// deterministic figures; the time is not (machine load). The same file
// runs against the router of before the log (a queue per subscriber) for
// an A/B of those figures.
//
//	go test -run='^$' -bench=BenchmarkFanout -benchtime=20000x ./router/
func BenchmarkFanout(b *testing.B) {
	dir := b.TempDir()
	fe := openFrontend(b, filepath.Join(dir, "frontend"), queue.SyncNever)
	entry := makeEntry(0)
	ents := make([][]byte, 64)
	for i := range ents {
		ents[i] = makeEntry(i)
	}
	for n := b.N; n > 0; n -= len(ents) {
		if _, err := fe.q.Append(context.Background(), ents[:min(n, len(ents))]...); err != nil {
			b.Fatal(err)
		}
	}
	syscall.Sync()
	rcfg := testConfig(filepath.Join(dir, "router"), "router-a")
	rcfg.Subscribers = []string{"lake", "influx"}
	rcfg.RegistryStore = testRegistry(b)
	rt := startRouter(b, rcfg, withFastLanes)
	for _, n := range rcfg.Subscribers {
		s := startSub(b, rt.StoreAddr(), n, true)
		s.light.Store(true)
	}
	done := func() bool {
		return fe.depth() == 0 && rt.mainDepth() == 0 && rt.subDepth("lake") == 0 && rt.subDepth("influx") == 0
	}
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	w0 := procWriteBytes(b)
	f0 := sumCounter(b, rt.reg, "drover_queue_fsyncs_total")
	s0 := sumCounter(b, rt.reg, "drover_router_subscriber_sent_batches_total")
	b.SetBytes(int64(len(entry)))
	b.ResetTimer()
	d := startDrainer(b, forward.DrainerConfig{Sender: "frontend-1", Routers: []string{rt.Addr()}, MaxInflight: 4, MaxBatchBytes: 256 << 10, Links: rcfg.Links}, fe.q)
	for !done() {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	runtime.ReadMemStats(&m1)
	w1 := procWriteBytes(b)
	f1 := sumCounter(b, rt.reg, "drover_queue_fsyncs_total")
	s1 := sumCounter(b, rt.reg, "drover_router_subscriber_sent_batches_total")
	readings := float64(b.N * recordsPerEntry)
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/readings, "allocs/reading")
	b.ReportMetric(float64(m1.TotalAlloc-m0.TotalAlloc)/readings, "B/reading")
	b.ReportMetric(float64(w1-w0)/readings, "write-B/reading")
	b.ReportMetric((f1-f0)/readings*1000, "fsyncs/1k-readings")
	// Store-lane batches sent (first sends, both subscribers): what the
	// run bound (storeTiming.batchBytes) changes.
	b.ReportMetric((s1-s0)/readings*1000, "store-batches/1k-readings")
	d.stop(b)
	rt.stop(b)
}

// procWriteBytes is the process's write_bytes from /proc/self/io.
func procWriteBytes(t testing.TB) uint64 {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "write_bytes: "); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("/proc/self/io: no write_bytes")
	return 0
}

// sumCounter sums a counter family over all its label sets.
func sumCounter(t testing.TB, reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	s := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			s += m.GetCounter().GetValue()
		}
	}
	return s
}
