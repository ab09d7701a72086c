package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/performance"
	"github.com/chromedp/chromedp"

	"github.com/drover-telemetry/drover/livefeed"
	"github.com/drover-telemetry/drover/telemetry"
)

// perfStats is what window.droverMap.perf.stop() returns (map's main.js).
type perfStats struct {
	Seconds      float64 `json:"seconds"`
	Vehicles     int     `json:"vehicles"`
	Shown        int     `json:"shown"`
	Frames       int     `json:"frames"`
	FrameP50     float64 `json:"frameP50"`
	FrameP95     float64 `json:"frameP95"`
	FrameP99     float64 `json:"frameP99"`
	FrameMax     float64 `json:"frameMax"`
	Draws        int     `json:"draws"`
	DrawP50      float64 `json:"drawP50"`
	DrawP95      float64 `json:"drawP95"`
	DrawMax      float64 `json:"drawMax"`
	DrawTotal    float64 `json:"drawTotal"`
	Messages     int     `json:"messages"`
	MessageP50   float64 `json:"messageP50"`
	MessageP95   float64 `json:"messageP95"`
	MessageTotal float64 `json:"messageTotal"`
	IndexBuilds  int     `json:"indexBuilds"`
	IndexMs      float64 `json:"indexMs"`
	LongTasks    int     `json:"longTasks"`
	HeapMB       float64 `json:"heapMB"`
}

// perfTowns are where the benchmark's vehicles gather: Southern African
// towns on the simulator's corridors.
var perfTowns = [][2]float64{{-26.20, 28.05}, {-25.75, 28.19}, {-29.86, 31.02}, {-29.10, 26.20},
	{-24.65, 25.90}, {-23.90, 29.45}, {-25.97, 32.57}, {-28.74, 24.77}}

// perfFleet is n vehicles around perfTowns, each reporting once a second,
// spread evenly over the second in batches of at most 500.
type perfFleet struct {
	pub  *publisher
	lat  []float64
	lon  []float64
	head []float64
	seq  uint64
}

func newPerfFleet(pub *publisher, n int) *perfFleet {
	rng := rand.New(rand.NewPCG(18, uint64(n)))
	f := &perfFleet{pub: pub, lat: make([]float64, n), lon: make([]float64, n), head: make([]float64, n)}
	for i := range n {
		town := perfTowns[i%len(perfTowns)]
		f.lat[i] = town[0] + rng.NormFloat64()*0.3
		f.lon[i] = town[1] + rng.NormFloat64()*0.3
		f.head[i] = rng.Float64() * 360
	}
	return f
}

// publishSlice moves and publishes vehicles [from, to): 60 km/h for a second.
func (f *perfFleet) publishSlice(from, to int) {
	now := time.Now().UnixMilli()
	recs := make([]*telemetry.EnrichedRecord, 0, 500)
	for i := from; i < to; i++ {
		f.head[i] = math.Mod(f.head[i]+float64(i%5-2)*3+360, 360)
		f.lat[i] += 0.0167 / 111 * math.Cos(f.head[i]*math.Pi/180)
		f.lon[i] += 0.0167 / 111 / math.Cos(f.lat[i]*math.Pi/180) * math.Sin(f.head[i]*math.Pi/180)
		r := rec(fmt.Sprintf("veh-%05d", i), []string{"acme", "metro", "fresh", "karoo"}[i%4], f.seq, now, f.lat[i], f.lon[i])
		h := float32(f.head[i])
		r.Record.Reading.HeadingDeg = &h
		recs = append(recs, r)
		if len(recs) == 500 {
			f.pub.publish(recs...)
			recs = recs[:0]
		}
	}
	if len(recs) > 0 {
		f.pub.publish(recs...)
	}
}

// run publishes every vehicle once a second, a tenth every 100 ms, until
// ctx ends.
func (f *perfFleet) run(ctx context.Context) {
	n := len(f.lat)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for slot := 0; ; slot = (slot + 1) % 10 {
		if slot == 0 {
			f.seq++
		}
		f.publishSlice(n*slot/10, n*(slot+1)/10)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// BenchmarkLiveMapFrames measures the live map in headless Chromium with
// 1,000 and 10,000 vehicles each reporting once a second, through a real
// livefeed: the page's frame intervals (what the screen shows: 16.7 ms is
// 60 frames/s), the time it spends drawing the vehicles and handling the
// feed's messages, and how busy its main thread is (Chromium's
// TaskDuration over the wall time). Two views: "region" (Southern Africa,
// zoom 6: every vehicle in view, in clusters) and "city" (Johannesburg,
// zoom 11: a few hundred vehicles drawn one by one, gliding). It is a
// measurement, not a test: nothing is asserted but that the page keeps up.
//
//	make map && cd internal/browsertest &&
//	  go test -run '^$' -bench BenchmarkLiveMapFrames -benchtime 1x -timeout 30m .
//
// DROVER_MAP_BENCH_DURATION (default 30s) is how long each case measures,
// after a 5 s warm-up. Run it alone on the machine: Chromium, the livefeed
// and the publisher share its cores.
func BenchmarkLiveMapFrames(b *testing.B) {
	dur := 30 * time.Second
	if s := os.Getenv("DROVER_MAP_BENCH_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("DROVER_MAP_BENCH_DURATION: %v", err)
		}
		dur = d
	}
	views := []struct {
		name           string
		lat, lon, zoom float64
		wantAllInView  bool
	}{
		{"region", -26.5, 28, 6, true},
		{"city", -26.2, 28.05, 11, false},
	}
	for _, n := range []int{1000, 10000} {
		for _, v := range views {
			b.Run(fmt.Sprintf("vehicles=%d/view=%s", n, v.name), func(b *testing.B) {
				pub := newPublisher(b, "r0")
				rf := startFeedWith(b, func(c *livefeed.Config) { c.SnapshotMax = 2 * n }, pub)
				fleet := newPerfFleet(pub, n)
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				wg.Go(func() { fleet.run(ctx) })
				defer func() { cancel(); wg.Wait() }()
				rf.waitVehicles(b, n)

				br := newBrowser(b, dur+3*time.Minute, 1280, 800)
				br.open(fmt.Sprintf("%s/?token=%s&lat=%v&lon=%v&zoom=%v", rf.url("http"), devToken, v.lat, v.lon, v.zoom))
				br.waitState("the vehicles in view", func(s mapState) bool {
					return s.Connected && s.Drawn > 0 && (!v.wantAllInView || s.Drawn == n)
				})
				if _, err := chromedp.Call(br.ctx, performance.Enable, performance.EnableParams{}); err != nil {
					b.Fatal(err)
				}
				for b.Loop() {
					time.Sleep(5 * time.Second) // warm-up: snapshot handled, index built, steady updates
					m0 := mainThreadSeconds(b, br)
					br.eval(`window.droverMap.perf.start()`)
					time.Sleep(dur)
					st, err := chromedp.Run(br.ctx, chromedp.Evaluate[perfStats](`window.droverMap.perf.stop()`))
					if err != nil {
						b.Fatal(err)
					}
					busy := (mainThreadSeconds(b, br) - m0) / st.Seconds
					s := br.mapState()
					b.ReportMetric(st.FrameP50, "frame-p50-ms")
					b.ReportMetric(st.FrameP95, "frame-p95-ms")
					b.ReportMetric(st.FrameP99, "frame-p99-ms")
					b.ReportMetric(st.DrawP95, "draw-p95-ms")
					b.ReportMetric(busy*100, "main-thread-%")
					b.ReportMetric(float64(st.Messages)/st.Seconds, "msgs/s")
					b.ReportMetric(s.UpdatesPerSec, "updates/s")
					b.ReportMetric(float64(st.LongTasks)/st.Seconds, "long-tasks/s")
					out, _ := json.Marshal(st)
					b.Logf("%d vehicles, view %s: %d shown, %.0f updates/s; main thread %.0f%% busy; %s", n, v.name, s.Drawn,
						s.UpdatesPerSec, busy*100, out)
					if !s.Connected {
						b.Errorf("the page lost its connection during the measurement")
					}
				}
				br.checkNoJSErrors()
			})
		}
	}
}

// mainThreadSeconds is Chromium's TaskDuration for the page: the seconds
// its main thread has spent running tasks.
func mainThreadSeconds(b *testing.B, br *browser) float64 {
	b.Helper()
	res, err := chromedp.Call(br.ctx, performance.GetMetrics, cdp.Empty{})
	if err != nil {
		b.Fatal(err)
	}
	for _, m := range res.Metrics {
		if m.Name == "TaskDuration" {
			return m.Value
		}
	}
	b.Fatal("no TaskDuration in Chromium's performance metrics")
	return 0
}
