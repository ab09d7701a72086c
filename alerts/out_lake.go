package alerts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/storagewriter/lake"
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

// lakeWriter names the alerts table's files: alerts-<nanos>-<n>.parquet.
const lakeWriter = "alerts"

// lakeOutput writes the events gathered over LakeFlush as Parquet files,
// one per hour of event time, through the lake's store (storagewriter/lake:
// the local folder, or Azure Blob Storage with -lake-azure-url), laid out
// as the lake lays out the readings:
//
//	ROOT/date=YYYY-MM-DD/hour=HH/alerts-<stamp, 19 digits>-<n, 6 digits>.parquet
//
// Each file is built in memory and published whole (temp file, fsync,
// rename, folder fsync; or one conditional Put Blob). The batch is a
// planned one (batchplan.go): its stamp, and so its file names, are the
// same when it is delivered again after a crash, and a name already taken
// is a file already written, so no event is in the table twice.
func (e *Engine) lakeOutput() (*output, error) {
	cfg := e.cfg.Lake
	cfg.Name = lakeWriter
	store, err := lake.OpenStore(cfg)
	if err != nil {
		return nil, err
	}
	log := e.logger.With("output", "lake", "lake", store.String())
	log.Info("alerts: lake's alerts table", "flush", e.cfg.LakeFlush)
	files := e.m.lakeFiles
	return &output{name: "lake", durable: true, maxEvents: 50_000, every: e.cfg.LakeFlush,
		deliverPlanned: func(ctx context.Context, stamp int64, events []eval.Event) error {
			parts := map[string][]LakeRow{}
			for i := range events {
				p := lake.PartitionDir(time.UnixMilli(events[i].AtMs))
				parts[p] = append(parts[p], lakeRow(&events[i]))
			}
			for n, p := range slices.Sorted(maps.Keys(parts)) {
				var buf bytes.Buffer
				w := parquet.NewGenericWriter[LakeRow](&buf, parquet.Compression(&parquet.Zstd),
					parquet.KeyValueMetadata("drover.table", "alerts"))
				if _, err := w.Write(parts[p]); err != nil {
					return fmt.Errorf("lake: encode: %w", err)
				}
				if err := w.Close(); err != nil {
					return fmt.Errorf("lake: encode: %w", err)
				}
				name := p + lake.FileName(lakeWriter, stamp, uint64(n))
				switch err := store.Publish(ctx, name, buf.Bytes()); {
				case errors.Is(err, lake.ErrExists):
					// Written by this batch's delivery before a crash or a
					// lost answer: the same events, under the same name.
					log.Info("alerts: lake file already there (delivered before a restart or a retry)", "file", name)
					files.WithLabelValues("existed").Inc()
				case err != nil:
					return err
				default:
					files.WithLabelValues("written").Inc()
				}
			}
			return nil
		}}, nil
}
