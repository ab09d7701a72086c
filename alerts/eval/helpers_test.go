package eval

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// base is the test clock's origin: every test reading is at base + n s.
var base = time.Date(2026, 3, 2, 8, 0, 0, 0, time.UTC).UnixMilli()

// jhb is a point in Johannesburg the test geometry is built around.
const jhbLat, jhbLon = -26.2041, 28.0473

// opt changes a test reading.
type opt func(r *telemetry.EnrichedRecord)

func at(lat, lon float64) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.Reading.SetPosition(lat, lon) }
}

// east returns a position m metres east (negative: west) of the test
// point, and n metres north.
func offset(eastM, northM float64) opt {
	lat, lon := move(jhbLat, jhbLon, eastM, northM)
	return at(lat, lon)
}

func move(lat, lon, eastM, northM float64) (float64, float64) {
	dLat := northM / (EarthRadiusM * math.Pi / 180)
	dLon := eastM / (EarthRadiusM * math.Pi / 180 * math.Cos(lat*math.Pi/180))
	return lat + dLat, lon + dLon
}

func f32(v float32) *float32 { return &v }

func speed(kmh float32) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.Reading.SpeedKmh = f32(kmh) }
}
func heading(d float32) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.Reading.HeadingDeg = f32(d) }
}
func temp(c float32) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.Reading.EngineTempC = f32(c) }
}
func rpm(v float32) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.Reading.EngineRpm = f32(v) }
}
func battery(v float32) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.Reading.BatteryVoltageV = f32(v) }
}
func air(v float32) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.Reading.PneumaticPressureKpa = f32(v) }
}
func fuelPct(v float32) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.Reading.FuelLevelPct = f32(v) }
}
func class(c string) opt  { return func(r *telemetry.EnrichedRecord) { r.Enrichment.VehicleClass = c } }
func fleet(f string) opt  { return func(r *telemetry.EnrichedRecord) { r.Enrichment.Fleet = f } }
func recvAt(ms int64) opt { return func(r *telemetry.EnrichedRecord) { r.Record.ReceivedMs = ms } }
func delayed(d time.Duration) opt {
	return func(r *telemetry.EnrichedRecord) { r.Record.ReceivedMs = r.Record.Reading.TimeMs + d.Milliseconds() }
}
func ign(on bool) opt { return func(r *telemetry.EnrichedRecord) { r.Record.Reading.Ignition = &on } }
func extra(k string, v float64) opt {
	return func(r *telemetry.EnrichedRecord) {
		if r.Record.Reading.Extra == nil {
			r.Record.Reading.Extra = map[string]float64{}
		}
		r.Record.Reading.Extra[k] = v
	}
}

// rec builds device dev's reading seq taken at base + sec seconds and
// received 200 ms later (unless an option says otherwise).
func rec(dev string, seq uint64, sec float64, opts ...opt) *telemetry.EnrichedRecord {
	t := base + int64(sec*1000)
	r := &telemetry.EnrichedRecord{
		Record:     &telemetry.Record{DeviceId: dev, ReceivedMs: t + 200, Reading: &telemetry.Reading{Seq: seq, TimeMs: t}},
		Enrichment: &telemetry.Enrichment{Fleet: "acme", VehicleClass: "car"},
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// run is an evaluator under test with the events it emitted.
type run struct {
	t      *testing.T
	e      *Evaluator
	events []Event
}

func newRun(t *testing.T, rs *RuleSet) *run {
	t.Helper()
	return newRunOpts(t, rs, DefaultOptions())
}

func newRunOpts(t *testing.T, rs *RuleSet, o Options) *run {
	t.Helper()
	e, err := New(rs, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return &run{t: t, e: e}
}

func (r *run) emit(ev *Event) { r.events = append(r.events, *ev) }

func (r *run) feed(recs ...*telemetry.EnrichedRecord) *run {
	for _, x := range recs {
		r.e.Process(x, r.emit)
	}
	return r
}

func (r *run) tick(ms int64) *run {
	r.e.Tick(ms, r.emit)
	return r
}

// of returns the events of alert type typ.
func (r *run) of(typ string) []Event {
	var out []Event
	for _, ev := range r.events {
		if ev.Alert.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// kinds summarises events as "type:event" strings, in order.
func (r *run) kinds() []string {
	var out []string
	for _, ev := range r.events {
		out = append(out, ev.Alert.Type+":"+ev.Kind)
	}
	return out
}

func (r *run) want(want ...string) {
	r.t.Helper()
	got := r.kinds()
	if strings.Join(got, " ") != strings.Join(want, " ") {
		r.t.Fatalf("events:\n got  %v\n want %v\n%s", got, want, r.dump())
	}
}

func (r *run) dump() string {
	var b strings.Builder
	for _, ev := range r.events {
		j, _ := json.Marshal(ev)
		fmt.Fprintf(&b, "  %s\n", j)
	}
	return b.String()
}

// secAt is a device time (ms) as seconds after base.
func secAt(ms int64) float64 { return float64(ms-base) / 1000 }

// square is a GeoJSON polygon: a square of side m metres centred eastM,
// northM from the test point, with optional holes (squares too).
func square(eastM, northM, m float64, holes ...[3]float64) json.RawMessage {
	ring := func(e, n, s float64) string {
		h := s / 2
		var pts []string
		for _, c := range [][2]float64{{-h, -h}, {h, -h}, {h, h}, {-h, h}, {-h, -h}} {
			lat, lon := move(jhbLat, jhbLon, e+c[0], n+c[1])
			pts = append(pts, fmt.Sprintf("[%.8f,%.8f]", lon, lat))
		}
		return "[" + strings.Join(pts, ",") + "]"
	}
	rings := []string{ring(eastM, northM, m)}
	for _, h := range holes {
		rings = append(rings, ring(h[0], h[1], h[2]))
	}
	return json.RawMessage(`{"type":"Polygon","coordinates":[` + strings.Join(rings, ",") + `]}`)
}

func pointGeom(eastM, northM float64) json.RawMessage {
	lat, lon := move(jhbLat, jhbLon, eastM, northM)
	return json.RawMessage(fmt.Sprintf(`{"type":"Point","coordinates":[%.8f,%.8f]}`, lon, lat))
}

// lineGeom is a LineString through the points (east, north metres).
func lineGeom(pts ...[2]float64) json.RawMessage {
	var s []string
	for _, p := range pts {
		lat, lon := move(jhbLat, jhbLon, p[0], p[1])
		s = append(s, fmt.Sprintf("[%.8f,%.8f]", lon, lat))
	}
	return json.RawMessage(`{"type":"LineString","coordinates":[` + strings.Join(s, ",") + `]}`)
}

func rules(rs ...Rule) *RuleSet { return &RuleSet{Version: 1, Rules: rs} }

func raw(s string) json.RawMessage { return json.RawMessage(s) }

func boolp(b bool) *bool { return &b }

// only returns rules that turn every kind off but kinds, followed by
// extra rules.
func only(kinds []string, extra ...Rule) *RuleSet {
	var rs []Rule
	for _, k := range Kinds {
		keep := false
		for _, o := range kinds {
			keep = keep || o == k
		}
		rs = append(rs, Rule{ID: "only-" + k, Kind: k, Enabled: boolp(keep)})
	}
	return &RuleSet{Version: 1, Rules: append(rs, extra...)}
}
