package livefeed

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/telemetry"
)

// latencyRun describes one publish → client latency measurement.
type latencyRun struct {
	vehicles int           // each reports once per second
	clients  int           // with mixed filters, a quarter of each kind
	duration time.Duration // of measurement, after warmUp
	warmUp   time.Duration
	fleets   int
}

// latencyResult is what a run measured.
type latencyResult struct {
	deliveries               int
	p50, p90, p99, p999, max time.Duration
	published                int
	perClientMin             int // fewest updates one client received
	conflated, slowDropped   float64
}

func (r latencyResult) String() string {
	return fmt.Sprintf("%d deliveries of %d published readings: p50 %v p90 %v p99 %v p99.9 %v max %v "+
		"(fewest per client %d; conflated %v; slow disconnects %v)",
		r.deliveries, r.published, r.p50.Round(10*time.Microsecond), r.p90.Round(10*time.Microsecond),
		r.p99.Round(10*time.Microsecond), r.p999.Round(10*time.Microsecond), r.max.Round(10*time.Microsecond),
		r.perClientMin, r.conflated, r.slowDropped)
}

// measureLatency runs a livefeed fed by a real zmq4 PUB on loopback with
// run.vehicles vehicles reporting at 1 Hz (batches every 50 ms, as a router
// publishing what its frontends forward would), and run.clients WebSocket
// clients in the same process:
//
//   - a quarter with a fleet-scoped token, subscribed to their whole fleet;
//   - a quarter with the dev token, subscribed to a map area about 2° square;
//   - a quarter with a fleet-scoped token, subscribed to 10 of its devices;
//   - a quarter with the dev token, subscribed to one fleet within a quarter
//     of the area.
//
// Latency is from just before the publisher's Send to the client having
// read and decoded the message carrying the reading.
func measureLatency(tb testing.TB, run latencyRun) latencyResult {
	tb.Helper()
	dir := tb.TempDir()
	tokens := map[string][]string{}
	for f := range run.fleets {
		tokens[fmt.Sprintf("tok-f%d", f)] = []string{fmt.Sprintf("f%d", f)}
	}
	clients := writeClients(tb, dir, tokens)
	pub := newPublisher(tb, "r0")
	rf := startFeed(tb, func(c *Config) {
		c.Clients = clients
		c.MaxClients = run.clients + 10
	}, pub)

	rng := rand.New(rand.NewPCG(1, 2))
	type sv struct{ lat, lon, dlat, dlon float64 }
	vs := make([]sv, run.vehicles)
	for i := range vs {
		// Spread over 10° × 10° around southern Africa.
		vs[i] = sv{lat: -30 + rng.Float64()*10, lon: 20 + rng.Float64()*10,
			dlat: (rng.Float64() - .5) * 0.002, dlon: (rng.Float64() - .5) * 0.002}
	}
	fleetOf := func(i int) string { return fmt.Sprintf("f%d", i%run.fleets) }
	idOf := func(i int) string { return fmt.Sprintf("v%05d", i) }
	rounds := int((run.warmUp+run.duration)/time.Second) + 3
	// pubNs[i][seq]: when reading seq of vehicle i was published.
	pubNs := make([][]atomic.Int64, run.vehicles)
	for i := range pubNs {
		pubNs[i] = make([]atomic.Int64, rounds+2)
	}
	t0 := time.Now().UnixMilli()
	makeRec := func(i, seq int) *telemetry.EnrichedRecord {
		v := &vs[i]
		v.lat, v.lon = v.lat+v.dlat, v.lon+v.dlon
		return rec(idOf(i), fleetOf(i), uint64(seq), t0+int64(seq)*1000, v.lat, v.lon)
	}
	// Round 1: every vehicle, before any client.
	var first []*telemetry.EnrichedRecord
	for i := range vs {
		first = append(first, makeRec(i, 1))
	}
	pub.publish(first...)
	rf.waitVehicles(tb, run.vehicles)

	// Clients.
	type clientStats struct {
		lat []time.Duration
		n   int
	}
	var measuring atomic.Bool
	stats := make([]*clientStats, run.clients)
	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, run.clients)
	for k := range run.clients {
		stats[k] = &clientStats{}
		fleet := rng.IntN(run.fleets)
		var token string
		var sub subscribeMsg
		switch k % 4 {
		case 0:
			token = fmt.Sprintf("tok-f%d", fleet)
		case 1:
			token = devToken
			w, s := 20+rng.Float64()*8, -30+rng.Float64()*8
			sub.BBox = &BBox{West: w, South: s, East: w + 2, North: s + 2}
		case 2:
			token = fmt.Sprintf("tok-f%d", fleet)
			for range 10 {
				sub.Devices = append(sub.Devices, idOf(rng.IntN(run.vehicles/run.fleets)*run.fleets+fleet))
			}
		case 3:
			token = devToken
			sub.Fleets = []string{fmt.Sprintf("f%d", fleet)}
			w, s := 20+rng.Float64()*5, -30+rng.Float64()*5
			sub.BBox = &BBox{West: w, South: s, East: w + 5, North: s + 5}
		}
		ws, _, err := dialRaw(rf, token, nil)
		if err != nil {
			tb.Fatalf("client %d: %v", k, err)
		}
		conns[k] = ws
		sub.Type, sub.ID = "subscribe", "s"
		if err := ws.WriteJSON(sub); err != nil {
			tb.Fatalf("client %d subscribe: %v", k, err)
		}
		st := stats[k]
		wg.Go(func() {
			var m struct {
				Type     string `json:"type"`
				Vehicles []struct {
					ID  string `json:"id"`
					Seq int    `json:"seq"`
				} `json:"vehicles"`
			}
			for {
				_, data, err := ws.ReadMessage()
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				m.Vehicles = m.Vehicles[:0]
				if err := json.Unmarshal(data, &m); err != nil || m.Type != "update" || !measuring.Load() {
					continue
				}
				for _, v := range m.Vehicles {
					i, err := strconv.Atoi(v.ID[1:])
					if err != nil || i >= run.vehicles || v.Seq >= len(pubNs[i]) {
						continue
					}
					if at := pubNs[i][v.Seq].Load(); at != 0 {
						st.lat = append(st.lat, time.Duration(now-at))
						st.n++
					}
				}
			}
		})
	}

	// Publish: every vehicle once per second, in 20 batches of 50 ms.
	const slices_ = 20
	tick := time.NewTicker(time.Second / slices_)
	start := time.Now()
	published := 0
	for n := 0; ; n++ {
		<-tick.C
		el := time.Since(start)
		if el > run.warmUp+run.duration {
			break
		}
		measuring.Store(el >= run.warmUp)
		seq := 2 + n/slices_
		var recs []*telemetry.EnrichedRecord
		for i := n % slices_; i < run.vehicles; i += slices_ {
			recs = append(recs, makeRec(i, seq))
		}
		now := time.Now().UnixNano()
		for i := n % slices_; i < run.vehicles; i += slices_ {
			pubNs[i][seq].Store(now)
		}
		pub.publish(recs...)
		if el >= run.warmUp {
			published += len(recs)
		}
	}
	tick.Stop()
	time.Sleep(200 * time.Millisecond) // the last batch's deliveries
	measuring.Store(false)
	res := latencyResult{
		published:   published,
		conflated:   testutil.ToFloat64(rf.m.conflated),
		slowDropped: testutil.ToFloat64(rf.m.slowDisconnects),
	}
	for _, ws := range conns {
		_ = ws.Close()
	}
	wg.Wait()
	var all []time.Duration
	res.perClientMin = -1
	for _, st := range stats {
		all = append(all, st.lat...)
		if res.perClientMin < 0 || st.n < res.perClientMin {
			res.perClientMin = st.n
		}
	}
	if len(all) == 0 {
		tb.Fatal("no update delivered")
	}
	slices.Sort(all)
	q := func(p float64) time.Duration { return all[min(len(all)-1, int(p*float64(len(all))))] }
	res.deliveries = len(all)
	res.p50, res.p90, res.p99, res.p999, res.max = q(.5), q(.9), q(.99), q(.999), all[len(all)-1]
	return res
}

// BenchmarkLiveLatency measures publish → client receive latency with 1,000
// vehicles at 1 Hz and 500 clients with mixed filters for 10 s (the target
// is p99 ≤ 50 ms):
//
//	go test -run='^$' -bench=BenchmarkLiveLatency -benchtime=1x ./livefeed/
//
// DROVER_LATENCY_VEHICLES, DROVER_LATENCY_CLIENTS and
// DROVER_LATENCY_SECONDS change the figures. One iteration is one whole run,
// whatever b.N is.
func BenchmarkLiveLatency(b *testing.B) {
	run := latencyRun{
		vehicles: envInt("DROVER_LATENCY_VEHICLES", 1000),
		clients:  envInt("DROVER_LATENCY_CLIENTS", 500),
		duration: time.Duration(envInt("DROVER_LATENCY_SECONDS", 10)) * time.Second,
		warmUp:   2 * time.Second,
		fleets:   4,
	}
	var res latencyResult
	for range b.N {
		res = measureLatency(b, run)
	}
	b.ReportMetric(float64(res.p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(res.p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(res.max.Microseconds())/1000, "max-ms")
	b.ReportMetric(float64(res.deliveries)/run.duration.Seconds(), "deliveries/s")
	b.ReportMetric(0, "ns/op")
	b.Logf("%d vehicles at 1 Hz, %d clients, %v: %v", run.vehicles, run.clients, run.duration, res)
}

// TestLatencySmoke is a small run of the latency measurement, so that the
// benchmark's machinery stays working. It asserts behaviour (every client
// gets updates, none is disconnected), not a time: latency is measured by
// BenchmarkLiveLatency, never by a timed unit test on a shared machine.
func TestLatencySmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	noLeaks(t)
	res := measureLatency(t, latencyRun{vehicles: 200, clients: 40, duration: 2 * time.Second, warmUp: time.Second, fleets: 4})
	t.Logf("200 vehicles at 1 Hz, 40 clients, 2 s: %v", res)
	if res.perClientMin == 0 {
		t.Errorf("a client received no update")
	}
	if res.slowDropped != 0 {
		t.Errorf("%v clients disconnected as too slow at 200 vehicles", res.slowDropped)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
