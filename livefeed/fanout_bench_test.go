package livefeed

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// BenchmarkFanout measures the livefeed's fan-out alone: one op is a batch
// of 25 vehicles' new readings applied as ingest applies a decoded batch,
// and written to every one of the clients, WebSocket clients on loopback
// that follow every vehicle and read without decoding (as livelat's extra
// clients do). The batch reaches every client before the next is applied,
// in one message each (SendInterval 0: pacing is TestPacedUpdatesComeTogether's
// subject), so ns/update is the process's time per client update, the
// clients' reads included, and allocs/op is deterministic but for the
// runtime's own:
//
//	go test -run '^$' -bench BenchmarkFanout -benchtime 2000x -cpuprofile fanout.prof ./livefeed/
//	go tool pprof -top -focus 'livefeed\.' fanout.prof
func BenchmarkFanout(b *testing.B) {
	for _, clients := range []int{1, 100} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) { benchFanout(b, clients, 25) })
	}
}

func benchFanout(b *testing.B, clients, batch int) {
	const vehicles = 1000
	pub := newPublisher(b, "r0")
	rf := startFeed(b, func(c *Config) {
		c.SendInterval = 0
		c.MaxClients = clients + 10
		c.MaxRate = 1000
	}, pub)
	t0 := time.Now().UnixMilli()
	// A reading as the simulator sends one: every value set, so that a
	// vehicle's JSON is its usual ~300 bytes.
	reading := func(i, seq int) *telemetry.EnrichedRecord {
		r := rec(fmt.Sprintf("sim-%06d", i), fmt.Sprintf("fleet-%d", i%4), uint64(seq), t0+int64(seq)*1000,
			-26+float64(i)/1e4, 28+float64(seq)/1e5)
		rd := r.Record.Reading
		alt, temp, rpm, batt, fuel, odo := float32(1520.5), float32(88.5), float32(2150), float32(13.8), float32(61.25), 123456.7
		rd.AltitudeM, rd.EngineTempC, rd.EngineRpm, rd.BatteryVoltageV, rd.FuelLevelPct, rd.OdometerKm = &alt, &temp, &rpm, &batt, &fuel, &odo
		return r
	}
	first := make([]*telemetry.EnrichedRecord, vehicles)
	for i := range first {
		first[i] = reading(i, 1)
	}
	rf.apply(first, time.Now())
	batches := make([][]*telemetry.EnrichedRecord, b.N)
	for n := range batches {
		for k := range batch {
			i := (n*batch + k) % vehicles
			batches[n] = append(batches[n], reading(i, 2+(n*batch+k)/vehicles))
		}
	}

	var msgs atomic.Int64
	var cur atomic.Pointer[sync.WaitGroup]
	var readers sync.WaitGroup
	b.Cleanup(readers.Wait) // after the connections' cleanups (LIFO) have ended the readers
	for k := range clients {
		ws, _, err := dialRaw(rf, devToken, nil)
		if err != nil {
			b.Fatalf("client %d: %v", k, err)
		}
		if err := ws.WriteJSON(subscribeMsg{Type: "subscribe", ID: "all"}); err != nil {
			b.Fatalf("client %d subscribe: %v", k, err)
		}
		readers.Go(func() {
			for {
				_, r, err := ws.NextReader()
				if err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, r)
				msgs.Add(1)
				if wg := cur.Load(); wg != nil {
					wg.Done()
				}
			}
		})
		b.Cleanup(func() { _ = ws.Close() })
	}
	waitFor(b, 30*time.Second, "every client's hello and snapshot", func() bool { return msgs.Load() == int64(2*clients) })

	b.ReportAllocs()
	b.ResetTimer()
	for n := range b.N {
		wg := new(sync.WaitGroup)
		wg.Add(clients)
		cur.Store(wg)
		rf.apply(batches[n], time.Now())
		wg.Wait()
	}
	b.StopTimer()
	cur.Store(nil)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*clients*batch), "ns/update")
}
