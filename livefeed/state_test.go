package livefeed

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/telemetry"
)

func TestBoxContains(t *testing.T) {
	type pt struct{ lat, lon float64 }
	for _, tc := range []struct {
		name    string
		b       BBox
		in, out []pt
	}{
		{
			name: "plain, edges included",
			b:    BBox{West: 10, South: -30, East: 20, North: -20},
			in:   []pt{{-25, 15}, {-30, 10}, {-20, 20}, {-30, 20}, {-20, 10}, {-25, 10.0000001}},
			out:  []pt{{-25, 9.9999999}, {-19.9999999, 15}, {-30.0000001, 15}, {-25, 20.0000001}, {25, 15}, {-25, -15}},
		},
		{
			name: "across the antimeridian",
			b:    BBox{West: 170, South: -10, East: -170, North: 10},
			in:   []pt{{0, 170}, {0, 175}, {0, 180}, {0, -180}, {0, -175}, {0, -170}, {10, 179.9999999}},
			out:  []pt{{0, 169.9999999}, {0, -169.9999999}, {0, 0}, {10.0000001, 175}},
		},
		{
			name: "ending at 180 includes -180",
			b:    BBox{West: 175, South: -10, East: 180, North: 10},
			in:   []pt{{0, 180}, {0, -180}, {0, 175}},
			out:  []pt{{0, -179.9999999}, {0, 174.9}},
		},
		{
			name: "starting at -180 includes 180",
			b:    BBox{West: -180, South: -10, East: -175, North: 10},
			in:   []pt{{0, 180}, {0, -180}},
			out:  []pt{{0, 179.9999999}},
		},
		{
			name: "whole world",
			b:    BBox{West: -180, South: -90, East: 180, North: 90},
			in:   []pt{{90, 180}, {-90, -180}, {0, 0}, {-33.9, 18.4}},
		},
		{
			name: "a point",
			b:    BBox{West: 1, South: 2, East: 1, North: 2},
			in:   []pt{{2, 1}},
			out:  []pt{{2, 1.0000001}, {2.0000001, 1}},
		},
	} {
		b, err := newBox(tc.b)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, p := range tc.in {
			if !b.contains(e7(p.lat), e7(p.lon)) {
				t.Errorf("%s: %v not inside, want inside", tc.name, p)
			}
		}
		for _, p := range tc.out {
			if b.contains(e7(p.lat), e7(p.lon)) {
				t.Errorf("%s: %v inside, want outside", tc.name, p)
			}
		}
	}
	for _, bad := range []BBox{
		{West: 0, South: 1, East: 1, North: 0},
		{West: 0, South: -90.1, East: 1, North: 0},
		{West: 0, South: 0, East: 1, North: 90.5},
		{West: 180.5, South: 0, East: 1, North: 1},
		{West: 0, South: 0, East: math.NaN(), North: 1},
		{West: 0, South: math.Inf(-1), East: 1, North: 1},
	} {
		if _, err := newBox(bad); err == nil {
			t.Errorf("newBox(%+v) accepted", bad)
		}
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "truck-0001", `a"b\c`, "tab\there", "nl\n", "\x00\x1f", "<script>&", "ünï ✓ 🚚",
		"bad \xff utf8", "\u2028\u2029"} {
		got := appendString(nil, s)
		want, _ := json.Marshal(s)
		if string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}

func TestMergeKeepsLastKnownValues(t *testing.T) {
	r1 := rec("v", "f", 1, 1000, -26.5, 28.25)
	fuel, temp := float32(55.5), float32(88)
	r1.Record.Reading.FuelLevelPct, r1.Record.Reading.EngineTempC = &fuel, &temp
	v1 := merge(nil, r1, time.Now().UnixNano())
	// The next reading has no fix and no fuel level: both keep their last value.
	r2 := &telemetry.EnrichedRecord{
		Record:     &telemetry.Record{DeviceId: "v", ReceivedMs: 2100, Reading: &telemetry.Reading{Seq: 2, TimeMs: 2000}},
		Enrichment: &telemetry.Enrichment{Fleet: "g", VehicleClass: "bus"},
	}
	nan := float32(math.NaN())
	r2.Record.Reading.SpeedKmh = &nan // never shown as NaN
	v2 := merge(v1, r2, time.Now().UnixNano())
	if v2.latE7 != v1.latE7 || v2.fuel != fuel || v2.posMs != 1000 || v2.timeMs != 2000 || v2.fleet != "g" {
		t.Errorf("merged %+v", v2)
	}
	var got map[string]any
	if err := json.Unmarshal(v2.json, &got); err != nil {
		t.Fatalf("vehicle JSON %s: %v", v2.json, err)
	}
	want := map[string]any{"id": "v", "fleet": "g", "class": "bus", "seq": 2.0, "time_ms": 2000.0, "recv_ms": 2100.0,
		"lat": -26.5, "lon": 28.25, "pos_ms": 1000.0, "fuel_pct": 55.5, "engine_temp_c": 88.0, "speed_kmh": 42.0,
		"heading_deg": 90.0, "ignition": true}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("JSON %s = %v, want %v (%s)", k, got[k], w, v2.json)
		}
	}
	if _, ok := got["region"]; ok {
		t.Errorf("empty region sent: %s", v2.json)
	}
	if !v2.newer(2000, 3) || v2.newer(2000, 2) || v2.newer(1999, 9) || !v2.newer(2001, 1) {
		t.Error("newer() wrong")
	}
}

// TestOfferTakeConflationAndRate drives one client's pending maps directly,
// with a made-up clock: conflation, the per-vehicle rate limit, removals.
func TestOfferTakeConflationAndRate(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Links = testLinks
	cfg.SendInterval = 0 // the rate limit alone: pacing is TestOfferTakePacing's
	f, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &client{f: f, who: &principal{name: "t", scope: newScope([]string{"f"})}, wake: make(chan struct{}, 1),
		stopCh: make(chan struct{}), due: map[string]pendingItem{}, held: map[string]pendingItem{}, shown: map[string]int64{}}
	sub, cerr := newSubscription(&subscribeMsg{BBox: &BBox{West: 0, South: 0, East: 10, North: 10}, MaxRate: 10}, c.who.scope, &f.cfg)
	if cerr != nil {
		t.Fatal(cerr)
	}
	c.sub = sub
	const ms = int64(time.Millisecond)
	state := func(seq uint64, fleet string, lat float64) change {
		return change{v: merge(nil, rec("v1", fleet, seq, int64(seq), lat, 5), 0)}
	}
	var tb takeBuf
	take := func(now int64) []string {
		c.take(now, &tb)
		var out []string
		for _, p := range tb.items {
			if p.gone {
				out = append(out, "gone")
			} else {
				out = append(out, fmt.Sprint(p.v.seq))
			}
		}
		return out
	}
	c.offer([]change{state(1, "f", 5)}, 0)
	c.offer([]change{state(2, "f", 5)}, 1*ms) // replaces 1: conflated
	if got := take(2 * ms); !slices.Equal(got, []string{"2"}) {
		t.Fatalf("first take %v, want [2]", got)
	}
	c.offer([]change{state(3, "f", 5)}, 50*ms) // within 100 ms of the last: held
	if got := take(60 * ms); len(got) != 0 || tb.next != 102*ms {
		t.Fatalf("take at 60 ms: %v next %v, want nothing until 102 ms", got, tb.next)
	}
	c.offer([]change{state(4, "f", 5)}, 70*ms) // replaces 3 while held
	if got := take(102 * ms); !slices.Equal(got, []string{"4"}) {
		t.Fatalf("take at 102 ms: %v, want [4]", got)
	}
	// Out of the box: a removal, at once (not rate limited).
	c.offer([]change{state(5, "f", 50)}, 110*ms)
	if got := take(111 * ms); !slices.Equal(got, []string{"gone"}) {
		t.Fatalf("after leaving the box: %v, want a removal", got)
	}
	// Not shown and not matching: nothing. Another fleet: nothing.
	c.offer([]change{state(6, "f", 60), state(7, "other", 5)}, 200*ms)
	if got := take(300 * ms); len(got) != 0 {
		t.Fatalf("take %v, want nothing", got)
	}
	if n := testutil.ToFloat64(f.m.conflated); n != 2 {
		t.Errorf("conflated %v, want 2", n)
	}
}
