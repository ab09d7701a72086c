package lake

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// BenchmarkWrite measures Write to a local folder: convert, sort, encode,
// fsync, rename, fsync the folder. One iteration is one batch, i.e. one
// file. rows/s is the figure to compare with the storage writer's intake;
// B/row is the compressed size on disk.
//
//	go test -run='^$' -bench=BenchmarkWrite -benchmem ./storagewriter/lake/
func BenchmarkWrite(b *testing.B) {
	for _, codec := range []string{CompressionZstd, CompressionSnappy} {
		for _, size := range []int{500, 5000} {
			b.Run(fmt.Sprintf("codec=%s/batch=%d", codec, size), func(b *testing.B) {
				cfg := testConfig(b)
				cfg.Compression = codec
				s := newTestSink(b, cfg)
				// 1,000 devices, one reading each per second: a rush-hour mix.
				recs := makeRecords(size, 1000, baseTime, time.Second, 1)
				ctx := context.Background()
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if err := s.Write(ctx, recs); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				rows := float64(b.N * size)
				b.ReportMetric(rows/b.Elapsed().Seconds(), "rows/s")
				b.ReportMetric(testutil.ToFloat64(s.m.bytes.WithLabelValues(kindBatch))/rows, "B/row")
			})
		}
	}
}

// BenchmarkCompact measures merging 32 files of 5,000 rows into one: the
// cost compaction adds per row.
func BenchmarkCompact(b *testing.B) {
	cfg := testConfig(b)
	recs := makeRecords(5000, 1000, baseTime, time.Second, 1)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		cfg.Dir = b.TempDir()
		s, err := newSink(cfg, nil, nil, nil, func() time.Time { return baseTime.Add(3 * time.Hour) })
		if err != nil {
			b.Fatal(err)
		}
		for range 32 {
			if err := s.Write(ctx, recs); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		if err := s.Compact(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		s.Close(ctx)
		b.StartTimer()
	}
	b.ReportMetric(float64(b.N*32*5000)/b.Elapsed().Seconds(), "rows/s")
}
