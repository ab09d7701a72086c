package livefeed

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

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
// runtime's own. The clients of one case share a stream (stream.go) unless
// streams=off; with deflate they negotiate permessage-deflate
// (Config.Compression). Besides the times, each case reports what does
// not depend on the machine: writes/update (messages written per client
// update) and wire-B/update (bytes the clients read per client update):
//
//	go test -run '^$' -bench BenchmarkFanout -benchtime 2000x -cpuprofile fanout.prof ./livefeed/
//	go tool pprof -top -focus 'livefeed\.' fanout.prof
func BenchmarkFanout(b *testing.B) {
	for _, c := range []struct {
		name             string
		clients          int
		streams, deflate bool
	}{
		{"clients=1", 1, true, false},
		{"clients=100", 100, true, false},
		{"clients=100/streams=off", 100, false, false},
		{"clients=100/deflate", 100, true, true},
	} {
		b.Run(c.name, func(b *testing.B) { benchFanout(b, c.clients, 25, c.streams, c.deflate) })
	}
}

// countingConn counts the bytes read from a connection.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// arrivals counts messages down to 0, then closes all; more are ignored.
type arrivals struct {
	left atomic.Int64
	all  chan struct{}
}

func newArrivals(n int) *arrivals {
	a := &arrivals{all: make(chan struct{})}
	a.left.Store(int64(n))
	return a
}

func (a *arrivals) arrive() {
	if a.left.Add(-1) == 0 {
		close(a.all)
	}
}

func benchFanout(b *testing.B, clients, batch int, streams, deflate bool) {
	const vehicles = 1000
	pub := newPublisher(b, "r0")
	rf := startFeed(b, func(c *Config) {
		c.SendInterval = 0
		c.MaxClients = clients + 10
		c.MaxRate = 1000
		c.SharedStreams = streams
		c.Compression = deflate
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

	var msgs, wire atomic.Int64
	var cur atomic.Pointer[arrivals]
	d := &websocket.Dialer{HandshakeTimeout: 5 * time.Second, EnableCompression: deflate,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countingConn{Conn: c, n: &wire}, nil
		}}
	var readers sync.WaitGroup
	b.Cleanup(readers.Wait) // after the connections' cleanups (LIFO) have ended the readers
	for k := range clients {
		ws, _, err := dialRaw(rf, devToken, d)
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
				if a := cur.Load(); a != nil {
					a.arrive()
				}
			}
		})
		b.Cleanup(func() { _ = ws.Close() })
	}
	waitFor(b, 30*time.Second, "every client's hello and snapshot", func() bool { return msgs.Load() == int64(2*clients) })
	if streams && clients > 1 {
		// A client joins its stream when its writer is next woken with
		// nothing of its own left: a batch of a vehicle outside the
		// measured ones wakes them all.
		warm := 0
		waitFor(b, 30*time.Second, "every client in the stream", func() bool {
			warm++
			a := newArrivals(clients)
			cur.Store(a)
			rf.apply([]*telemetry.EnrichedRecord{reading(vehicles, warm)}, time.Now())
			<-a.all
			return int(testutil.ToFloat64(rf.m.streamClients)) == clients
		})
		// A client that joined may get the last warm batch twice (the
		// stream took it after the join): let that in before measuring.
		for range 2 {
			warm++
			a := newArrivals(clients)
			cur.Store(a)
			rf.apply([]*telemetry.EnrichedRecord{reading(vehicles, warm)}, time.Now())
			<-a.all
		}
	}
	sent0, wire0 := testutil.ToFloat64(rf.m.messagesSent), wire.Load()

	b.ReportAllocs()
	b.ResetTimer()
	for n := range b.N {
		a := newArrivals(clients)
		cur.Store(a)
		rf.apply(batches[n], time.Now())
		<-a.all
	}
	b.StopTimer()
	cur.Store(nil)
	updates := float64(b.N * clients * batch)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/updates, "ns/update")
	b.ReportMetric((testutil.ToFloat64(rf.m.messagesSent)-sent0)/updates, "writes/update")
	b.ReportMetric(float64(wire.Load()-wire0)/updates, "wire-B/update")
}
