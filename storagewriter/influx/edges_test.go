package influx

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
	"github.com/drover-telemetry/drover/telemetry/telemetrytest"
)

// TestRealInfluxStoresEveryValidRecord writes records drawn at the edges of
// everything the frontend's validation accepts (seq up to 2^63-1, time_ms
// from 1677 to 2262, every sensor at its bounds, 32 extras with keys of any
// allowed character and values over the whole double range, 128-byte ids,
// labels with spaces, commas, '=' and non-ASCII) to a real InfluxDB 1.8.
// Every write must succeed, nothing may be dropped, and every point must
// read back unchanged: a valid reading that InfluxDB refused would be acked
// at the edge and then dead-lettered.
func TestRealInfluxStoresEveryValidRecord(t *testing.T) {
	inf := testenv.InfluxD(t)
	s, _ := newTestSink(t, inf.URL, inf.Database)
	ctx := context.Background()
	var all []*telemetry.EnrichedRecord
	for seed := uint64(1); seed <= 3; seed++ {
		g := telemetrytest.NewEdge(seed)
		batch := make([]*telemetry.EnrichedRecord, 200)
		for i := range batch {
			batch[i] = g.Record()
		}
		if err := s.Write(ctx, batch); err != nil {
			t.Fatalf("seed %d: a valid batch was refused (permanent %v): %v", seed, sink.IsPermanent(err), err)
		}
		all = append(all, batch...)
	}
	if got := testutil.ToFloat64(s.metrics.fieldsDropped); got != 0 {
		t.Errorf("fields_dropped_total = %v, want 0", got)
	}
	checkPoints(t, inf, all)
}

// checkPoints reads back each record's point, selecting exactly its fields
// and tags, 50 statements a request.
func checkPoints(t *testing.T, inf *testenv.Influx, recs []*telemetry.EnrichedRecord) {
	t.Helper()
	for start := 0; start < len(recs); start += 50 {
		chunk := recs[start:min(start+50, len(recs))]
		var q strings.Builder
		wants := make([]map[string]any, len(chunk))
		for i, er := range chunk {
			want := expectedPoint(er)
			wants[i] = want
			cols := make([]string, 0, len(want))
			for c := range want {
				if c != "time" {
					cols = append(cols, testenv.QuoteIdent(c))
				}
			}
			fmt.Fprintf(&q, "SELECT %s FROM telemetry WHERE device = '%s';", strings.Join(cols, ","), er.Record.DeviceId)
		}
		series, err := inf.Exec(context.Background(), inf.Database, q.String())
		if err != nil {
			t.Fatalf("query: %v", err)
		}
		if len(series) != len(chunk) {
			t.Fatalf("%d series for %d records", len(series), len(chunk))
		}
		for i, sr := range series {
			dev := chunk[i].Record.DeviceId
			if len(sr.Values) != 1 {
				t.Fatalf("device %q: %d points, want 1", dev, len(sr.Values))
			}
			for j, col := range sr.Columns {
				got, want := sr.Values[0][j], wants[i][col]
				if !sameValue(got, want) {
					t.Errorf("device %q seq %d: %s = %v (%T), want %v (%T)", dev, chunk[i].Record.Reading.Seq, col, got, got, want, want)
				}
			}
		}
	}
}

// expectedPoint is what InfluxDB must hold for er: column → value, restated
// from the schema in doc.go rather than from the encoder.
func expectedPoint(er *telemetry.EnrichedRecord) map[string]any {
	r, rd := er.Record, er.Record.Reading
	f32 := func(v float32) float64 {
		f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(v), 'g', -1, 32), 64)
		return f
	}
	w := map[string]any{
		"time": time.Unix(0, rd.TimeMs*1e6+int64(rd.Seq%1e6)).UTC().Format(time.RFC3339Nano),
		"seq":  int64(rd.Seq), "received_ms": r.ReceivedMs, "lag_ms": r.ReceivedMs - rd.TimeMs,
	}
	// Empty labels are no tag: they read back as null.
	for tag, v := range map[string]string{"fleet": er.Enrichment.Fleet, "class": er.Enrichment.VehicleClass, "region": er.Enrichment.Region} {
		if v != "" {
			w[tag] = v
		} else {
			w[tag] = nil
		}
	}
	if lat, lon, ok := rd.Position(); ok {
		w["lat"], w["lon"] = lat, lon
	}
	for name, v := range map[string]*float32{"altitude_m": rd.AltitudeM, "heading_deg": rd.HeadingDeg, "speed_kmh": rd.SpeedKmh,
		"engine_temp_c": rd.EngineTempC, "engine_rpm": rd.EngineRpm, "fuel_level_pct": rd.FuelLevelPct,
		"battery_voltage_v": rd.BatteryVoltageV, "battery_current_a": rd.BatteryCurrentA, "pneumatic_pressure_kpa": rd.PneumaticPressureKpa} {
		if v != nil {
			w[name] = f32(*v)
		}
	}
	if rd.Satellites != nil {
		w["satellites"] = int64(*rd.Satellites)
	}
	if rd.Ignition != nil {
		w["ignition"] = *rd.Ignition
	}
	if rd.OdometerKm != nil {
		w["odometer_km"] = *rd.OdometerKm
	}
	for k, v := range rd.Extra {
		w["x_"+k] = v
	}
	return w
}

// sameValue compares a query value with an expected one; numbers as float64
// when the expectation is a float (InfluxDB prints integral floats without
// a fraction).
func sameValue(got, want any) bool {
	if wf, ok := want.(float64); ok {
		gf, ok := testenv.Float(got)
		return ok && (gf == wf || math.IsNaN(gf) && math.IsNaN(wf))
	}
	return got == want
}

// TestRealInfluxSeriesLimitIsNotPermanent: InfluxDB refusing points for its
// own max-values-per-tag (100,000 by default, below a large fleet) is a
// configuration problem: the write is transient (retried until an operator
// raises the limit), never a dead letter.
func TestRealInfluxSeriesLimitIsNotPermanent(t *testing.T) {
	for name, opt := range map[string]testenv.InfluxOption{
		"max-values-per-tag":      testenv.WithSeriesLimits(2, 0),
		"max-series-per-database": testenv.WithSeriesLimits(0, 2),
	} {
		t.Run(name, func(t *testing.T) {
			inf := testenv.InfluxD(t, opt)
			s, _ := newTestSink(t, inf.URL, inf.Database)
			// InfluxDB checks the limit against what it held before a
			// request: fill it, then go past it.
			if err := s.Write(context.Background(), []*telemetry.EnrichedRecord{minimalRecord("d1", 1, baseTime), minimalRecord("d2", 1, baseTime)}); err != nil {
				t.Fatal(err)
			}
			err := s.Write(context.Background(), []*telemetry.EnrichedRecord{minimalRecord("d2", 2, baseTime), minimalRecord("d3", 1, baseTime)})
			var he *HTTPError
			if err == nil || sink.IsPermanent(err) || !errors.As(err, &he) || he.StatusCode != 400 || !strings.Contains(he.Message, name) {
				t.Fatalf("Write = %v; want a transient HTTP 400 error about %s", err, name)
			}
			if got := testutil.ToFloat64(s.metrics.requests.WithLabelValues(ResultConfig)); got != 1 {
				t.Errorf("write_requests_total{result=config} = %v, want 1", got)
			}
		})
	}
}
