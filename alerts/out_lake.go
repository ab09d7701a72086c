package alerts

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/atomicfile"
)

// LakeRow is one alert event as the lake's alerts table stores it
// (docs/alerts.md, "The lake"). EventID is unique per event: a query drops
// the duplicates a restart can write by it.
type LakeRow struct {
	EventID    string   `parquet:"event_id"`
	Event      string   `parquet:"event,dict"`
	AtMs       int64    `parquet:"at,timestamp(millisecond:utc)"`
	DetectedMs int64    `parquet:"detected_ms"`
	AlertID    string   `parquet:"alert_id"`
	Type       string   `parquet:"type,dict"`
	Rule       string   `parquet:"rule,dict"`
	Fence      string   `parquet:"fence,dict"`
	DeviceID   string   `parquet:"device_id,dict"`
	Fleet      string   `parquet:"fleet,dict"`
	Class      string   `parquet:"vehicle_class,dict"`
	Severity   string   `parquet:"severity,dict"`
	State      string   `parquet:"state,dict"`
	StartMs    int64    `parquet:"start,timestamp(millisecond:utc)"`
	RaisedMs   int64    `parquet:"raised_ms"`
	EndMs      *int64   `parquet:"end_ms,optional"`
	DurationMs *int64   `parquet:"duration_ms,optional"`
	Value      float64  `parquet:"value"`
	Peak       float64  `parquet:"peak"`
	Threshold  float64  `parquet:"threshold"`
	Unit       string   `parquet:"unit,dict"`
	Lat        *float64 `parquet:"lat,optional"`
	Lon        *float64 `parquet:"lon,optional"`
	FirstSeq   int64    `parquet:"first_seq"`
	LastSeq    int64    `parquet:"last_seq"`
	Late       bool     `parquet:"late"`
	DelayMs    int64    `parquet:"delay_ms"`
	EndReason  string   `parquet:"end_reason,dict"`
	Message    string   `parquet:"message"`
}

// lakeRow converts an event.
func lakeRow(ev *eval.Event) LakeRow {
	a := &ev.Alert
	r := LakeRow{EventID: ev.ID(), Event: ev.Kind, AtMs: ev.AtMs, DetectedMs: ev.DetectedMs, AlertID: a.ID, Type: a.Type,
		Rule: a.Rule, Fence: a.Fence, DeviceID: a.Device, Fleet: a.Fleet, Class: a.Class, Severity: string(a.Severity),
		State: a.State, StartMs: a.StartMs, RaisedMs: a.RaisedMs, Value: a.Value, Peak: a.Peak, Threshold: a.Threshold,
		Unit: a.Unit, FirstSeq: int64(a.FirstSeq), LastSeq: int64(a.LastSeq), Late: a.Late, DelayMs: a.DelayMs,
		EndReason: a.EndReason, Message: a.Message}
	if a.State == eval.StateCleared {
		end, dur := a.EndMs, a.DurationMs
		r.EndMs, r.DurationMs = &end, &dur
	}
	if a.HasPos {
		lat, lon := a.Lat, a.Lon
		r.Lat, r.Lon = &lat, &lon
	}
	return r
}

var lakeCounter atomic.Uint64

// lakeOutput writes the events gathered over LakeFlush as Parquet files,
// one per hour of event time, in the alerts table's folder:
//
//	DIR/date=YYYY-MM-DD/hour=HH/alerts-<unix nanos>-<counter>.parquet
//
// Each file is built in memory and written with atomicfile (temporary
// file, fsync, rename, folder fsync): a file is visible only whole.
func (e *Engine) lakeOutput() *output {
	dir := e.cfg.LakeDir
	return &output{name: "lake", durable: true, maxEvents: 50_000, every: e.cfg.LakeFlush,
		deliver: func(_ context.Context, events []eval.Event) error {
			parts := map[string][]LakeRow{}
			for i := range events {
				t := time.UnixMilli(events[i].AtMs).UTC()
				p := filepath.Join(fmt.Sprintf("date=%s", t.Format("2006-01-02")), fmt.Sprintf("hour=%02d", t.Hour()))
				parts[p] = append(parts[p], lakeRow(&events[i]))
			}
			for p, rows := range parts {
				var buf bytes.Buffer
				w := parquet.NewGenericWriter[LakeRow](&buf, parquet.Compression(&parquet.Zstd),
					parquet.KeyValueMetadata("drover.table", "alerts"))
				if _, err := w.Write(rows); err != nil {
					return fmt.Errorf("lake: encode: %w", err)
				}
				if err := w.Close(); err != nil {
					return fmt.Errorf("lake: encode: %w", err)
				}
				folder := filepath.Join(dir, p)
				if err := os.MkdirAll(folder, 0o755); err != nil {
					return fmt.Errorf("lake: %w", err)
				}
				name := fmt.Sprintf("alerts-%019d-%06d.parquet", time.Now().UnixNano(), lakeCounter.Add(1)%1_000_000)
				if err := atomicfile.WriteFile(filepath.Join(folder, name), buf.Bytes(), 0o644); err != nil {
					return fmt.Errorf("lake: %w", err)
				}
			}
			return nil
		}}
}
