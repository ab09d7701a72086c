package alerts

import (
	"context"
	"fmt"
	"net/http"
	"time"

	influxdb2 "github.com/influxdata/influxdb-client-go/v2"
	"github.com/influxdata/influxdb-client-go/v2/api/write"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/storagewriter/influx"
)

// influxOutput writes the alerts measurement (docs/alerts.md, "InfluxDB"):
// one point per alert, at its start time, tagged with device, fleet, type,
// severity and fence. The raised and the cleared event of an alert write
// the same point (same series and time), so it ends up with the alert's
// latest state; writing an event again overwrites it with itself.
func (e *Engine) influxOutput() (*output, error) {
	cfg := e.cfg.Influx
	// The storage writer's sink, only for its check: InfluxDB answers, and
	// the database exists (or is created, with -influx-create-database).
	checker, err := influx.New(cfg, e.logger, nil)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	opts := influxdb2.DefaultOptions().SetHTTPClient(&http.Client{Transport: tr}).SetPrecision(time.Millisecond).
		SetApplicationName("drover-alerts")
	client := influxdb2.NewClientWithOptions(cfg.URL, cfg.Token, opts)
	bucket := cfg.Database
	if cfg.RetentionPolicy != "" {
		bucket += "/" + cfg.RetentionPolicy
	}
	w := client.WriteAPIBlocking("-", bucket)
	checked := false
	return &output{name: "influx", durable: true, maxEvents: 5000, deliver: func(ctx context.Context, events []eval.Event) error {
		if !checked {
			cctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
			err := checker.Check(cctx)
			cancel()
			if err != nil {
				return fmt.Errorf("influx: %w", err)
			}
			checked = true
		}
		pts := make([]*write.Point, 0, len(events))
		for i := range events {
			pts = append(pts, InfluxPoint(cfg.Measurement, &events[i]))
		}
		wctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
		if err := w.WritePoint(wctx, pts...); err != nil {
			return fmt.Errorf("influx: write %d alert points: %w", len(pts), err)
		}
		return nil
	}}, nil
}

// InfluxPoint is an event's alert as a point of the alerts measurement
// (docs/alerts.md, "InfluxDB"): what the engine writes, for tools and for
// the Grafana dashboards' tests.
func InfluxPoint(measurement string, ev *eval.Event) *write.Point {
	a := &ev.Alert
	tags := map[string]string{"device": a.Device, "type": a.Type, "severity": string(a.Severity)}
	if a.Fleet != "" {
		tags["fleet"] = a.Fleet
	}
	if a.Fence != "" {
		tags["fence"] = a.Fence
	}
	fields := map[string]any{
		"alert_id":  a.ID,
		"event":     ev.Kind,
		"state":     a.State,
		"rule":      a.Rule,
		"message":   a.Message,
		"value":     a.Value,
		"peak":      a.Peak,
		"threshold": a.Threshold,
		"late":      a.Late,
		"delay_s":   float64(a.DelayMs) / 1000,
		"raised_ms": a.RaisedMs,
		"first_seq": int64(a.FirstSeq),
		"last_seq":  int64(a.LastSeq),
	}
	if a.Unit != "" {
		fields["unit"] = a.Unit
	}
	if a.HasPos {
		fields["lat"], fields["lon"] = a.Lat, a.Lon
	}
	if a.State == eval.StateCleared {
		fields["end_ms"] = a.EndMs
		fields["duration_s"] = float64(a.DurationMs) / 1000
	}
	if a.EndReason != "" {
		fields["end_reason"] = a.EndReason
	}
	if a.FenceName != "" {
		fields["fence_name"] = a.FenceName
	}
	return write.NewPoint(measurement, tags, fields, time.UnixMilli(a.StartMs))
}
