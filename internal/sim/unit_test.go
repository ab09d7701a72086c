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
	var empty histogram
	if l := empty.snapshot().latency(); l != (Latency{}) {
		t.Errorf("empty: %+v", l)
	}
}

// TestVehicleReadingsValid drives every class of vehicle for a simulated day at 1 Hz and a
// minute at 1 kHz, and checks that every reading passes the frontend's validation.
func TestVehicleReadingsValid(t *testing.T) {
	now := time.Now()
	for i, class := range classes {
		for _, dt := range []float64{1, 0.001} {
			v := newVehicle(rand.New(rand.NewPCG(uint64(i), 7)), class)
			fr := newFrameReading()
			var s sample
			lat0, lon0 := v.lat, v.lon
			maxSpeed := 0.0
			for n := range 86400 / int(max(1, 60*dt)) {
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
				maxSpeed = max(maxSpeed, float64(s.speedKmh))
			}
			if dt == 1 && (v.lat == lat0 && v.lon == lon0 || maxSpeed < 30) {
				t.Errorf("%s did not move: max speed %v", class, maxSpeed)
			}
		}
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

func TestBackoffBounds(t *testing.T) {
	f := &Fleet{cfg: Config{BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}}
	d := &device{f: f, rng: rand.New(rand.NewPCG(3, 4))}
	for n := 1; n < 100; n++ {
		b := min(time.Second, 100*time.Millisecond<<min(n-1, 20))
		for range 50 {
			if w := d.backoff(n); w < b/2 || w > b {
				t.Fatalf("backoff(%d) = %s, want in [%s, %s]", n, w, b/2, b)
			}
		}
	}
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
