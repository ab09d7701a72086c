package sim

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/telemetry"
)

func TestHistogramBuckets(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 15, 16, 17, 31, 32, 33, 1000, 1 << 40, 1<<63 - 1, 1 << 63, 1<<64 - 1} {
		i := bucketOf(v)
		if i < prev {
			t.Errorf("bucketOf(%d) = %d, below the previous %d", v, i, prev)
		}
		prev = i
		if i >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d out of %d", v, i, numBuckets)
		}
		up := bucketUpper(i)
		if up < v || (i > 0 && bucketUpper(i-1) >= v) {
			t.Errorf("value %d in bucket %d with bounds (%d, %d]", v, i, bucketUpper(i-1), up)
		}
	}
}

func TestHistogramQuantiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h histogram
	var all []time.Duration
	for range 20000 {
		d := time.Duration(rng.ExpFloat64() * float64(3*time.Millisecond))
		all = append(all, d)
		h.recordN(d, 1)
	}
	h.recordN(time.Second, 0) // no samples: no effect
	slices.Sort(all)
	l := h.snapshot().latency()
	if l.Count != 20000 || l.Max != all[len(all)-1] {
		t.Fatalf("count %d max %s, want 20000 %s", l.Count, l.Max, all[len(all)-1])
	}
	for _, c := range []struct {
		q   float64
		got time.Duration
	}{{0.5, l.P50}, {0.9, l.P90}, {0.99, l.P99}, {0.999, l.P999}} {
		exact := all[int(c.q*float64(len(all)))-1]
		if c.got < exact || float64(c.got) > float64(exact)*1.0625+1 {
			t.Errorf("p%v = %s, exact %s: want within +6.25%%", c.q*100, c.got, exact)
		}
	}
	// Intervals subtract.
	before := h.snapshot()
	h.recordN(time.Hour, 3)
	iv := h.snapshot().sub(before).latency()
	if iv.Count != 3 || iv.P50 != time.Hour || iv.Mean != time.Hour {
		t.Errorf("interval: %+v", iv)
	}
	// An interval's max is its own (within a bucket), not the run's: a warm-up spike does not
	// leak into the steady state after it.
	before = h.snapshot()
	h.recordN(2*time.Millisecond, 5)
	iv = h.snapshot().sub(before).latency()
	if iv.Count != 5 || iv.Max < 2*time.Millisecond || float64(iv.Max) > float64(2*time.Millisecond)*1.0625 {
		t.Errorf("interval after an hour-long sample: max %s, want ~2ms", iv.Max)
	}
	var empty histogram
	if l := empty.snapshot().latency(); l != (Latency{}) {
		t.Errorf("empty: %+v", l)
	}
}

// TestVehicleReadingsValid drives every class of vehicle for a simulated day at 1 Hz and a
// few seconds at 1 kHz, and checks that every reading passes the frontend's validation, that the
// vehicles drive their routes with stops and refuelling, and that events happen and are marked.
func TestVehicleReadingsValid(t *testing.T) {
	// Not parallel with the other tests: it would steal the CPU their timing needs.
	now := time.Now()
	for i, class := range classes {
		t.Run(class, func(t *testing.T) {
			t.Parallel()
			vehicleDay(t, now, i, class)
		})
	}
}

// vehicleDay drives a vehicle of class for a day at 1 Hz and ten seconds at 1 kHz.
func vehicleDay(t *testing.T, now time.Time, i int, class string) {
	for _, dt := range []float64{1, 0.001} {
		v := newVehicle(rand.New(rand.NewPCG(uint64(i), 7)), class)
		v.eventRate = 2
		fr := newFrameReading()
		var s sample
		lat0, lon0, odo0 := v.lat, v.lon, v.odo
		maxSpeed := 0.0
		var (
			prev                                  *sample
			offs, idles, refuels, maxOff, offRun  int
			harsh, overheat, speeding, harshDrops int
		)
		steps := 86400 // a day at 1 Hz
		if dt < 1 {
			steps = 10_000 // ten seconds at 1 kHz
		}
		for n := range steps {
			v.step(dt, &s)
			s.seq, s.timeMs = uint64(n+1), now.UnixMilli()
			r := fr.fill(&s)
			if err := telemetry.ValidateReading(r, now, telemetry.Limits{}); err != nil {
				t.Fatalf("%s dt=%v step %d: %v\n%v", class, dt, n, err, r)
			}
			lat, lon, _ := r.Position()
			if lat < minLat-0.01 || lat > maxLat+0.01 || lon < minLon-0.01 || lon > maxLon+0.01 {
				t.Fatalf("%s left Southern Africa: %v %v", class, lat, lon)
			}
			if (r.PneumaticPressureKpa != nil) != (class != "car") {
				t.Fatalf("%s: pneumatic %v", class, r.PneumaticPressureKpa)
			}
			limit := v.limit()
			switch {
			case r.Extra[ExtraSpeeding] == 1 && float64(s.speedKmh) <= limit:
				t.Fatalf("%s step %d: speeding marked at %v km/h, limit %v", class, n, s.speedKmh, limit)
			case r.Extra[ExtraSpeeding] == 0 && float64(s.speedKmh) > limit+0.01:
				t.Fatalf("%s step %d: %v km/h over the limit %v unmarked", class, n, s.speedKmh, limit)
			case (r.Extra[ExtraOverheating] == 1) != (s.engTempC > overheatC):
				t.Fatalf("%s step %d: overheating marker %v at %v °C", class, n, r.Extra, s.engTempC)
			}
			if r.Extra[ExtraHarshBraking] == 1 {
				harsh++
				if prev != nil && prev.speedKmh-s.speedKmh > 10 {
					harshDrops++
				}
			}
			if r.Extra[ExtraOverheating] == 1 {
				overheat++
			}
			if r.Extra[ExtraSpeeding] == 1 {
				speeding++
			}
			if !s.ignition {
				offs++
				offRun++
				maxOff = max(maxOff, offRun)
				if s.rpm != 0 || s.speedKmh != 0 {
					t.Fatalf("%s step %d: ignition off at %v rpm, %v km/h", class, n, s.rpm, s.speedKmh)
				}
			} else {
				offRun = 0
				if s.speedKmh == 0 {
					idles++
				}
			}
			if prev != nil {
				if s.odoKm < prev.odoKm {
					t.Fatalf("%s step %d: odometer went back", class, n)
				}
				if s.fuelPct > prev.fuelPct+0.01 {
					refuels++
					if s.ignition {
						t.Fatalf("%s step %d: refuelled with the engine running", class, n)
					}
				}
			}
			maxSpeed = max(maxSpeed, float64(s.speedKmh))
			ps := s
			prev = &ps
		}
		if dt != 1 {
			continue
		}
		if v.lat == lat0 && v.lon == lon0 || maxSpeed < 30 {
			t.Errorf("%s did not move: max speed %v", class, maxSpeed)
		}
		km := v.odo - odo0
		t.Logf("%s on %s: %.0f km, max %.0f km/h, %d s off (longest %d), %d s idling, %d s refuelling, "+
			"events: harsh %d (%d with a drop), overheating %d, speeding %d",
			class, v.rt.name, km, maxSpeed, offs, maxOff, idles, refuels, harsh, harshDrops, overheat, speeding)
		if km < 300 || offs == 0 || idles == 0 || maxOff < 600 || refuels == 0 {
			t.Errorf("%s: a day of %.0f km, %d s off (longest %d), %d s idling, %d s refuelling: want a journey with stops",
				class, km, offs, maxOff, idles, refuels)
		}
		if harshDrops == 0 || overheat == 0 || speeding == 0 {
			t.Errorf("%s: no event of some kind: harsh brakings %d, overheating %d, speeding %d",
				class, harshDrops, overheat, speeding)
		}
	}
}

// TestEventMarkersOnTheWire checks that event markers survive encoding and the frontend's
// decoding, binary and JSON.
func TestEventMarkersOnTheWire(t *testing.T) {
	v := newVehicle(rand.New(rand.NewPCG(5, 5)), "bus")
	v.eventRate = 200
	now := time.Now()
	seen := map[string]bool{}
	for n := 0; n < 20000 && len(seen) < 3; n++ {
		var s sample
		v.step(1, &s)
		s.seq, s.timeMs = uint64(n+1), now.UnixMilli()
		if s.events == 0 {
			continue
		}
		r := newFrameReading().fill(&s)
		for _, js := range []bool{false, true} {
			b, err := telemetry.AppendUplink(nil, &telemetry.Uplink{Readings: []*telemetry.Reading{r}}, js)
			if err != nil {
				t.Fatal(err)
			}
			u, err := telemetry.DecodeUplink(b, js, now, telemetry.DefaultLimits())
			if err != nil {
				t.Fatalf("json %v: %v", js, err)
			}
			got := u.Readings[0].GetExtra()
			if len(got) == 0 || len(got) != len(r.Extra) {
				t.Fatalf("json %v: extra %v, sent %v", js, got, r.Extra)
			}
			for k := range got {
				seen[k] = true
			}
		}
	}
	if len(seen) != 3 {
		t.Errorf("markers seen: %v", seen)
	}
}

// TestVehicleDeterministic checks that a device's journey depends on the seed and its index only.
func TestVehicleDeterministic(t *testing.T) {
	cfg := Config{URLs: []string{"ws://127.0.0.1:1"}, Devices: 3, Rate: 1, Seed: 42}
	run := func(seed uint64) []sample {
		cfg.Seed = seed
		f, err := New(cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		var out []sample
		for _, d := range f.devices {
			d.rng.Uint64() // network jitter must not change the journey
			for range 2000 {
				var s sample
				d.veh.step(1, &s)
				out = append(out, s)
			}
		}
		return out
	}
	a, b, c := run(42), run(42), run(43)
	if !slices.Equal(a, b) {
		t.Error("same seed, different journeys")
	}
	if slices.Equal(a, c) {
		t.Error("different seeds, same journeys")
	}
}

// TestRoutes checks the route table: every corridor and town loop stays in Southern Africa, has
// plausible lengths, and a vehicle on it moves along the segments' bearing.
func TestRoutes(t *testing.T) {
	for _, rt := range append(append([]*route(nil), corridorRoutes...), townRoutes...) {
		for _, p := range rt.pts {
			if p.lat < minLat || p.lat > maxLat || p.lon < minLon || p.lon > maxLon {
				t.Errorf("%s: waypoint %v outside the region", rt.name, p)
			}
		}
		for i, d := range rt.seg {
			if d <= 0 || d > 700 {
				t.Errorf("%s: segment %d of %.1f km", rt.name, i, d)
			}
		}
		if !rt.loop && (rt.km < 250 || rt.km > 1800) {
			t.Errorf("%s: %.0f km", rt.name, rt.km)
		}
	}
	// Johannesburg to Durban is about 570 km by the N3; Cape Town to Johannesburg about 1400 by the N1.
	if km := corridorRoutes[1].km; km < 500 || km > 620 {
		t.Errorf("N3: %.0f km", km)
	}
	if km := corridorRoutes[0].km; km < 1250 || km > 1450 {
		t.Errorf("N1: %.0f km", km)
	}
	// Driving north from Pretoria on the N1 heads north; the heading follows the segment.
	v := newVehicle(rand.New(rand.NewPCG(1, 1)), "truck")
	v.rt, v.seg, v.pos, v.dir = corridorRoutes[5], 0, 0, 1
	v.place()
	if v.heading > 10 && v.heading < 350 {
		t.Errorf("Pretoria to Bela-Bela: heading %.1f, want about north", v.heading)
	}
	lat0 := v.lat
	v.advance(10)
	v.place()
	if d := (lat0 - v.lat) * 111.32; d > -9 || d < -11 {
		t.Errorf("10 km north moved %.2f km in latitude", -d)
	}
}

func TestOutboxRing(t *testing.T) {
	o := newOutbox(40)
	next := uint64(1)
	first := uint64(1)
	for round := range 200 {
		for !o.full() && round%3 != 2 {
			o.push().seq = next
			next++
		}
		for range min(o.len(), 7+round%5) {
			if o.at(0).seq != first {
				t.Fatalf("round %d: head %d, want %d", round, o.at(0).seq, first)
			}
			o.pop()
			first++
		}
		for i := range o.len() {
			if o.at(i).seq != first+uint64(i) {
				t.Fatalf("round %d: at(%d) = %d", round, i, o.at(i).seq)
			}
		}
	}
	if len(o.buf) > 40 {
		t.Errorf("ring grew past its limit: %d", len(o.buf))
	}
}

// TestPickURLAvoidsLast: a device reconnects to another frontend than the
// one that just failed it, when there is a choice. (Its backoff is
// internal/backoff's, tested there.)
func TestPickURLAvoidsLast(t *testing.T) {
	f := &Fleet{cfg: Config{BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}}
	d := &device{f: f, rng: rand.New(rand.NewPCG(3, 4))}
	for range 100 {
		f.urls = []string{"a", "b", "c"}
		if u := d.pickURL(1); u == 1 || u < 0 || u > 2 {
			t.Fatalf("pickURL avoided nothing: %d", u)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := Config{URLs: []string{"ws://127.0.0.1:1"}, Devices: 2, Rate: 1}
	f, err := New(cfg, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	f.c.count(&f.c.disconnects, "1013")
	f.c.latency.recordN(3*time.Millisecond, 5)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, name := range []string{"drover_sim_devices_connected", "drover_sim_disconnects_total", "drover_sim_readings_total",
		"drover_sim_ack_latency_seconds", "drover_sim_outbox_readings", "drover_sim_errors_total"} {
		if !got[name] {
			t.Errorf("metric %s missing; have %v", name, got)
		}
	}
	if _, err := New(cfg, nil, reg); err == nil || !strings.Contains(err.Error(), "register sim metrics") {
		t.Errorf("second fleet on one registry: %v", err)
	}
}
