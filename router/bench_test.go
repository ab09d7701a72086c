package router

import (
	"context"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// BenchmarkDrainToRouter measures the frontend → router hop: b.N entries
// (device frames of 10 readings, ~860 bytes each) are in a frontend queue
// before the clock starts; the clock stops when the router has acked them
// all, each durable (fsync) in the router's queue. Reported: entries/s,
// records/s, and MB/s of entry bytes.
//
//	go test -run='^$' -bench=BenchmarkDrainToRouter -benchtime=100000x ./router/
//
// sync=never runs the router's queue without fsync: what the hop itself
// (queue reads, ZeroMQ, dedup, acks) can carry when the disk is not the
// limit. links=tls is the default (mutual TLS 1.3 under a cluster key);
// links=insecure is -insecure-links (plain ZMTP): their difference is what
// authentication and encryption cost the hop.
//
//	go test -run='^$' -bench='BenchmarkDrainToRouter/sync=never/inflight=16/.*' -benchtime=200000x -count=5 ./router/
func BenchmarkDrainToRouter(b *testing.B) {
	for _, sync := range []queue.SyncPolicy{queue.SyncAlways, queue.SyncNever} {
		for _, inflight := range []int{1, 4, 16} {
			for _, links := range []string{"tls", "insecure"} {
				b.Run(fmt.Sprintf("sync=%s/inflight=%d/batch=256KiB/links=%s", sync, inflight, links), func(b *testing.B) {
					benchDrain(b, sync, inflight, 256<<10, links == "insecure")
				})
			}
		}
	}
}

func benchDrain(b *testing.B, sync queue.SyncPolicy, inflight, batchBytes int, insecure bool) {
	dir := b.TempDir()
	fe := openFrontend(b, filepath.Join(dir, "frontend"), queue.SyncNever)
	entry := makeEntry(0)
	ents := make([][]byte, 64)
	for i := range ents {
		ents[i] = entry
	}
	for n := b.N; n > 0; n -= len(ents) {
		if _, err := fe.q.Append(context.Background(), ents[:min(n, len(ents))]...); err != nil {
			b.Fatal(err)
		}
	}
	// Flush the prefill now: its writeback would compete with the router's
	// fsyncs.
	syscall.Sync()
	rcfg := testConfig(filepath.Join(dir, "router"), "router-a")
	if insecure {
		rcfg.Links = clusterlink.Config{Insecure: true}
	}
	rt := startRouter(b, rcfg, func(r *Router) { r.queueSync = sync })
	cfg := forward.DrainerConfig{Sender: "frontend-1", Routers: []string{rt.Addr()}, MaxInflight: inflight, MaxBatchBytes: batchBytes, Links: rcfg.Links}
	b.SetBytes(int64(len(entry)))
	b.ResetTimer()
	start := time.Now()
	d := startDrainer(b, cfg, fe.q)
	for fe.depth() > 0 {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "entries/s")
	b.ReportMetric(float64(b.N*recordsPerEntry)/el.Seconds(), "records/s")
	b.ReportMetric(metric(b, d.reg, "drover_forward_acked_batches_total")/el.Seconds(), "batches/s")
	d.stop(b)
	rt.stop(b)
}

// BenchmarkBuildEntry builds the PublishBatch of one main-queue entry as
// the router stores it from a frontend (400 frames of 10 records: 4,000
// records, ~0.5 MiB), enriched from a registry that knows half of its
// devices: with its per-record slices sized from the record count (as the
// router does), and grown from empty (as it did). Their B/op and allocs/op
// are deterministic; the times are not (machine load).
//
//	go test -run='^$' -bench=BenchmarkBuildEntry -benchmem ./router/
func BenchmarkBuildEntry(b *testing.B) {
	ents := make([][]byte, 400)
	for k := range ents {
		ents[k] = makeEntry(k)
	}
	main := forward.AppendStored(nil, "frontend-1", 1, uint64(len(ents)), ents)
	n, err := forward.CountRecords(main)
	if err != nil || n != len(ents)*recordsPerEntry {
		b.Fatalf("entry of %d records (%v), want %d", n, err, len(ents)*recordsPerEntry)
	}
	r := &Router{cfg: Config{ID: "router-a"}, registry: testRegistry(b)}
	for _, sized := range []bool{true, false} {
		b.Run(fmt.Sprintf("sized=%v", sized), func(b *testing.B) {
			hint := 0
			if sized {
				hint = n
			}
			b.SetBytes(int64(len(main)))
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := r.buildEntry(queue.Entry{Seq: 1, Data: main}, hint, false); !ok {
					b.Fatal("entry not built")
				}
			}
		})
	}
}
