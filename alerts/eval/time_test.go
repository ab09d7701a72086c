package eval

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// trip is a drive east at 10 m/s, one fix a second from seq 1 at 0 s,
// through a depot from x=3000 to x=5000 (seconds 300 to 500).
func trip(dev string, n int, opts ...opt) []*telemetry.EnrichedRecord {
	return path(dev, 1, 0, line(0, 10, n), append([]opt{speed(36)}, opts...)...)
}

func depotRules() *RuleSet {
	return fenceRules(Fence{ID: "depot", Geometry: square(4000, 0, 2000)})
}

func TestBackfilledDepotVisit(t *testing.T) {
	recs := trip("v1", 800)
	// Coverage lost from 100 s to 700 s: the device kept its readings and
	// flushed them, in order, when it reconnected at 700 s.
	for _, r := range recs[100:700] {
		recvAt(base + 700_000 + int64(r.Record.Reading.Seq))(r)
	}
	r := newRun(t, depotRules()).feed(recs...)
	r.want("geofence_enter:instant", "geofence_exit:instant")
	for _, ev := range r.events {
		a := ev.Alert
		if !a.Late || a.DelayMs < 150_000 {
			t.Errorf("%s: late %v delay %v, want late by minutes", a.Type, a.Late, time.Duration(a.DelayMs)*time.Millisecond)
		}
	}
	if s := secAt(r.events[0].Alert.StartMs); s < 300 || s > 305 {
		t.Errorf("entered at %v s, want its real time (~302 s), not when the data came", s)
	}
	// The same trip live: the same alerts, not late.
	live := newRun(t, depotRules()).feed(trip("v1", 800)...)
	live.want("geofence_enter:instant", "geofence_exit:instant")
	if live.events[0].Alert.Late || live.events[0].Alert.ID != r.events[0].Alert.ID {
		t.Errorf("live: %+v; want the same alert id, not late", live.events[0].Alert)
	}
}

func TestOutOfOrderWithinTheReorderWindow(t *testing.T) {
	rs := only([]string{KindHarshBrake})
	ordered := speeds("v1", 1, 0, []float32{90, 90, 89, 60, 59})
	want := newRun(t, rs).feed(ordered...)
	want.want("harsh_braking:instant")

	// Seq 4 overtakes seq 3 (two routers): held until 3 comes.
	swapped := speeds("v1", 1, 0, []float32{90, 90, 89, 60, 59})
	swapped[2], swapped[3] = swapped[3], swapped[2]
	got := newRun(t, rs).feed(swapped...)
	if !reflect.DeepEqual(got.events, want.events) {
		t.Fatalf("swapped:\n%s\nwant\n%s", got.dump(), want.dump())
	}
	if got.e.Stats().Held != 1 {
		t.Errorf("held %d, want 1", got.e.Stats().Held)
	}

	// Seq 3 never comes: seq 4 waits the window (on the engine's clock,
	// its ticks), then is evaluated over the gap.
	lost := speeds("v1", 1, 0, []float32{90, 90, 89, 60, 59})
	r := newRun(t, rs).tick(lost[3].Record.ReceivedMs).feed(lost[0], lost[1], lost[3], lost[4])
	r.want()
	window := DefaultOptions().ReorderWindow.Milliseconds()
	r.tick(lost[3].Record.ReceivedMs + window/2)
	r.want()
	if d := r.e.devices["v1"]; d.Seq != 2 || len(d.Held) != 2 {
		t.Fatalf("before the window: seq %d held %d, want 2 and 2", d.Seq, len(d.Held))
	}
	r.tick(lost[3].Record.ReceivedMs + window)
	// 90 → 60 km/h in 2 s is 4.2 m/s²: under the 4.5 threshold.
	r.want()
	if d := r.e.devices["v1"]; d.Seq != 5 || len(d.Held) != 0 || r.e.Stats().Gaps != 1 {
		t.Fatalf("after the window: seq %d held %d gaps %d, want 5, 0, 1", d.Seq, len(d.Held), r.e.Stats().Gaps)
	}
}

func TestLateStretchInAGap(t *testing.T) {
	recs := trip("v1", 800)
	r := newRun(t, depotRules())
	// Seqs 1-100 live; 101-700 are stuck somewhere (a frontend that was
	// down); 701-800 arrive live and are evaluated over the gap once the
	// reorder window has passed.
	r.feed(recs[:100]...)
	r.tick(recs[700].Record.ReceivedMs)
	r.feed(recs[700])
	r.tick(recs[700].Record.ReceivedMs + DefaultOptions().ReorderWindow.Milliseconds())
	r.feed(recs[701:]...)
	r.want() // outside the depot before and after the gap: nothing seen
	// The stuck readings arrive, an hour late, out of order: the depot
	// visit inside them is reported, late, at its real times.
	for _, x := range recs[100:700] {
		recvAt(base + 3600_000)(x)
	}
	r.feed(recs[100:700]...)
	r.want("geofence_enter:instant", "geofence_exit:instant")
	for _, ev := range r.events {
		if !ev.Alert.Late {
			t.Errorf("%s not late", ev.Alert.Type)
		}
	}
	if s := secAt(r.events[0].Alert.StartMs); s < 300 || s > 305 {
		t.Errorf("entered at %v s, want ~302", s)
	}
	st := r.e.Stats()
	if st.Late != 600 || st.Gaps != 1 {
		t.Errorf("stats %+v: want 600 late readings over 1 gap", st)
	}
	if d := r.e.devices["v1"]; d.Branch != nil || d.Gap != nil {
		t.Errorf("the gap is filled: branch %v gap %v, want both gone", d.Branch != nil, d.Gap != nil)
	}
	// Readings older than the evaluated ones and outside any gap are
	// duplicates: dropped.
	n := len(r.events)
	r.feed(recs[50:60]...)
	if len(r.events) != n || r.e.Stats().Duplicates != 10 {
		t.Errorf("old readings: %d new events, %d duplicates; want none and 10", len(r.events)-n, r.e.Stats().Duplicates)
	}
}

func TestDuplicatesAreEvaluatedOnce(t *testing.T) {
	rs := depotRules()
	recs := trip("v1", 800)
	r := newRun(t, rs)
	for i := 0; i < len(recs); i += 50 {
		end := min(i+50, len(recs))
		r.feed(recs[i:end]...)
		r.feed(recs[i:end]...) // the whole batch again (a resend)
	}
	r.want("geofence_enter:instant", "geofence_exit:instant")
}

// stream is a few vehicles doing everything, with ticks, as one ordered
// list of steps.
type stepFn func(e *Evaluator, emit Emit)

func stream(seed uint64) []stepFn {
	rng := rand.New(rand.NewPCG(seed, 7))
	var steps []stepFn
	devs := []string{"a", "b", "c", "d"}
	seqs := map[string]uint64{}
	xs := map[string]float64{}
	for s := range 3000 {
		for _, dev := range devs {
			if rng.IntN(10) == 0 && dev == "d" && s > 1000 && s < 2000 {
				continue // d goes silent for a while
			}
			seqs[dev]++
			v := float32(60 + 50*rng.Float64())
			if s%400 > 350 {
				v = 0
			}
			xs[dev] += float64(v) / 3.6
			r := rec(dev, seqs[dev], float64(s), speed(v), offset(xs[dev], 0), ign(v > 0 || s%800 < 700),
				temp(float32(90+20*rng.Float64())), rpm(float32(1000+4000*rng.Float64())), battery(float32(11.5+4*rng.Float64())),
				fuelPct(float32(50-float64(s)/100)), class([]string{"car", "truck"}[len(dev)%2]))
			if rng.IntN(50) == 0 {
				delayed(10 * time.Minute)(r)
			}
			steps = append(steps, func(e *Evaluator, emit Emit) { e.Process(r, emit) })
		}
		if s%5 == 0 {
			now := base + int64(s)*1000 + 300
			steps = append(steps, func(e *Evaluator, emit Emit) { e.Tick(now, emit) })
		}
	}
	return steps
}

func everythingRules() *RuleSet {
	rs := &RuleSet{Version: 1, Rules: []Rule{{ID: "ign", Kind: KindIgnition, Enabled: boolp(true)}}}
	rs.Geofences = []Fence{
		{ID: "depot", Geometry: square(40_000, 0, 3000), Events: []string{"enter", "exit", "dwell", "inside"}, Dwell: Duration(time.Minute)},
		{ID: "zone", Geometry: square(60_000, 0, 20_000), SpeedLimit: 60},
		{ID: "route", Geometry: lineGeom([2]float64{0, 0}, [2]float64{100_000, 0}), WidthM: 100},
	}
	return rs
}

func TestSnapshotRestoreIsTheSameEvaluation(t *testing.T) {
	steps := stream(1)
	whole := newRun(t, everythingRules())
	for _, s := range steps {
		s(whole.e, whole.emit)
	}
	if len(whole.events) < 50 {
		t.Fatalf("the stream raised only %d events: not a test of much", len(whole.events))
	}
	for _, cut := range []int{1, len(steps) / 3, len(steps) / 2, len(steps) - 7} {
		split := newRun(t, everythingRules())
		for _, s := range steps[:cut] {
			s(split.e, split.emit)
		}
		b, err := split.e.MarshalState()
		if err != nil {
			t.Fatal(err)
		}
		resumed, err := New(everythingRules(), DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		if err := resumed.RestoreState(b); err != nil {
			t.Fatal(err)
		}
		split.e = resumed
		for _, s := range steps[cut:] {
			s(split.e, split.emit)
		}
		if !reflect.DeepEqual(split.events, whole.events) {
			a, _ := json.Marshal(whole.events)
			b, _ := json.Marshal(split.events)
			t.Fatalf("cut at %d: events differ from the uncut run (%d vs %d)\n%.2000s\n%.2000s", cut, len(split.events), len(whole.events), a, b)
		}
	}
}
