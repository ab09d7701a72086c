package influx

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/telemetry"
)

// BenchmarkWrite writes batches of new readings (full sensor set, two
// extras, 100 devices) to a real InfluxDB 1.8.10 and reports points/s: the
// sink's encoding, the HTTP round trip and InfluxDB's WAL append.
//
//	go test -run='^$' -bench=Write -benchmem ./storagewriter/influx/
func BenchmarkWrite(b *testing.B) {
	inf := testenv.InfluxD(b)
	for _, size := range []int{500, 5000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			s, _ := newTestSink(b, inf.URL, inf.Database)
			// Distinct sequences in every iteration and sub-benchmark: new
			// points, not overwrites.
			seq := uint64(size) * 1_000_000
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				recs := fleetBatch(size, 100, seq)
				seq += uint64(size / 100)
				b.StartTimer()
				if err := s.Write(context.Background(), recs); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "points/s")
			b.ReportMetric(testutil.ToFloat64(s.metrics.bytes)/float64(b.N*size), "B/point")
		})
	}
}

// BenchmarkWriteConcurrent is BenchmarkWrite's 5,000-point batches with 1,
// 2 and 4 writes in flight at once, as the storage writer's -sink-writers
// makes them: the ratio of points/s between the sub-benchmarks of one run
// is what concurrency buys against this InfluxDB.
//
//	go test -run='^$' -bench=WriteConcurrent -benchtime=40x ./storagewriter/influx/
func BenchmarkWriteConcurrent(b *testing.B) {
	inf := testenv.InfluxD(b)
	const size = 5000
	for _, writers := range []int{1, 2, 4} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			s, _ := newTestSink(b, inf.URL, inf.Database)
			// Every batch its own sequences: new points, not overwrites.
			batches := make([][]*telemetry.EnrichedRecord, b.N)
			for i := range batches {
				batches[i] = fleetBatch(size, 100, uint64(writers)*1_000_000_000+uint64(i*size/100))
			}
			next := make(chan []*telemetry.EnrichedRecord)
			go func() {
				for _, recs := range batches {
					next <- recs
				}
				close(next)
			}()
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for recs := range next {
						if err := s.Write(context.Background(), recs); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "points/s")
		})
	}
}

// BenchmarkEncode is the sink's CPU cost without the network: line protocol
// for 5,000 readings.
func BenchmarkEncode(b *testing.B) {
	recs := fleetBatch(5000, 100, 1)
	e := newEncoder("telemetry", nil)
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = buf[:0]
		for _, r := range recs {
			var err error
			if buf, err = e.appendRecord(buf, r); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.SetBytes(int64(len(buf)))
	b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "points/s")
}
