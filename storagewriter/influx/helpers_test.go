package influx

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/telemetry"
)

func f32(v float32) *float32 { return &v }
func f64(v float64) *float64 { return &v }
func i32(v int32) *int32     { return &v }
func u32(v uint32) *uint32   { return &v }
func bl(v bool) *bool        { return &v }

// baseTime is the device time of test readings: recent, so that any
// retention policy keeps them, and a whole second.
var baseTime = time.Now().Add(-time.Hour).Truncate(time.Second)

// fullRecord is a reading with every sensor and two extras, enriched.
func fullRecord(device string, seq uint64, t time.Time) *telemetry.EnrichedRecord {
	return &telemetry.EnrichedRecord{
		Record: &telemetry.Record{
			DeviceId:   device,
			ReceivedMs: t.UnixMilli() + 250,
			Reading: &telemetry.Reading{
				Seq:                  seq,
				TimeMs:               t.UnixMilli(),
				LatE7:                i32(457_640_434),
				LonE7:                i32(48_356_728),
				AltitudeM:            f32(173.4),
				HeadingDeg:           f32(187.25),
				SpeedKmh:             f32(87.6),
				Satellites:           u32(11),
				Ignition:             bl(true),
				EngineTempC:          f32(88.5),
				EngineRpm:            f32(1450),
				FuelLevelPct:         f32(63.2),
				OdometerKm:           f64(412_873.4),
				BatteryVoltageV:      f32(27.6),
				BatteryCurrentA:      f32(-12.4),
				PneumaticPressureKpa: f32(815),
				Extra:                map[string]float64{"tyre.fl-kpa": 830.5, "cargo_temp_c": -18},
			},
		},
		Enrichment: &telemetry.Enrichment{Fleet: "acme", VehicleClass: "truck", Region: "rhone"},
	}
}

// minimalRecord is a reading with nothing but seq and time, not enriched.
func minimalRecord(device string, seq uint64, t time.Time) *telemetry.EnrichedRecord {
	return &telemetry.EnrichedRecord{Record: &telemetry.Record{
		DeviceId: device,
		Reading:  &telemetry.Reading{Seq: seq, TimeMs: t.UnixMilli()},
	}}
}

// fleetBatch is n readings spread over devices, one second apart per device,
// with sequences starting at firstSeq.
func fleetBatch(n, devices int, firstSeq uint64) []*telemetry.EnrichedRecord {
	recs := make([]*telemetry.EnrichedRecord, n)
	for i := range n {
		dev := i % devices
		seq := firstSeq + uint64(i/devices)
		r := fullRecord(fmt.Sprintf("truck-%04d", dev), seq, baseTime.Add(time.Duration(seq)*time.Second))
		r.Enrichment.Fleet = fmt.Sprintf("fleet-%d", dev%3)
		*r.Record.Reading.SpeedKmh = float32(i % 120)
		recs[i] = r
	}
	return recs
}

// newTestSink builds a sink for url and database with its own registry.
func newTestSink(t testing.TB, url, database string, mod ...func(*Config)) (*Sink, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.URL, cfg.Database = url, database
	cfg.Timeout = 10 * time.Second
	for _, m := range mod {
		m(&cfg)
	}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s, reg
}
