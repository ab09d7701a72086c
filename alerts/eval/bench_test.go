package eval

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/telemetry"
)

// benchFences builds n fences of realistic sizes along the simulator's
// roads (within 2 km of them): 60% depots (polygons of 8-40 vertices,
// 100-500 m across), 20% circles (50-300 m), 10% towns and speed zones
// (polygons of 200-1000 vertices, 1-5 km), 10% corridors (a vehicle's
// whole road, up to 1,000 vertices, 200 m wide, each for 10 vehicles
// driving that road).
func benchFences(n int, routes []sim.Route, vehicles int) []Fence {
	rng := rand.New(rand.NewPCG(42, 1))
	fences := make([]Fence, 0, n)
	// Fences spread by length: as many per km on every road.
	total := 0.0
	for _, r := range routes {
		total += r.Km
	}
	pick := func() int {
		x := rng.Float64() * total
		for i, r := range routes {
			if x -= r.Km; x <= 0 {
				return i
			}
		}
		return len(routes) - 1
	}
	where := func() (float64, float64, int) {
		ri := pick()
		lat, lon, _ := routes[ri].At(rng.Float64() * routes[ri].Km)
		// up to 2 km off the road
		lat2, lon2 := move(lat, lon, (rng.Float64()*2-1)*2000, (rng.Float64()*2-1)*2000)
		return lat2, lon2, ri
	}
	poly := func(lat, lon, radiusM float64, vertices int) json.RawMessage {
		var pts []string
		for i := range vertices {
			a := 2 * math.Pi * float64(i) / float64(vertices)
			r := radiusM * (0.7 + 0.3*math.Sin(5*a)*math.Cos(3*a))
			la, lo := move(lat, lon, r*math.Sin(a), r*math.Cos(a))
			pts = append(pts, fmt.Sprintf("[%.7f,%.7f]", lo, la))
		}
		pts = append(pts, pts[0])
		return json.RawMessage(`{"type":"Polygon","coordinates":[[` + strings.Join(pts, ",") + `]]}`)
	}
	for i := range n {
		lat, lon, ri := where()
		id := fmt.Sprintf("f%05d", i)
		switch p := float64(i) / float64(n); {
		case p < 0.6:
			fences = append(fences, Fence{ID: id, Geometry: poly(lat, lon, 50+rng.Float64()*200, 8+rng.IntN(33)),
				Events: []string{FenceEnter, FenceExit, FenceDwell}})
		case p < 0.8:
			fences = append(fences, Fence{ID: id, Geometry: json.RawMessage(fmt.Sprintf(`{"type":"Point","coordinates":[%.7f,%.7f]}`, lon, lat)),
				RadiusM: 50 + rng.Float64()*250})
		case p < 0.9:
			f := Fence{ID: id, Geometry: poly(lat, lon, 1000+rng.Float64()*4000, 200+rng.IntN(801))}
			if rng.IntN(2) == 0 {
				f.SpeedLimit = 60
			} else {
				f.Events = []string{FenceEnter, FenceExit}
			}
			fences = append(fences, f)
		default:
			rt := routes[ri]
			var pts []string
			step := math.Max(0.5, rt.Km/999)
			for km := 0.0; km <= rt.Km; km += step {
				la, lo, _ := rt.At(km)
				pts = append(pts, fmt.Sprintf("[%.7f,%.7f]", lo, la))
			}
			if len(pts) < 2 {
				continue
			}
			var devs []string
			for v := ri + len(routes)*10*rng.IntN(max(1, vehicles/len(routes)/10)); v < vehicles && len(devs) < 10; v += len(routes) {
				devs = append(devs, fmt.Sprintf("veh-%05d", v))
			}
			fences = append(fences, Fence{ID: id, Geometry: json.RawMessage(`{"type":"LineString","coordinates":[` + strings.Join(pts, ",") + `]}`),
				WidthM: 200, Devices: devs})
		}
	}
	return fences
}

// benchFleet is vehicles driving the roads, one reading a second, with
// every sensor, and an evaluator with n fences and every rule on.
type benchFleet struct {
	recs   []*telemetry.EnrichedRecord
	routes []sim.Route
	km     []float64
	kmh    []float64
	step   []int
	rs     *RuleSet
}

var (
	benchOnce  sync.Once
	benchSetup *benchFleet
)

func newBenchFleet(vehicles, fences int) *benchFleet {
	routes := sim.Routes()
	rng := rand.New(rand.NewPCG(7, 7))
	b := &benchFleet{routes: routes}
	for v := range vehicles {
		cls := []string{"truck", "bus", "car"}[v%3]
		r := &telemetry.EnrichedRecord{
			Record: &telemetry.Record{DeviceId: fmt.Sprintf("veh-%05d", v), Reading: &telemetry.Reading{
				LatE7: new(int32), LonE7: new(int32), SpeedKmh: new(float32), HeadingDeg: new(float32),
				Ignition: new(bool), EngineTempC: new(float32), EngineRpm: new(float32), FuelLevelPct: new(float32),
				BatteryVoltageV: new(float32), PneumaticPressureKpa: new(float32)}},
			Enrichment: &telemetry.Enrichment{Fleet: []string{"acme", "metro", "beta"}[v%3], VehicleClass: cls},
		}
		b.recs = append(b.recs, r)
		rt := routes[v%len(routes)]
		b.km = append(b.km, rng.Float64()*rt.Km)
		b.kmh = append(b.kmh, 60+rng.Float64()*40)
		b.step = append(b.step, 0)
	}
	b.rs = &RuleSet{Version: 1, Rules: []Rule{{ID: "ign", Kind: KindIgnition, Enabled: boolp(true)}},
		Geofences: benchFences(fences, routes, vehicles)}
	return b
}

// next advances vehicle v by a second and returns its reading.
func (b *benchFleet) next(v int) *telemetry.EnrichedRecord {
	r := b.recs[v]
	rt := b.routes[v%len(b.routes)]
	b.step[v]++
	s := b.step[v]
	kmh := b.kmh[v] + 10*math.Sin(float64(s)/30)
	b.km[v] += kmh / 3600
	if !rt.Loop && b.km[v] > rt.Km {
		b.km[v] = 0
	}
	lat, lon, hd := rt.At(b.km[v])
	rd := r.Record.Reading
	rd.Seq = uint64(s)
	rd.TimeMs = base + int64(s)*1000
	r.Record.ReceivedMs = rd.TimeMs + 150
	*rd.LatE7, *rd.LonE7 = telemetry.DegreesToE7(lat), telemetry.DegreesToE7(lon)
	*rd.SpeedKmh, *rd.HeadingDeg = float32(kmh), float32(hd)
	*rd.Ignition = true
	*rd.EngineTempC = 88 + float32(s%7)
	*rd.EngineRpm = float32(kmh * 20)
	*rd.FuelLevelPct = 80 - float32(s)/500
	*rd.BatteryVoltageV = 27.6
	if r.Enrichment.VehicleClass == "car" {
		*rd.BatteryVoltageV = 13.8
	}
	*rd.PneumaticPressureKpa = 800
	return r
}

// BenchmarkEvaluate measures readings evaluated per second on one core,
// with 10,000 geofences and every rule on (docs/performance.md, "Alerts").
func BenchmarkEvaluate(b *testing.B) {
	for _, fences := range []int{0, 10_000} {
		b.Run(fmt.Sprintf("fences=%d", fences), func(b *testing.B) {
			const vehicles = 10_000
			f := newBenchFleet(vehicles, fences)
			start := time.Now()
			e, err := New(f.rs, DefaultOptions())
			if err != nil {
				b.Fatal(err)
			}
			b.Logf("%d fences compiled and indexed in %v", fences, time.Since(start).Round(time.Millisecond))
			events := 0
			emit := func(*Event) { events++ }
			// Warm up: every vehicle's state, and the lazy indexes of the
			// fences they meet (a running engine has built those).
			for range 30 {
				for v := range vehicles {
					e.Process(f.next(v), emit)
				}
			}
			events = 0
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				e.Process(f.next(i%vehicles), emit)
				if i%vehicles == vehicles-1 {
					e.Tick(f.recs[0].Record.Reading.TimeMs, emit)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "readings/s")
			b.ReportMetric(float64(events)/float64(b.N)*1e6, "events/1M")
		})
	}
}

// BenchmarkMemoryPerDevice measures the evaluator's memory per tracked
// device: heap in use after GC, with and without the devices, divided by
// their number.
func BenchmarkMemoryPerDevice(b *testing.B) {
	const vehicles = 50_000
	for range b.N {
		f := newBenchFleet(vehicles, 1000)
		e, err := New(f.rs, DefaultOptions())
		if err != nil {
			b.Fatal(err)
		}
		emit := func(*Event) {}
		// Build the fences' lazy indexes before measuring.
		for v := range 100 {
			e.Process(f.next(v), emit)
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for range 20 {
			for v := range vehicles {
				e.Process(f.next(v), emit)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/vehicles, "bytes/device")
		runtime.KeepAlive(e)
		runtime.KeepAlive(f) // its records were there before and after
	}
}

// TestBenchFencesCompile checks that the benchmark's rule set is valid and
// that its vehicles meet its fences (else the benchmark measures nothing),
// on a tenth of it: the same generator, every kind of fence, 1,000 fences
// (10,000 take half a minute to compile under -race on a shared machine;
// the benchmark itself compiles them).
func TestBenchFencesCompile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 1,000 fences")
	}
	f := newBenchFleet(1000, 1000)
	e, err := New(f.rs, DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	start := time.Now()
	for range 60 {
		for v := range 1000 {
			e.Process(f.next(v), func(ev *Event) {
				if ev.Alert.Fence != "" {
					n++
				}
			})
		}
	}
	if n == 0 {
		t.Fatalf("60,000 readings along the roads met no fence")
	}
	t.Logf("%d fence events in 60,000 readings (%v)", n, time.Since(start))
}

// BenchmarkCompileFences measures compiling a rule set of 10,000 fences
// (S2 coverings, the shape index, each fence's own index) from nothing: what
// an engine does at start before it evaluates (docs/alerts.md, "Readiness").
//
//	go test -run='^$' -bench=BenchmarkCompileFences -benchtime=3x ./alerts/eval/
func BenchmarkCompileFences(b *testing.B) {
	f := newBenchFleet(1, 10_000)
	b.ResetTimer()
	for range b.N {
		if _, err := New(f.rs, DefaultOptions()); err != nil {
			b.Fatal(err)
		}
	}
}
