package telemetrytest

import (
	"math"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// TestEdgeRecordsAreValid: everything drawn passes validation (at the
// reading's own time: the window around the server clock is not what the
// sinks are tested for), and the draws do reach the edges.
func TestEdgeRecordsAreValid(t *testing.T) {
	g := NewEdge(1)
	seen := map[string]bool{}
	ids := map[string]bool{}
	for range 20_000 {
		er := g.Record()
		rec, r := er.GetRecord(), er.GetRecord().GetReading()
		if err := telemetry.ValidateReading(r, time.UnixMilli(r.TimeMs), telemetry.DefaultLimits()); err != nil {
			t.Fatalf("drawn reading refused: %v\n%v", err, r)
		}
		if err := telemetry.ValidateDeviceID(rec.DeviceId); err != nil {
			t.Fatalf("drawn device id %q refused: %v", rec.DeviceId, err)
		}
		if ids[rec.DeviceId] {
			t.Fatalf("device id %q drawn twice", rec.DeviceId)
		}
		ids[rec.DeviceId] = true
		en := er.GetEnrichment()
		for _, l := range []string{en.Fleet, en.VehicleClass, en.Region} {
			if err := telemetry.ValidateLabel(l); err != nil {
				t.Fatalf("drawn label %q refused: %v", l, err)
			}
		}
		seen["seq max"] = seen["seq max"] || r.Seq == telemetry.MaxSeq
		seen["time min"] = seen["time min"] || r.TimeMs == telemetry.MinTimeMs
		seen["time max"] = seen["time max"] || r.TimeMs == telemetry.MaxTimeMs
		seen["id 128"] = seen["id 128"] || len(rec.DeviceId) == telemetry.MaxDeviceIDLen
		seen["32 extras"] = seen["32 extras"] || len(r.Extra) == 32
		seen["lat max"] = seen["lat max"] || r.GetLatE7() == telemetry.MaxLatE7
		seen["heading below 360"] = seen["heading below 360"] || r.GetHeadingDeg() == math.Nextafter32(360, 0)
		seen["label 128"] = seen["label 128"] || len(en.Fleet) == telemetry.MaxLabelLen
		for k, v := range r.Extra {
			seen["key 64"] = seen["key 64"] || len(k) == 64
			seen["value max"] = seen["value max"] || v == math.MaxFloat64
			seen["value -0"] = seen["value -0"] || (v == 0 && math.Signbit(v))
		}
	}
	for _, want := range []string{"seq max", "time min", "time max", "id 128", "32 extras", "lat max",
		"heading below 360", "label 128", "key 64", "value max", "value -0"} {
		if !seen[want] {
			t.Errorf("no draw reached %s", want)
		}
	}
}
