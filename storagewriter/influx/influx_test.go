package influx

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// TestRealInflux runs the sink against a real InfluxDB 1.8.10; the subtests
// share the server, each with its own database.
func TestRealInflux(t *testing.T) {
	inf := testenv.InfluxD(t)
	db := func(t *testing.T) *testenv.Influx {
		return inf.WithDatabase(t, strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
	}
	ctx := context.Background()

	t.Run("RoundTrip", func(t *testing.T) {
		inf := db(t)
		s, reg := newTestSink(t, inf.URL, inf.Database)
		full := fullRecord("truck-1", 1_000_042, baseTime.Add(123*time.Millisecond))
		min := minimalRecord("van-2", 9, baseTime)
		if err := s.Write(ctx, []*telemetry.EnrichedRecord{full, min}); err != nil {
			t.Fatalf("Write: %v", err)
		}

		series := inf.QuerySeries(t, `SELECT * FROM telemetry WHERE device = 'truck-1'`)
		if len(series) != 1 || len(series[0].Values) != 1 {
			t.Fatalf("truck-1: got %+v, want one point", series)
		}
		row := map[string]any{}
		for i, c := range series[0].Columns {
			row[c] = series[0].Values[0][i]
		}
		wantTime := time.Unix(0, Timestamp(full.Record.Reading.TimeMs, 1_000_042)).UTC().Format(time.RFC3339Nano)
		for col, want := range map[string]any{
			"time": wantTime, "device": "truck-1", "fleet": "acme", "class": "truck", "region": "rhone",
			"seq": int64(1_000_042), "lag_ms": int64(250), "received_ms": full.Record.ReceivedMs,
			"satellites": int64(11), "ignition": true,
			"lat": 45.7640434, "lon": 4.8356728, "altitude_m": 173.4, "heading_deg": 187.25,
			"speed_kmh": 87.6, "engine_temp_c": 88.5, "engine_rpm": 1450.0, "fuel_level_pct": 63.2,
			"odometer_km": 412_873.4, "battery_voltage_v": 27.6, "battery_current_a": -12.4,
			"pneumatic_pressure_kpa": 815.0, "x_tyre.fl-kpa": 830.5, "x_cargo_temp_c": -18.0,
		} {
			got, ok := row[col]
			if !ok {
				t.Errorf("column %s missing", col)
				continue
			}
			if wf, isFloat := want.(float64); isFloat {
				if gf, ok := testenv.Float(got); !ok || gf != wf {
					t.Errorf("%s = %v (%T), want %v", col, got, got, want)
				}
			} else if got != want {
				t.Errorf("%s = %v (%T), want %v (%T)", col, got, got, want, want)
			}
		}

		// The minimal reading: no tags but device, no fields but seq.
		rows := inf.Query(t, `SELECT seq, speed_kmh, lat, ignition, fleet FROM telemetry WHERE device = 'van-2'`)
		wantTime = time.Unix(0, Timestamp(baseTime.UnixMilli(), 9)).UTC().Format(time.RFC3339Nano)
		if len(rows) != 1 || rows[0][0] != wantTime || rows[0][1] != int64(9) ||
			rows[0][2] != nil || rows[0][3] != nil || rows[0][4] != nil || rows[0][5] != nil {
			t.Errorf("van-2: got %v, want [%s 9 <nil>…]", rows, wantTime)
		}

		// Field types as the dashboards expect them.
		types := map[string]string{}
		for _, r := range inf.Query(t, `SHOW FIELD KEYS FROM telemetry`) {
			types[r[0].(string)] = r[1].(string)
		}
		for f, want := range map[string]string{"seq": "integer", "satellites": "integer", "lag_ms": "integer",
			"ignition": "boolean", "speed_kmh": "float", "engine_rpm": "float", "x_cargo_temp_c": "float"} {
			if types[f] != want {
				t.Errorf("field %s has type %q, want %q", f, types[f], want)
			}
		}

		if got := testutil.ToFloat64(s.metrics.points); got != 2 {
			t.Errorf("points_written_total = %v, want 2", got)
		}
		if got := testutil.ToFloat64(s.metrics.requests.WithLabelValues(ResultOK)); got != 1 {
			t.Errorf("write_requests_total{result=ok} = %v, want 1", got)
		}
		if n, err := testutil.GatherAndCount(reg, "drover_influx_write_duration_seconds", "drover_influx_write_bytes_total"); err != nil || n != 2 {
			t.Errorf("gathered %d duration/bytes metrics (%v), want 2", n, err)
		}
	})

	t.Run("RedeliveryDoesNotAddPoints", func(t *testing.T) {
		inf := db(t)
		s, _ := newTestSink(t, inf.URL, inf.Database)
		recs := fleetBatch(600, 20, 1)
		if err := s.Write(ctx, recs); err != nil {
			t.Fatal(err)
		}
		count := func() int64 {
			rows := inf.Query(t, `SELECT count(seq) FROM telemetry`)
			if len(rows) != 1 {
				t.Fatalf("count: got %v", rows)
			}
			return rows[0][1].(int64)
		}
		if n := count(); n != 600 {
			t.Fatalf("after the first delivery: %d points, want 600", n)
		}
		// Again, whole, then in other slices and orders, as a retrying and
		// bisecting writer would.
		if err := s.Write(ctx, recs); err != nil {
			t.Fatal(err)
		}
		for i := len(recs); i > 0; i -= 150 {
			if err := s.Write(ctx, recs[max(0, i-150):i]); err != nil {
				t.Fatal(err)
			}
		}
		if n := count(); n != 600 {
			t.Errorf("after re-deliveries: %d points, want 600", n)
		}
	})

	t.Run("SameMillisecondBothStored", func(t *testing.T) {
		inf := db(t)
		s, _ := newTestSink(t, inf.URL, inf.Database)
		a := fullRecord("truck-1", 41, baseTime)
		b := fullRecord("truck-1", 42, baseTime)
		*b.Record.Reading.SpeedKmh = 12
		if err := s.Write(ctx, []*telemetry.EnrichedRecord{a, b}); err != nil {
			t.Fatal(err)
		}
		rows := inf.Query(t, `SELECT seq, speed_kmh FROM telemetry`)
		if len(rows) != 2 || rows[0][1] != int64(41) || rows[1][1] != int64(42) {
			t.Fatalf("got %v, want seq 41 and 42", rows)
		}
		// Both in the device's millisecond, as dashboards see it.
		rows = inf.Query(t, fmt.Sprintf(`SELECT count(seq) FROM telemetry WHERE time >= %d AND time < %d`,
			baseTime.UnixNano(), baseTime.Add(time.Millisecond).UnixNano()))
		if len(rows) != 1 || rows[0][1] != int64(2) {
			t.Errorf("points in the millisecond: %v, want 2", rows)
		}
	})

	t.Run("FieldTypeConflictIsPermanent", func(t *testing.T) {
		inf := db(t)
		s, _ := newTestSink(t, inf.URL, inf.Database)
		// Someone wrote speed_kmh as a string into this shard first.
		inf.Write(t, fmt.Sprintf(`telemetry,device=other speed_kmh="fast" %d`, baseTime.UnixNano()))
		good := fullRecord("truck-1", 1, baseTime)
		good.Record.Reading.SpeedKmh = nil
		bad := fullRecord("truck-2", 1, baseTime)
		err := s.Write(ctx, []*telemetry.EnrichedRecord{good, bad})
		if !sink.IsPermanent(err) {
			t.Fatalf("Write = %v, want a permanent error", err)
		}
		if !strings.Contains(err.Error(), "HTTP 400") || !strings.Contains(err.Error(), "field type conflict") {
			t.Errorf("error %q does not give InfluxDB's reason", err)
		}
		// A partial write: InfluxDB kept the good point. The writer bisects
		// and writes it again, harmlessly.
		if rows := inf.Query(t, `SELECT seq FROM telemetry WHERE device = 'truck-1'`); len(rows) != 1 {
			t.Errorf("good point of the partial write: %v", rows)
		}
		if err := s.Write(ctx, []*telemetry.EnrichedRecord{good}); err != nil {
			t.Errorf("writing the good half again: %v", err)
		}
		if got := testutil.ToFloat64(s.metrics.requests.WithLabelValues(ResultPermanent)); got != 1 {
			t.Errorf("write_requests_total{result=permanent} = %v, want 1", got)
		}
	})

	t.Run("UnencodableRecordIsPermanent", func(t *testing.T) {
		inf := db(t)
		s, _ := newTestSink(t, inf.URL, inf.Database)
		bad := minimalRecord("d", 1, baseTime)
		bad.Record.Reading.Seq = math.MaxUint64
		err := s.Write(ctx, []*telemetry.EnrichedRecord{minimalRecord("d", 2, baseTime), bad})
		if !sink.IsPermanent(err) || !strings.Contains(err.Error(), "record 1") {
			t.Errorf("Write = %v, want a permanent error naming record 1", err)
		}
	})

	t.Run("MissingDatabaseIsNotPermanent", func(t *testing.T) {
		s, _ := newTestSink(t, inf.URL, "no_such_db")
		err := s.Write(ctx, fleetBatch(3, 1, 1))
		if err == nil || sink.IsPermanent(err) || !strings.Contains(err.Error(), "HTTP 404") {
			t.Fatalf("Write = %v, want a transient HTTP 404 (the records are not at fault)", err)
		}
		if got := testutil.ToFloat64(s.metrics.requests.WithLabelValues(ResultConfig)); got != 1 {
			t.Errorf("write_requests_total{result=config} = %v, want 1", got)
		}
	})

	t.Run("OddTagsAndValues", func(t *testing.T) {
		inf := db(t)
		s, _ := newTestSink(t, inf.URL, inf.Database)
		devices := []string{"a,b=c d", `back\slash`, "ünïcode-🚚", `quote"s'`}
		var recs []*telemetry.EnrichedRecord
		for i, d := range devices {
			recs = append(recs, minimalRecord(d, uint64(i+1), baseTime))
		}
		extreme := minimalRecord("floats", 1, baseTime)
		extreme.Record.Reading.EngineRpm = f32(math.MaxFloat32)
		extreme.Record.Reading.SpeedKmh = f32(1e-7)
		extreme.Record.Reading.OdometerKm = f64(1e21)
		extreme.Record.Reading.Extra = map[string]float64{"tiny": -5e-324, "one": 1}
		recs = append(recs, extreme)
		if err := s.Write(ctx, recs); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, r := range inf.Query(t, `SHOW TAG VALUES FROM telemetry WITH KEY = "device"`) {
			got[r[1].(string)] = true
		}
		for _, d := range devices {
			if !got[d] {
				t.Errorf("device %q not stored as itself; tag values: %v", d, got)
			}
		}
		rows := inf.Query(t, `SELECT engine_rpm, speed_kmh, odometer_km, x_tiny, x_one FROM telemetry WHERE device = 'floats'`)
		want := []float64{float64(float32(math.MaxFloat32)), 1e-7, 1e21, -5e-324, 1}
		if len(rows) != 1 {
			t.Fatalf("floats: %v", rows)
		}
		for i, w := range want {
			if g, ok := testenv.Float(rows[0][i+1]); !ok || (g != w && math.Abs(g-w) > math.Abs(w)*1e-7) {
				t.Errorf("value %d = %v, want %v", i, rows[0][i+1], w)
			}
		}
	})

	t.Run("ConcurrentWrites", func(t *testing.T) {
		inf := db(t)
		s, _ := newTestSink(t, inf.URL, inf.Database)
		errs := make(chan error, 4)
		for g := range 4 {
			go func() { errs <- s.Write(ctx, fleetBatch(250, 5, uint64(1+g*1000))) }()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		if rows := inf.Query(t, `SELECT count(seq) FROM telemetry`); len(rows) != 1 || rows[0][1] != int64(1000) {
			t.Errorf("count: %v, want 1000", rows)
		}
	})

	t.Run("GZip", func(t *testing.T) {
		inf := db(t)
		s, _ := newTestSink(t, inf.URL, inf.Database, func(c *Config) { c.GZip = true })
		if err := s.Write(ctx, fleetBatch(200, 10, 1)); err != nil {
			t.Fatal(err)
		}
		if rows := inf.Query(t, `SELECT count(seq) FROM telemetry`); len(rows) != 1 || rows[0][1] != int64(200) {
			t.Errorf("count: %v, want 200", rows)
		}
	})

	t.Run("RetentionPolicy", func(t *testing.T) {
		inf := db(t)
		inf.Query(t, `CREATE RETENTION POLICY "short" ON "`+inf.Database+`" DURATION 2d REPLICATION 1`)
		s, _ := newTestSink(t, inf.URL, inf.Database, func(c *Config) { c.RetentionPolicy = "short" })
		if err := s.Write(ctx, fleetBatch(5, 1, 1)); err != nil {
			t.Fatal(err)
		}
		if rows := inf.Query(t, `SELECT count(seq) FROM "short"."telemetry"`); len(rows) != 1 || rows[0][1] != int64(5) {
			t.Errorf("count in rp short: %v, want 5", rows)
		}
		if rows := inf.Query(t, `SELECT count(seq) FROM "autogen"."telemetry"`); len(rows) != 0 {
			t.Errorf("count in the default rp: %v, want none", rows)
		}
	})

	t.Run("CanceledContext", func(t *testing.T) {
		s, _ := newTestSink(t, inf.URL, inf.Database)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		err := s.Write(cctx, fleetBatch(3, 1, 1))
		if !errors.Is(err, context.Canceled) || sink.IsPermanent(err) {
			t.Errorf("Write = %v, want context.Canceled, not permanent", err)
		}
	})
}

// TestStoppedServerIsTransient stops InfluxDB under the sink.
func TestStoppedServerIsTransient(t *testing.T) {
	inf := testenv.InfluxD(t)
	s, _ := newTestSink(t, inf.URL, inf.Database)
	ctx := context.Background()
	if err := s.Write(ctx, fleetBatch(10, 2, 1)); err != nil {
		t.Fatalf("Write to a running server: %v", err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping a running server: %v", err)
	}
	inf.Stop()
	err := s.Write(ctx, fleetBatch(10, 2, 100))
	if err == nil || sink.IsPermanent(err) {
		t.Fatalf("Write to a stopped server = %v, want a transient error", err)
	}
	if got := testutil.ToFloat64(s.metrics.requests.WithLabelValues(ResultTransient)); got != 1 {
		t.Errorf("write_requests_total{result=transient} = %v, want 1", got)
	}
	if err := s.Ping(ctx); err == nil {
		t.Error("Ping a stopped server: nil error")
	}
}

// stall is a server that answers nothing until the test ends.
func stall(t *testing.T) string {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); srv.Close() })
	return srv.URL
}

func TestCancelDuringWrite(t *testing.T) {
	s, _ := newTestSink(t, stall(t), "drover")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Write(ctx, fleetBatch(10, 1, 1))
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Write returned %v after ctx ended", took-100*time.Millisecond)
	}
	if !errors.Is(err, context.DeadlineExceeded) || sink.IsPermanent(err) {
		t.Errorf("Write = %v, want the caller's deadline, not permanent", err)
	}
	if got := testutil.ToFloat64(s.metrics.requests.WithLabelValues(ResultCanceled)); got != 1 {
		t.Errorf("write_requests_total{result=canceled} = %v, want 1", got)
	}
}

func TestRequestTimeoutIsTransient(t *testing.T) {
	s, _ := newTestSink(t, stall(t), "drover", func(c *Config) { c.Timeout = 100 * time.Millisecond })
	err := s.Write(context.Background(), fleetBatch(10, 1, 1))
	if err == nil || sink.IsPermanent(err) || !strings.Contains(err.Error(), "no answer within 100ms") {
		t.Errorf("Write = %v, want a transient timeout", err)
	}
}

func TestConnectionRefusedIsTransient(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	s, _ := newTestSink(t, url, "drover")
	if err := s.Write(context.Background(), fleetBatch(1, 1, 1)); err == nil || sink.IsPermanent(err) {
		t.Errorf("Write = %v, want a transient error", err)
	}
}

// TestStatusClassification checks each answer InfluxDB (1.8 or 2.x) can give.
func TestStatusClassification(t *testing.T) {
	for _, tc := range []struct {
		status    int
		v1        bool // InfluxDB 1.8's JSON {"error": …} and X-Influxdb-Error; else 2.x's {"code", "message"}
		result    string
		permanent bool
	}{
		{http.StatusBadRequest, true, ResultPermanent, true},
		{http.StatusBadRequest, false, ResultPermanent, true},
		{http.StatusRequestEntityTooLarge, true, ResultPermanent, true},
		{http.StatusUnprocessableEntity, false, ResultPermanent, true},
		{http.StatusUnauthorized, true, ResultConfig, false},
		{http.StatusForbidden, false, ResultConfig, false},
		{http.StatusNotFound, true, ResultConfig, false},
		{http.StatusRequestTimeout, true, ResultTransient, false},
		{http.StatusTooManyRequests, false, ResultTransient, false},
		{http.StatusInternalServerError, true, ResultTransient, false},
		{http.StatusServiceUnavailable, false, ResultTransient, false},
	} {
		name := fmt.Sprintf("%d/v1=%v", tc.status, tc.v1)
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/api/v2/write" || r.URL.Query().Get("bucket") != "drover/autogen" ||
					r.URL.Query().Get("precision") != "ns" || r.Header.Get("Authorization") != "Token u:p" {
					t.Errorf("request %s %s auth %q", r.Method, r.URL, r.Header.Get("Authorization"))
				}
				w.Header().Set("Content-Type", "application/json")
				if tc.v1 {
					w.Header().Set("X-Influxdb-Error", "the reason")
					w.WriteHeader(tc.status)
					fmt.Fprint(w, `{"error":"the reason"}`)
					return
				}
				w.WriteHeader(tc.status)
				fmt.Fprint(w, `{"code":"invalid","message":"the reason"}`)
			}))
			defer srv.Close()
			s, _ := newTestSink(t, srv.URL, "drover", func(c *Config) {
				c.RetentionPolicy = "autogen"
				c.Token = "u:p"
			})
			err := s.Write(context.Background(), fleetBatch(2, 1, 1))
			if err == nil || sink.IsPermanent(err) != tc.permanent {
				t.Fatalf("Write = %v, want permanent=%v", err, tc.permanent)
			}
			if want := fmt.Sprintf("HTTP %d: the reason", tc.status); !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not contain %q", err, want)
			}
			if got := testutil.ToFloat64(s.metrics.requests.WithLabelValues(tc.result)); got != 1 {
				t.Errorf("write_requests_total{result=%s} = %v, want 1", tc.result, got)
			}
		})
	}
}

func TestWriteAfterClose(t *testing.T) {
	s, _ := newTestSink(t, "http://127.0.0.1:1", "drover")
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := s.Write(context.Background(), fleetBatch(1, 1, 1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
	if err := s.Write(context.Background(), nil); err != nil {
		t.Errorf("empty Write = %v, want nil", err)
	}
}
