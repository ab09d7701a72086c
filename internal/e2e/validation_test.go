package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parquet-go/parquet-go"

	"github.com/drover-telemetry/drover/frontend"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/storagewriter/lake"
	"github.com/drover-telemetry/drover/telemetry"
)

// TestValidationEndToEnd runs the real pipeline (frontend → router → an
// InfluxDB writer into a real influxd and a lake writer, all separate
// processes) and proves, from a device's WebSocket to both sinks, that
// validation at the frontend is the one definition of what is stored:
//
//   - every reading a sink would refuse or change (seq above 2^63−1, times
//     outside what InfluxDB holds, every field past its range, NaN and
//     infinities, extra keys with a backslash or a control character, too
//     long or too many) is refused at the edge with close 1007 and the reason
//     naming the reading (0-based index) — its frame gets no ack and none of
//     it reaches a sink;
//   - the boundary values that are valid (seq 2^63−1, every range's ends,
//     extras over the whole double range with keys of every allowed kind)
//     are acked and stored unchanged in InfluxDB and in the lake;
//   - the devices "tail\" and "tail_", both in the registry file, never
//     meet: "tail\" is refused by the registry (counted) and at the edge
//     (HTTP 400), "tail_" has exactly its own readings;
//   - neither writer dead-letters anything.
func TestValidationEndToEnd(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tok := func(id string) string { return "token-of-" + id }
	devs := []registry.Device{
		{ID: "edge-bad", TokenSHA256: registry.HashToken(tok("edge-bad"))},
		{ID: "edge-max", TokenSHA256: registry.HashToken(tok("edge-max")),
			Fleet: "Acme Haulage, JHB=1", Class: "truck", Region: "Île-de-France"},
		{ID: "tail_", TokenSHA256: registry.HashToken(tok("tail_"))},
		// What an older drover accepted; a registry file written by hand.
		{ID: `tail\`, TokenSHA256: registry.HashToken(tok(`tail\`))},
	}
	p, _ := startPipeline(t, ctx, pipelineOpts{
		writeRegistry: func(path string) error { return registry.Write(path, devs) },
		// One device sends every bad frame, each on a new connection: more
		// than the flapping limit allows in a minute.
		args: map[string][]string{"frontend": {"-flap-connects", "0"}},
	})
	ingest := p.frontURL + frontend.IngestPath

	// The registry refused the one bad entry, in the frontend and the router.
	for _, pr := range []*proc{p.fe, p.rt} {
		if v, ok := p.gauge(pr, "drover_registry_rejected_entries", nil); !ok || v != 1 {
			t.Errorf("%s: drover_registry_rejected_entries = %v (found %v), want 1", pr.name, v, ok)
		}
	}
	// And the frontend refuses the id before looking it up.
	if _, resp, err := dialDevice(ingest, `tail\`, tok(`tail\`)); err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf(`device "tail\": dial %v, response %v; want HTTP 400`, err, resp)
	} else if b, _ := io.ReadAll(resp.Body); !strings.Contains(string(b), "invalid device id: byte 4") {
		t.Errorf(`device "tail\": body %q, want the id rule`, b)
	}

	// Refused at the edge: each bad reading follows a valid one in its frame,
	// so that "nothing of the frame is stored" is checked too.
	bad := badReadings()
	for i, c := range bad {
		text := i%2 == 1 // binary and JSON frames alike
		ws := mustDial(t, ingest, "edge-bad", tok("edge-bad"))
		good := &telemetry.Reading{Seq: 10, TimeMs: time.Now().UnixMilli(), SpeedKmh: ptrTo[float32](50)}
		r := &telemetry.Reading{Seq: 11, TimeMs: time.Now().UnixMilli()}
		c.mut(r)
		sendUplink(t, ws, text, &telemetry.Uplink{Readings: []*telemetry.Reading{good, r}})
		reason := expectClose1007(t, ws, text)
		if !strings.HasPrefix(reason, "reading 1: ") || !strings.Contains(reason, c.want) {
			t.Errorf("%s: close reason %q, want %q naming reading 1", c.name, reason, c.want)
		}
		ws.Close()
	}

	// Valid at the edges: acked, and stored unchanged.
	lo, hi, top := edgeLow(), edgeHigh(), &telemetry.Reading{Seq: telemetry.MaxSeq, TimeMs: time.Now().UnixMilli()}
	ws := mustDial(t, ingest, "edge-max", tok("edge-max"))
	for i, r := range []*telemetry.Reading{lo, hi, top} {
		sendUplink(t, ws, i == 1, &telemetry.Uplink{Readings: []*telemetry.Reading{r}})
		expectAck(t, ws, i == 1, r.Seq)
	}
	ws.Close()
	// tail_: four readings, its own. edge-bad: two, after all its refusals.
	for dev, n := range map[string]int{"tail_": 4, "edge-bad": 2} {
		ws := mustDial(t, ingest, dev, tok(dev))
		u := &telemetry.Uplink{}
		for s := range n {
			u.Readings = append(u.Readings, &telemetry.Reading{Seq: uint64(s + 1), TimeMs: time.Now().UnixMilli() - int64(n-s)})
		}
		sendUplink(t, ws, false, u)
		expectAck(t, ws, false, uint64(n))
		ws.Close()
	}

	const stored = 3 + 4 + 2
	p.waitDrained(time.Minute, stored)
	for _, pr := range []*proc{p.wInflux, p.wLake} {
		for _, m := range []string{"drover_writer_dead_lettered_records_total", "drover_writer_undecodable_entries_total"} {
			if v, ok := p.gauge(pr, m, nil); !ok || v != 0 {
				t.Errorf("%s: %s = %v (found %v), want 0", pr.name, m, v, ok)
			}
		}
	}
	p.wLake.stop(30 * time.Second)
	p.wInflux.stop(30 * time.Second)

	// The frontend counted every refusal as its kind.
	var refused float64
	for _, kind := range []string{"sequence", "time", "range", "extra"} {
		v, _ := p.gauge(p.fe, "drover_frontend_refusals_total", map[string]string{"reason": kind})
		refused += v
	}
	if refused != float64(len(bad)) {
		t.Errorf("frontend refusals (sequence, time, range, extra) = %v, want %d", refused, len(bad))
	}
	want := map[string][]*telemetry.Reading{"edge-max": {lo, hi, top}}
	for dev, n := range map[string]int{"tail_": 4, "edge-bad": 2} {
		for s := range n {
			want[dev] = append(want[dev], &telemetry.Reading{Seq: uint64(s + 1)})
		}
	}
	checkInfluxEdges(t, p, want)
	checkLakeEdges(t, p, want)
	checkNoDeadLetters(t, p)
}

// badCase is a reading the sinks could not store unchanged: mut makes it so,
// want is what the 1007 reason must say.
type badCase struct {
	name string
	mut  func(r *telemetry.Reading)
	want string
}

// badReadings is every way a reading can be refused for what the sinks
// hold, one just past each bound.
func badReadings() []badCase {
	nan, inf := math.NaN(), math.Inf(1)
	f32 := func(v float32) *float32 { return &v }
	up := func(v float32) *float32 { return f32(math.Nextafter32(v, float32(math.Inf(1)))) }
	down := func(v float32) *float32 { return f32(math.Nextafter32(v, float32(math.Inf(-1)))) }
	i32 := func(v int32) *int32 { return &v }
	many := map[string]float64{}
	for i := range 33 {
		many[fmt.Sprintf("s%02d", i)] = 1
	}
	return []badCase{
		{"seq 2^63", func(r *telemetry.Reading) { r.Seq = telemetry.MaxSeq + 1 }, "seq 9223372036854775808 out of range [1, 9223372036854775807]"},
		{"seq 2^64-1", func(r *telemetry.Reading) { r.Seq = math.MaxUint64 }, "seq 18446744073709551615 out of range"},
		{"seq not increasing", func(r *telemetry.Reading) { r.Seq = 10 }, "seq 10 not greater than seq 10 of reading 0"},
		{"time past InfluxDB", func(r *telemetry.Reading) { r.TimeMs = telemetry.MaxTimeMs + 1 }, "time_ms 9223372036854 is"},
		{"time before InfluxDB", func(r *telemetry.Reading) { r.TimeMs = telemetry.MinTimeMs - 1 }, "time_ms -9223372036855 is"},
		{"time missing", func(r *telemetry.Reading) { r.TimeMs = 0 }, "time_ms missing"},
		{"lat", func(r *telemetry.Reading) { r.LatE7, r.LonE7 = i32(telemetry.MaxLatE7+1), i32(0) }, "latitude 90.0000001 out of range [-90, 90]"},
		{"lon", func(r *telemetry.Reading) { r.LatE7, r.LonE7 = i32(0), i32(telemetry.MinLonE7-1) }, "longitude -180.0000001 out of range [-180, 180]"},
		{"half position", func(r *telemetry.Reading) { r.LatE7 = i32(0) }, "lat_e7 without lon_e7"},
		{"altitude", func(r *telemetry.Reading) { r.AltitudeM = up(telemetry.MaxAltitudeM) }, "altitude_m 10000.001 out of range [-1000, 10000]"},
		{"heading 360", func(r *telemetry.Reading) { r.HeadingDeg = f32(360) }, "heading_deg 360 out of range [0, 360)"},
		{"speed below 0", func(r *telemetry.Reading) { r.SpeedKmh = down(0) }, "speed_kmh -1e-45 out of range [0, 400]"},
		{"satellites", func(r *telemetry.Reading) { n := uint32(65); r.Satellites = &n }, "satellites 65 out of range [0, 64]"},
		{"engine temp", func(r *telemetry.Reading) { r.EngineTempC = down(telemetry.MinEngineTempC) }, "engine_temp_c -60.000004 out of range [-60, 200]"},
		{"rpm", func(r *telemetry.Reading) { r.EngineRpm = up(telemetry.MaxEngineRPM) }, "engine_rpm 20000.002 out of range [0, 20000]"},
		{"fuel", func(r *telemetry.Reading) { r.FuelLevelPct = up(telemetry.MaxFuelPct) }, "fuel_level_pct 100.00001 out of range [0, 100]"},
		{"odometer", func(r *telemetry.Reading) { v := math.Nextafter(telemetry.MaxOdometerKm, inf); r.OdometerKm = &v }, "odometer_km 1.0000000000000001e+08 out of range [0, 1e8]"},
		{"battery V", func(r *telemetry.Reading) { r.BatteryVoltageV = up(telemetry.MaxBatteryV) }, "battery_voltage_v 1500.0001 out of range [0, 1500]"},
		{"battery A", func(r *telemetry.Reading) { r.BatteryCurrentA = down(-telemetry.MaxBatteryAbsA) }, "battery_current_a -3000.0002 out of range [-3000, 3000]"},
		{"pneumatic", func(r *telemetry.Reading) { r.PneumaticPressureKpa = up(telemetry.MaxPneumaticKpa) }, "pneumatic_pressure_kpa 2500.0002 out of range [0, 2500]"},
		{"NaN", func(r *telemetry.Reading) { r.AltitudeM = f32(float32(nan)) }, "altitude_m is NaN"},
		{"infinity", func(r *telemetry.Reading) { v := -inf; r.OdometerKm = &v }, "odometer_km is infinite"},
		{"extra NaN", func(r *telemetry.Reading) { r.Extra = map[string]float64{"oil": nan} }, `extra "oil" is NaN`},
		{"extra infinity", func(r *telemetry.Reading) { r.Extra = map[string]float64{"oil": inf} }, `extra "oil" is infinite`},
		{"extra key backslash", func(r *telemetry.Reading) { r.Extra = map[string]float64{`tail\`: 1} }, `extra key "tail\\" has a backslash`},
		{"extra key control", func(r *telemetry.Reading) { r.Extra = map[string]float64{"a\nb": 1} }, `extra key "a\nb" has a control character`},
		{"extra key empty", func(r *telemetry.Reading) { r.Extra = map[string]float64{"": 1} }, "extra key empty"},
		{"extra key too long", func(r *telemetry.Reading) { r.Extra = map[string]float64{strings.Repeat("k", 65): 1} }, "extra key of 65 bytes, limit 64"},
		{"too many extras", func(r *telemetry.Reading) { r.Extra = many }, "33 extra values, limit 32"},
	}
}

// edgeLow is a valid reading with every field at the low end of its range.
func edgeLow() *telemetry.Reading {
	return &telemetry.Reading{
		Seq: 1, TimeMs: time.Now().Add(-30*24*time.Hour + time.Minute).UnixMilli(),
		LatE7: ptrTo[int32](telemetry.MinLatE7), LonE7: ptrTo[int32](telemetry.MinLonE7),
		AltitudeM: ptrTo[float32](telemetry.MinAltitudeM), HeadingDeg: ptrTo[float32](0), SpeedKmh: ptrTo[float32](0),
		Satellites: ptrTo[uint32](0), Ignition: ptrTo(false), EngineTempC: ptrTo[float32](telemetry.MinEngineTempC),
		EngineRpm: ptrTo[float32](0), FuelLevelPct: ptrTo[float32](0), OdometerKm: ptrTo(0.0),
		BatteryVoltageV: ptrTo[float32](0), BatteryCurrentA: ptrTo[float32](-telemetry.MaxBatteryAbsA),
		PneumaticPressureKpa: ptrTo[float32](0),
		Extra:                map[string]float64{"k": -math.MaxFloat64, "tiny": -math.SmallestNonzeroFloat64, "zero": math.Copysign(0, -1)},
	}
}

// edgeHigh is a valid reading with every field at the high end of its range
// and 32 extras whose keys are every kind a sink must keep apart.
func edgeHigh() *telemetry.Reading {
	extra := map[string]float64{
		"tyre.fl-kpa": math.MaxFloat64, "tyre_fl_kpa": math.SmallestNonzeroFloat64, "tyre-fl-kpa": 1,
		"a b": 2, "a,b=c": 3, `"q"`: 4, "température": 5, "東京": 6, strings.Repeat("K", 64): 7, "time": 8, "seq": 9,
	}
	for i := len(extra); i < 32; i++ {
		extra[fmt.Sprintf("s%02d", i)] = float64(i) * 1e300
	}
	return &telemetry.Reading{
		Seq: 2, TimeMs: time.Now().Add(4 * time.Minute).UnixMilli(),
		LatE7: ptrTo[int32](telemetry.MaxLatE7), LonE7: ptrTo[int32](telemetry.MaxLonE7),
		AltitudeM: ptrTo[float32](telemetry.MaxAltitudeM), HeadingDeg: ptrTo(math.Nextafter32(360, 0)),
		SpeedKmh: ptrTo[float32](telemetry.MaxSpeedKmh), Satellites: ptrTo[uint32](telemetry.MaxSatellites),
		Ignition: ptrTo(true), EngineTempC: ptrTo[float32](telemetry.MaxEngineTempC),
		EngineRpm: ptrTo[float32](telemetry.MaxEngineRPM), FuelLevelPct: ptrTo[float32](telemetry.MaxFuelPct),
		OdometerKm: ptrTo[float64](telemetry.MaxOdometerKm), BatteryVoltageV: ptrTo[float32](telemetry.MaxBatteryV),
		BatteryCurrentA: ptrTo[float32](telemetry.MaxBatteryAbsA), PneumaticPressureKpa: ptrTo[float32](telemetry.MaxPneumaticKpa),
		Extra: extra,
	}
}

func ptrTo[T any](v T) *T { return &v }

// dialDevice opens a device WebSocket with the id and token in headers.
func dialDevice(url, id, token string) (*websocket.Conn, *http.Response, error) {
	h := http.Header{}
	h.Set(frontend.HeaderDevice, id)
	h.Set("Authorization", "Bearer "+token)
	d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
	return d.Dial(url, h)
}

func mustDial(t *testing.T, url, id, token string) *websocket.Conn {
	t.Helper()
	ws, resp, err := dialDevice(url, id, token)
	if err != nil {
		var body []byte
		if resp != nil {
			body, _ = io.ReadAll(resp.Body)
		}
		t.Fatalf("dial %s: %v %s", id, err, body)
	}
	return ws
}

func sendUplink(t *testing.T, ws *websocket.Conn, text bool, u *telemetry.Uplink) {
	t.Helper()
	b, err := telemetry.EncodeUplink(u, text)
	if err != nil {
		t.Fatal(err)
	}
	typ := websocket.BinaryMessage
	if text {
		typ = websocket.TextMessage
	}
	_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := ws.WriteMessage(typ, b); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// expectAck reads the next downlink and requires it to ack want.
func expectAck(t *testing.T, ws *websocket.Conn, text bool, want uint64) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("waiting for ack %d: %v", want, err)
	}
	d, err := telemetry.DecodeDownlink(b, text)
	if err != nil || d.GetAck() == nil || d.GetAck().GetSeq() != want {
		t.Fatalf("got %v (%v), want ack %d", d, err, want)
	}
}

// expectClose1007 requires the next thing the frontend sends to be a close
// with 1007 (no ack first), and returns its reason.
func expectClose1007(t *testing.T, ws *websocket.Conn, text bool) string {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := ws.ReadMessage()
	if err == nil {
		d, _ := telemetry.DecodeDownlink(b, text)
		t.Fatalf("got %v before the close: a refused frame was answered", d)
	}
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseInvalidFramePayloadData {
		t.Fatalf("got %v, want close 1007", err)
	}
	return ce.Text
}

// checkInfluxEdges requires InfluxDB to hold exactly the readings of want,
// per device, with every value of edge-max unchanged, and no other device.
func checkInfluxEdges(t *testing.T, p *pipeline, want map[string][]*telemetry.Reading) {
	t.Helper()
	series, err := p.inf.Exec(p.ctx, p.inf.Database, `SHOW TAG VALUES FROM telemetry WITH KEY = "device"`)
	if err != nil {
		t.Fatal(err)
	}
	var devices []string
	for _, s := range series {
		for _, v := range s.Values {
			devices = append(devices, v[1].(string))
		}
	}
	if w := slices.Sorted(maps.Keys(want)); !slices.Equal(devices, w) {
		t.Errorf("InfluxDB device tags %q, want %q", devices, w)
	}
	for dev, rs := range want {
		rows, err := p.inf.Exec(p.ctx, p.inf.Database, fmt.Sprintf(`SELECT seq FROM telemetry WHERE device = '%s'`, dev))
		if err != nil {
			t.Fatal(err)
		}
		var got []int64
		for _, s := range rows {
			for _, v := range s.Values {
				got = append(got, v[1].(int64))
			}
		}
		var seqs []int64
		for _, r := range rs {
			seqs = append(seqs, int64(r.Seq))
		}
		slices.Sort(got) // InfluxDB answers in time order
		if !slices.Equal(got, seqs) {
			t.Errorf("InfluxDB %s: seqs %v, want %v", dev, got, seqs)
		}
	}
	// edge-max, value by value.
	for _, r := range want["edge-max"] {
		cols := []string{"seq", "fleet", "class", "region"}
		vals := []any{int64(r.Seq), "Acme Haulage, JHB=1", "truck", "Île-de-France"}
		add := func(c string, v any) { cols, vals = append(cols, c), append(vals, v) }
		f32 := func(v *float32) any { return float64FromFloat32(*v) }
		if r.LatE7 != nil {
			lat, lon, _ := r.Position()
			add("lat", lat)
			add("lon", lon)
			for c, v := range map[string]*float32{"altitude_m": r.AltitudeM, "heading_deg": r.HeadingDeg, "speed_kmh": r.SpeedKmh,
				"engine_temp_c": r.EngineTempC, "engine_rpm": r.EngineRpm, "fuel_level_pct": r.FuelLevelPct,
				"battery_voltage_v": r.BatteryVoltageV, "battery_current_a": r.BatteryCurrentA, "pneumatic_pressure_kpa": r.PneumaticPressureKpa} {
				add(c, f32(v))
			}
			add("satellites", int64(*r.Satellites))
			add("ignition", *r.Ignition)
			add("odometer_km", *r.OdometerKm)
		}
		for k, v := range r.Extra {
			add("x_"+k, v)
		}
		quoted := make([]string, len(cols))
		for i, c := range cols {
			quoted[i] = testenv.QuoteIdent(c)
		}
		rows, err := p.inf.Exec(p.ctx, p.inf.Database, fmt.Sprintf(`SELECT %s FROM telemetry WHERE device = 'edge-max' AND seq = %d`, strings.Join(quoted, ","), r.Seq))
		if err != nil || len(rows) != 1 || len(rows[0].Values) != 1 {
			t.Fatalf("InfluxDB edge-max seq %d: %v %v", r.Seq, rows, err)
		}
		got := rows[0].Values[0][1:] // after time
		for i := range cols {
			if !sameNumberOrValue(got[i], vals[i]) {
				t.Errorf("InfluxDB edge-max seq %d: %s = %v (%T), want %v", r.Seq, cols[i], got[i], got[i], vals[i])
			}
		}
	}
}

// checkNoDeadLetters requires that no dead-letter file under the writers'
// directories holds a byte, and that neither writer logged a dead letter
// (the counters were checked while they ran).
func checkNoDeadLetters(t *testing.T, p *pipeline) {
	t.Helper()
	for _, name := range []string{"writer-influx", "writer-lake"} {
		dir := filepath.Join(p.dir, name)
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.Contains(d.Name(), "dead-letter") {
				return err
			}
			if st, err := os.Stat(path); err == nil && st.Size() > 0 {
				b, _ := os.ReadFile(path)
				t.Errorf("%s: dead letters in %s:\n%s", name, path, b)
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: walk %s: %v", name, dir, err)
		}
	}
	for _, pr := range []*proc{p.wInflux, p.wLake} {
		if b, _ := os.ReadFile(pr.logPath); strings.Contains(string(b), "dead-lettered") {
			t.Errorf("%s logged a dead letter (log %s)", pr.name, pr.logPath)
		}
	}
}

// checkLakeEdges requires the lake, duplicates dropped by (device_id, seq),
// to hold exactly the readings of want, with every value of edge-max
// unchanged.
func checkLakeEdges(t *testing.T, p *pipeline, want map[string][]*telemetry.Reading) {
	t.Helper()
	got := map[string][]lake.Row{}
	err := filepath.WalkDir(p.lakeDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), "_") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".parquet") {
			return nil
		}
		rows, err := parquet.ReadFile[lake.Row](path)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, r := range rows {
			if n := len(got[r.DeviceID]); n == 0 || !slices.ContainsFunc(got[r.DeviceID], func(o lake.Row) bool { return o.Seq == r.Seq }) {
				got[r.DeviceID] = append(got[r.DeviceID], r)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read lake: %v", err)
	}
	if g, w := slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)); !slices.Equal(g, w) {
		t.Errorf("lake devices %q, want %q", g, w)
	}
	for dev, rs := range want {
		rows := got[dev]
		slices.SortFunc(rows, func(a, b lake.Row) int { return cmpInt64(a.Seq, b.Seq) })
		var seqs, wantSeqs []int64
		for _, r := range rows {
			seqs = append(seqs, r.Seq)
		}
		for _, r := range rs {
			wantSeqs = append(wantSeqs, int64(r.Seq))
		}
		if !slices.Equal(seqs, wantSeqs) {
			t.Errorf("lake %s: seqs %v, want %v", dev, seqs, wantSeqs)
			continue
		}
		if dev != "edge-max" {
			continue
		}
		for i, r := range rs {
			g := rows[i]
			w := lake.Row{
				DeviceID: dev, Seq: int64(r.Seq), TimeMs: r.TimeMs, ReceivedMs: g.ReceivedMs,
				AltitudeM: r.AltitudeM, HeadingDeg: r.HeadingDeg, SpeedKmh: r.SpeedKmh, Ignition: r.Ignition,
				EngineTempC: r.EngineTempC, EngineRPM: r.EngineRpm, FuelLevelPct: r.FuelLevelPct, OdometerKm: r.OdometerKm,
				BatteryVoltageV: r.BatteryVoltageV, BatteryCurrentA: r.BatteryCurrentA, PneumaticPressureKPa: r.PneumaticPressureKpa,
				Fleet: "Acme Haulage, JHB=1", VehicleClass: "truck", Region: "Île-de-France",
			}
			if lat, lon, ok := r.Position(); ok {
				w.Lat, w.Lon = &lat, &lon
			}
			if r.Satellites != nil {
				w.Satellites = ptrTo(int32(*r.Satellites))
			}
			if !maps.Equal(g.Extra, r.Extra) && (len(g.Extra) > 0 || len(r.Extra) > 0) {
				t.Errorf("lake edge-max seq %d: extra %v, want %v", r.Seq, g.Extra, r.Extra)
			}
			g.Extra = nil
			if g.ReceivedMs <= 0 || !reflect.DeepEqual(g, w) {
				t.Errorf("lake edge-max seq %d:\n got  %+v\n want %+v", r.Seq, g, w)
			}
		}
	}
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// float64FromFloat32 is the value InfluxDB holds for a float32 field: the
// writer prints the shortest decimal that gives back the float32, which
// InfluxDB parses as a double.
func float64FromFloat32(v float32) float64 {
	f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(v), 'g', -1, 32), 64)
	return f
}

// sameNumberOrValue compares a query value with an expected one, numbers as
// float64 when the expectation is a float (InfluxDB prints integral floats
// without a fraction).
func sameNumberOrValue(got, want any) bool {
	if wf, ok := want.(float64); ok {
		gf, ok := testenv.Float(got)
		return ok && gf == wf
	}
	return got == want
}
