package eval

import (
	"encoding/json"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// path feeds one fix a second at the positions (east, north metres).
func path(dev string, from uint64, startSec float64, pts [][2]float64, opts ...opt) []*telemetry.EnrichedRecord {
	var out []*telemetry.EnrichedRecord
	for i, p := range pts {
		o := append([]opt{offset(p[0], p[1])}, opts...)
		out = append(out, rec(dev, from+uint64(i), startSec+float64(i), o...))
	}
	return out
}

// line is n points from (x0, 0) stepping dx metres east.
func line(x0, dx float64, n int) [][2]float64 {
	out := make([][2]float64, n)
	for i := range out {
		out[i] = [2]float64{x0 + float64(i)*dx, 0}
	}
	return out
}

func fenceRules(fs ...Fence) *RuleSet {
	rs := only([]string{KindGeofence})
	rs.Geofences = fs
	return rs
}

func TestGeofenceEnterExit(t *testing.T) {
	// A 200 m square depot centred 500 m east; the vehicle drives through
	// it at 10 m/s: in at x=400, out at x=600.
	rs := fenceRules(Fence{ID: "depot", Name: "Depot", Geometry: square(500, 0, 200)})
	r := newRun(t, rs).feed(path("v1", 1, 0, line(0, 10, 100))...)
	r.want("geofence_enter:instant", "geofence_exit:instant")
	enter, exit := r.events[0].Alert, r.events[1].Alert
	// The first fix 20 m (the margin) inside is x=420 (t=42 s); the exit's
	// first fix 20 m outside is x=620 (t=62 s).
	if secAt(enter.StartMs) != 42 || secAt(exit.StartMs) != 62 {
		t.Errorf("enter at %v s, exit at %v s, want 42 and 62 (first fix beyond the margin)", secAt(enter.StartMs), secAt(exit.StartMs))
	}
	// Confirmed after 3 fixes spanning 5 s.
	if secAt(enter.RaisedMs) != 47 {
		t.Errorf("enter raised at %v s, want 47", secAt(enter.RaisedMs))
	}
	if enter.Fence != "depot" || enter.FenceName != "Depot" || !strings.Contains(enter.Message, "entered Depot") || enter.Severity != Info {
		t.Errorf("enter: %+v", enter)
	}
	if enter.ID != AlertID(TypeGeofenceEnter, "depot", "v1", enter.StartMs) {
		t.Errorf("id %s is not (type, fence, device, start)", enter.ID)
	}
}

func TestGeofenceJitterDoesNotFlap(t *testing.T) {
	rs := fenceRules(Fence{ID: "depot", Geometry: square(500, 0, 200), Events: []string{"enter", "exit", "inside"}})
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name   string
		noiseM float64
		jump   bool
	}{
		{"parked on the boundary, 8 m of noise", 8, false},
		{"parked on the boundary, noise up to the margin", 19, false},
		{"jumping 30 m in and out every other fix", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pts [][2]float64
			for i := range 600 {
				x := 400 + (rng.Float64()*2-1)*tc.noiseM // the west edge is x=400
				if tc.jump {
					x = 400 + 30*float64(1-2*(i%2))
				}
				pts = append(pts, [2]float64{x, (rng.Float64()*2 - 1) * 50})
			}
			// Arrive from clearly outside, then sit on the boundary.
			recs := path("v1", 1, 0, line(0, 10, 30))
			recs = append(recs, path("v1", 31, 30, pts)...)
			r := newRun(t, rs).feed(recs...)
			if len(r.events) > 2 {
				t.Fatalf("%d events on a boundary: flapping\n%s", len(r.events), r.dump())
			}
		})
	}
	t.Run("a real crossing still counts", func(t *testing.T) {
		r := newRun(t, rs).feed(path("v1", 1, 0, line(300, 5, 60))...)
		r.want("geofence_enter:instant", "geofence_inside:raised")
	})
}

func TestGeofenceShapes(t *testing.T) {
	multi := json.RawMessage(`{"type":"MultiPolygon","coordinates":[` +
		strings.TrimSuffix(strings.TrimPrefix(string(square(300, 0, 100)), `{"type":"Polygon","coordinates":`), `}`) + `,` +
		strings.TrimSuffix(strings.TrimPrefix(string(square(700, 0, 100)), `{"type":"Polygon","coordinates":`), `}`) + `]}`)
	cases := []struct {
		name  string
		fence Fence
		pts   [][2]float64
		want  []string
	}{
		{"polygon with a hole: driving through the hole is leaving",
			Fence{ID: "f", Geometry: square(500, 0, 600, [3]float64{500, 0, 200})}, line(0, 10, 100),
			// in at 200, out into the hole at 400, in again at 600, out at 800
			[]string{"geofence_enter:instant", "geofence_exit:instant", "geofence_enter:instant", "geofence_exit:instant"}},
		{"multipolygon: two parts", Fence{ID: "f", Geometry: multi}, line(0, 5, 200),
			[]string{"geofence_enter:instant", "geofence_exit:instant", "geofence_enter:instant", "geofence_exit:instant"}},
		{"circle", Fence{ID: "f", Geometry: pointGeom(500, 0), RadiusM: 100}, line(0, 10, 100),
			[]string{"geofence_enter:instant", "geofence_exit:instant"}},
		{"circle, passing 60 m off its edge", Fence{ID: "f", Geometry: pointGeom(500, 160), RadiusM: 100}, line(0, 10, 100), nil},
		{"corridor: leaving it and coming back",
			Fence{ID: "route", Geometry: lineGeom([2]float64{0, 0}, [2]float64{2000, 0}), WidthM: 100},
			append(line(0, 10, 30), append([][2]float64{{300, 30}, {310, 60}, {320, 90}, {330, 120}, {340, 150}, {350, 150}, {360, 150},
				{370, 150}, {380, 120}, {390, 90}, {400, 60}}, line(410, 10, 20)...)...),
			[]string{"geofence_outside:raised", "geofence_outside:cleared"}},
		{"corridor: wandering within its width", Fence{ID: "route", Geometry: lineGeom([2]float64{0, 0}, [2]float64{2000, 0}), WidthM: 100},
			[][2]float64{{0, 0}, {10, 40}, {20, -40}, {30, 45}, {40, -45}, {50, 0}, {60, 40}, {70, 40}, {80, 40}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRun(t, fenceRules(tc.fence)).feed(path("v1", 1, 0, tc.pts)...)
			r.want(tc.want...)
		})
	}
}

func TestGeofenceDwellAndInside(t *testing.T) {
	rs := fenceRules(
		Fence{ID: "depot", Geometry: square(100, 0, 400), Events: []string{"dwell"}, Dwell: Duration(10 * time.Minute)},
		Fence{ID: "nogo", Geometry: square(100, 0, 400), Events: []string{"inside"}, Severity: Critical},
	)
	var recs []*telemetry.EnrichedRecord
	recs = append(recs, path("v1", 1, 0, line(-400, 20, 20))...) // drive in (x=-400 → 0)
	for i := range 30 {                                          // 15 min parked inside
		recs = append(recs, rec("v1", uint64(21+i), float64(20+i*30), offset(0, 0)))
	}
	recs = append(recs, path("v1", 51, 920, line(0, -20, 30))...) // drive out west
	r := newRun(t, rs).feed(recs...)
	r.want("geofence_inside:raised", "geofence_dwell:raised", "geofence_dwell:cleared", "geofence_inside:cleared")
	if a := r.events[0].Alert; a.Severity != Critical || a.Fence != "nogo" {
		t.Errorf("inside: %+v", a)
	}
	dw := r.events[1].Alert
	if dw.RaisedMs-dw.StartMs < 10*60*1000 || dw.RaisedMs-dw.StartMs > 11*60*1000 {
		t.Errorf("dwell raised %v after the entry, want 10 min", time.Duration(dw.RaisedMs-dw.StartMs)*time.Millisecond)
	}
	if c := r.events[2].Alert; c.DurationMs < 15*60*1000 {
		t.Errorf("dwell lasted %v, want the whole stay (> 15 min)", time.Duration(c.DurationMs)*time.Millisecond)
	}
}

func TestGeofenceFirstFixAndNewFence(t *testing.T) {
	depot := Fence{ID: "depot", Geometry: square(0, 0, 400), Events: []string{"enter", "exit", "inside"}}
	// First seen inside: the side is taken as it is (no entry: nothing was
	// seen crossing), and the inside alarm follows.
	r := newRun(t, fenceRules(depot)).feed(path("v1", 1, 0, line(0, 1, 5))...)
	r.want("geofence_inside:raised")
	// A fence added while the vehicle is inside: likewise.
	r = newRun(t, fenceRules()).feed(path("v1", 1, 0, line(0, 1, 5))...)
	rs := fenceRules(depot)
	rs.Version = 2
	if err := r.e.SetRuleSet(rs, r.emit); err != nil {
		t.Fatal(err)
	}
	r.feed(path("v1", 6, 5, line(5, 1, 5))...)
	r.want("geofence_inside:raised")
	// Removed while the alarm is on: cleared, saying why.
	rs = fenceRules()
	rs.Version = 3
	if err := r.e.SetRuleSet(rs, r.emit); err != nil {
		t.Fatal(err)
	}
	r.want("geofence_inside:raised", "geofence_inside:cleared")
	if a := r.events[1].Alert; a.EndReason != "rule_removed" {
		t.Errorf("end reason %q, want rule_removed", a.EndReason)
	}
}

func TestGeofenceScope(t *testing.T) {
	rs := fenceRules(
		Fence{ID: "acme-depot", Fleet: "acme", Geometry: square(500, 0, 200)},
		Fence{ID: "truck-stop", Classes: []string{"truck"}, Geometry: square(500, 0, 200)},
		Fence{ID: "v2-only", Devices: []string{"v2"}, Geometry: square(500, 0, 200)},
	)
	r := newRun(t, rs).feed(path("v1", 1, 0, line(0, 10, 100), fleet("beta"), class("car"))...)
	r.want()
	r = newRun(t, rs).feed(path("v2", 1, 0, line(0, 10, 100), fleet("acme"), class("truck"))...)
	if len(r.events) != 6 {
		t.Fatalf("v2 (acme truck) got %d events, want enter and exit of each of 3 fences\n%s", len(r.events), r.dump())
	}
}

func TestGeofenceValidation(t *testing.T) {
	cases := []struct {
		name string
		f    Fence
		want string
	}{
		{"no geometry", Fence{ID: "a"}, "geometry: missing"},
		{"open ring", Fence{ID: "a", Geometry: raw(`{"type":"Polygon","coordinates":[[[28,-26],[28.1,-26],[28.1,-26.1],[28,-26.2]]]}`)}, "not closed"},
		{"self-crossing", Fence{ID: "a", Geometry: raw(`{"type":"Polygon","coordinates":[[[28,-26],[28.1,-26.1],[28.1,-26],[28,-26.1],[28,-26]]]}`)}, "cross each other"},
		{"out of range", Fence{ID: "a", Geometry: raw(`{"type":"Polygon","coordinates":[[[200,-26],[28.1,-26],[28.1,-26.1],[200,-26]]]}`)}, "out of range"},
		{"circle without radius", Fence{ID: "a", Geometry: pointGeom(0, 0)}, "radius_m"},
		{"corridor without width", Fence{ID: "a", Geometry: lineGeom([2]float64{0, 0}, [2]float64{10, 0})}, "width_m"},
		{"unknown event", Fence{ID: "a", Geometry: square(0, 0, 100), Events: []string{"leave"}}, "unknown \"leave\""},
		{"bad id", Fence{ID: "a b", Geometry: square(0, 0, 100)}, "bad id"},
		{"a point is not a fence without a radius", Fence{ID: "a", Geometry: raw(`{"type":"MultiPoint","coordinates":[[28,-26]]}`)}, "not a fence"},
	}
	for _, tc := range cases {
		_, err := tc.f.Compile()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
	rs := &RuleSet{Rules: []Rule{
		{ID: "x", Kind: "speeding"},
		{ID: "y", Kind: KindOverspeed, Settings: raw(`{"limit":90}`)},
		{ID: "z", Kind: KindOverspeed, Settings: raw(`{"limit_kmh":-5}`)},
		{ID: "w", Kind: KindIdling, Severity: "urgent"},
	}}
	err := rs.Validate()
	for _, want := range []string{`unknown kind "speeding"`, `unknown field "limit"`, "limit_kmh: -5", `unknown severity "urgent"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("rule set errors %v: want one with %q", err, want)
		}
	}
}
