package sim

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"
)

// BenchmarkFleet measures what the simulator and the fake frontend together push through
// loopback: readings acked per second, per frame size and encoding. One op is one reading.
func BenchmarkFleet(b *testing.B) {
	for _, json := range []bool{false, true} {
		for _, frame := range []int{1, 50} {
			name := fmt.Sprintf("json=%v/frame=%d", json, frame)
			b.Run(name, func(b *testing.B) {
				s := newFakeFrontend(b, nil)
				const devices = 20
				cfg := testConfig(s.url())
				cfg.Devices, cfg.Rate, cfg.FrameReadings, cfg.JSON = devices, 1e6, frame, json
				cfg.Readings = max(1, b.N/devices)
				f, err := New(cfg, slog.New(slog.DiscardHandler), nil)
				if err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				b.ResetTimer()
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				f.Run(ctx)
				b.StopTimer()
				st := f.Stats()
				b.ReportMetric(float64(st.Acked)/st.Elapsed.Seconds(), "readings/s")
				b.ReportMetric(float64(st.AckLatency.P50.Microseconds()), "p50-µs")
			})
		}
	}
}
