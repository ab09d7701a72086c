package queue

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/joncrlsn/dque"
)

// BenchmarkAppend measures durable appends (SyncAlways: each Append returns
// after fsync) of 200-byte entries from 1, 16 and 256 goroutines. Reported:
// entries/s and the latency of one Append (p50, p99).
//
//	go test -run='^$' -bench=BenchmarkAppend -benchtime=3s ./queue/
func BenchmarkAppend(b *testing.B) {
	for _, sync := range []SyncPolicy{SyncAlways, SyncNever} {
		for _, appenders := range []int{1, 16, 256} {
			b.Run(fmt.Sprintf("sync=%s/appenders=%d/size=200", sync, appenders), func(b *testing.B) {
				q := openT(b, b.TempDir(), Options{Sync: sync, MaxBytes: -1})
				defer q.Close()
				lat := appendN(b, q, appenders, b.N, 200)
				b.StopTimer()
				reportLatency(b, lat)
				if f := testutilCounter(q.m.fsyncs); f > 0 {
					b.ReportMetric(float64(b.N)/f, "entries/fsync")
				}
			})
		}
	}
}

// appendN appends n entries of size bytes from g goroutines and returns
// every Append's latency. It reports entries/s.
func appendN(b *testing.B, q *Queue, g, n, size int) []time.Duration {
	ctx := context.Background()
	lats := make([][]time.Duration, g)
	var wg sync.WaitGroup
	start := time.Now()
	b.ResetTimer()
	for w := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, size)
			mine := n / g
			if w < n%g {
				mine++
			}
			l := make([]time.Duration, 0, mine)
			for range mine {
				t0 := time.Now()
				if _, err := q.Append(ctx, p); err != nil {
					b.Error(err)
					return
				}
				l = append(l, time.Since(t0))
			}
			lats[w] = l
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.ReportMetric(float64(n)/el.Seconds(), "entries/s")
	return slices.Concat(lats...)
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkDrainCatchUp builds a backlog of b.N 200-byte entries with 1, 16
// or 256 appenders, then drains it (Read up to 256 KiB, Ack at once, until
// every record is removed) and reports both rates and their ratio. The
// contract asks the drain to be at least 5× the ingest that built the
// backlog.
//
//	go test -run='^$' -bench=BenchmarkDrainCatchUp -benchtime=20000x ./queue/
func BenchmarkDrainCatchUp(b *testing.B) {
	for _, appenders := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("appenders=%d", appenders), func(b *testing.B) {
			dir := b.TempDir()
			q := openT(b, dir, Options{MaxBytes: -1})
			start := time.Now()
			appendN(b, q, appenders, b.N, 200)
			ingest := float64(b.N) / time.Since(start).Seconds()
			// Drain from a fresh open, as after an outage and a restart.
			q.Close()
			q = openT(b, dir, Options{MaxBytes: -1})
			defer q.Close()
			ctx := context.Background()
			start = time.Now()
			n := 0
			for n < b.N {
				bt, err := q.Read(ctx, 256<<10)
				if err != nil {
					b.Fatal(err)
				}
				n += len(bt.Entries)
				q.Ack(bt)
			}
			for {
				if d, _ := q.Depth(); d == 0 {
					break
				}
				time.Sleep(100 * time.Microsecond)
			}
			drain := float64(n) / time.Since(start).Seconds()
			b.ReportMetric(ingest, "ingest/s")
			b.ReportMetric(drain, "drain/s")
			b.ReportMetric(drain/ingest, "drain/ingest")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkDqueBaseline is plain dque as its README suggests using it: one
// item per append, fsync per item (turbo off), 256 goroutines. It is the
// figure group commit is measured against, in the same run.
//
//	go test -run='^$' -bench='BenchmarkAppend/sync=always/appenders=256|BenchmarkDqueBaseline' ./queue/
func BenchmarkDqueBaseline(b *testing.B) {
	dq, err := dque.NewOrOpen("baseline", b.TempDir(), 1024, newRecordObject)
	if err != nil {
		b.Fatal(err)
	}
	defer dq.Close()
	const g = 256
	var wg sync.WaitGroup
	start := time.Now()
	b.ResetTimer()
	for w := range g {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw := encodeRecord(1, [][]byte{make([]byte, 200)})
			for i := w; i < b.N; i += g {
				if err := dq.Enqueue(&record{raw: raw}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "entries/s")
	b.ReportMetric(0, "ns/op")
}
