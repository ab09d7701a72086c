package lake

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// SchemaVersion is written into every file's key-value metadata under
// "drover.schema". It changes only when a column is added (columns are never
// renamed, retyped or removed: a file of an older version stays readable,
// with nulls in the newer columns).
const SchemaVersion = "1"

// Row is one reading as the lake stores it: one Parquet row. The struct tags
// are the schema (docs/lake.md has the column table). Optional sensor values
// are pointers: a null means the device did not send the value, which is not
// the same as 0.
type Row struct {
	// DeviceID and Seq are the reading's identity: (device_id, seq) is
	// unique per reading, so a query drops duplicates exactly by it.
	DeviceID string `parquet:"device_id,dict"`
	// Seq is the device's sequence number. Parquet has no portable unsigned
	// 64-bit type (Spark reads UINT_64 as a decimal), so it is a signed
	// INT64; sequences above 2^63-1 are refused.
	Seq int64 `parquet:"seq"`
	// TimeMs is the device time (Unix milliseconds), a TIMESTAMP(MILLIS,
	// UTC) column named time. The partition is derived from it.
	TimeMs int64 `parquet:"time,timestamp(millisecond:utc)"`
	// ReceivedMs is when the frontend received the reading (Unix
	// milliseconds, server clock).
	ReceivedMs int64 `parquet:"received_ms"`

	Lat                  *float64 `parquet:"lat,optional"`
	Lon                  *float64 `parquet:"lon,optional"`
	AltitudeM            *float32 `parquet:"altitude_m,optional"`
	HeadingDeg           *float32 `parquet:"heading_deg,optional"`
	SpeedKmh             *float32 `parquet:"speed_kmh,optional"`
	Satellites           *int32   `parquet:"satellites,optional"`
	Ignition             *bool    `parquet:"ignition,optional"`
	EngineTempC          *float32 `parquet:"engine_temp_c,optional"`
	EngineRPM            *float32 `parquet:"engine_rpm,optional"`
	FuelLevelPct         *float32 `parquet:"fuel_level_pct,optional"`
	OdometerKm           *float64 `parquet:"odometer_km,optional"`
	BatteryVoltageV      *float32 `parquet:"battery_voltage_v,optional"`
	BatteryCurrentA      *float32 `parquet:"battery_current_a,optional"`
	PneumaticPressureKPa *float32 `parquet:"pneumatic_pressure_kpa,optional"`

	// Extra holds the sensors the schema does not name yet, as a Parquet
	// MAP<STRING, DOUBLE>: typed, and queryable as extra['name'] in DuckDB
	// and Spark. Empty when the reading has none.
	Extra map[string]float64 `parquet:"extra"`

	Fleet        string `parquet:"fleet,dict"`
	VehicleClass string `parquet:"vehicle_class,dict"`
	Region       string `parquet:"region,dict"`
}

// The range of device times a partition path can name (4-digit years).
var (
	minTimeMs = time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).UnixMilli()
	maxTimeMs = time.Date(9999, 12, 31, 23, 59, 59, 999e6, time.UTC).UnixMilli()
)

// errBadRecord is what conversion errors wrap.
var errBadRecord = errors.New("record cannot be stored")

// rowOf converts an enriched record into a row. It fails only for a record
// that validation upstream refuses (telemetry.MaxSeq, telemetry.MinTimeMs
// and MaxTimeMs are within what a row holds), so only a record from
// elsewhere or from an older drover.
func rowOf(er *telemetry.EnrichedRecord) (Row, error) {
	rec := er.GetRecord()
	r := rec.GetReading()
	switch {
	case rec == nil:
		return Row{}, fmt.Errorf("%w: no record", errBadRecord)
	case r == nil:
		return Row{}, fmt.Errorf("%w: device %q: no reading", errBadRecord, rec.GetDeviceId())
	case rec.GetDeviceId() == "":
		return Row{}, fmt.Errorf("%w: seq %d: empty device id", errBadRecord, r.GetSeq())
	case r.GetSeq() == 0 || r.GetSeq() > telemetry.MaxSeq:
		return Row{}, fmt.Errorf("%w: device %q: seq %d out of range 1..2^63-1", errBadRecord, rec.GetDeviceId(), r.GetSeq())
	case r.GetTimeMs() < minTimeMs || r.GetTimeMs() > maxTimeMs:
		return Row{}, fmt.Errorf("%w: device %q seq %d: time_ms %d outside years 1..9999", errBadRecord, rec.GetDeviceId(), r.GetSeq(), r.GetTimeMs())
	}
	row := Row{
		DeviceID:             rec.GetDeviceId(),
		Seq:                  int64(r.GetSeq()),
		TimeMs:               r.GetTimeMs(),
		ReceivedMs:           rec.GetReceivedMs(),
		AltitudeM:            r.AltitudeM,
		HeadingDeg:           r.HeadingDeg,
		SpeedKmh:             r.SpeedKmh,
		Ignition:             r.Ignition,
		EngineTempC:          r.EngineTempC,
		EngineRPM:            r.EngineRpm,
		FuelLevelPct:         r.FuelLevelPct,
		OdometerKm:           r.OdometerKm,
		BatteryVoltageV:      r.BatteryVoltageV,
		BatteryCurrentA:      r.BatteryCurrentA,
		PneumaticPressureKPa: r.PneumaticPressureKpa,
		Extra:                r.GetExtra(),
		Fleet:                er.GetEnrichment().GetFleet(),
		VehicleClass:         er.GetEnrichment().GetVehicleClass(),
		Region:               er.GetEnrichment().GetRegion(),
	}
	if lat, lon, ok := r.Position(); ok {
		row.Lat, row.Lon = &lat, &lon
	}
	if r.Satellites != nil {
		if *r.Satellites > math.MaxInt32 {
			return Row{}, fmt.Errorf("%w: device %q seq %d: satellites %d out of range", errBadRecord, rec.GetDeviceId(), r.GetSeq(), *r.Satellites)
		}
		n := int32(*r.Satellites)
		row.Satellites = &n
	}
	// The row shares the reading's pointers and map: the records stay
	// untouched for the duration of Write, which is all the row lives.
	return row, nil
}

// partition is an hour of device time, the unit of the lake's folders.
type partition struct {
	// hour is the start of the hour, UTC, in Unix seconds.
	hour int64
}

// partitionOf returns the partition of a device time in Unix milliseconds.
func partitionOf(timeMs int64) partition {
	sec := timeMs / 1000
	if timeMs%1000 < 0 {
		sec-- // floor for times before 1970
	}
	return partition{hour: sec - ((sec%3600)+3600)%3600}
}

// start returns the first instant of the partition.
func (p partition) start() time.Time { return time.Unix(p.hour, 0).UTC() }

// end returns the first instant after the partition.
func (p partition) end() time.Time { return time.Unix(p.hour+3600, 0).UTC() }

// dir returns the partition's folder, relative to the lake root and with a
// trailing slash: date=YYYY-MM-DD/hour=HH/.
func (p partition) dir() string {
	return p.start().Format("date=2006-01-02/hour=15/")
}

// String returns the partition's folder, for logs.
func (p partition) String() string { return p.dir() }

// parsePartition reads a partition from a lake-relative path that starts
// with date=YYYY-MM-DD/hour=HH/.
func parsePartition(name string) (partition, bool) {
	const layout = "date=2006-01-02/hour=15/"
	if len(name) < len(layout) {
		return partition{}, false
	}
	t, err := time.Parse(layout, name[:len(layout)])
	if err != nil {
		return partition{}, false
	}
	return partition{hour: t.Unix()}, true
}

// rowsByPartition converts recs and groups the rows by partition, each group
// sorted by (device_id, seq): sorted rows compress better and give each
// file's row groups tight min/max statistics on device_id.
func rowsByPartition(recs []*telemetry.EnrichedRecord) (map[partition][]Row, error) {
	rows := make([]Row, len(recs))
	order := make(map[partition][]int32, 2)
	for i, er := range recs {
		row, err := rowOf(er)
		if err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
		rows[i] = row
		p := partitionOf(row.TimeMs)
		order[p] = append(order[p], int32(i))
	}
	groups := make(map[partition][]Row, len(order))
	for p, idx := range order {
		// Sort indices, not rows: a Row is ~200 bytes of pointers, and
		// swapping those costs a write barrier per pointer.
		slices.SortFunc(idx, func(a, b int32) int {
			if c := cmp.Compare(rows[a].DeviceID, rows[b].DeviceID); c != 0 {
				return c
			}
			return cmp.Compare(rows[a].Seq, rows[b].Seq)
		})
		if len(order) == 1 && slices.IsSorted(idx) {
			groups[p] = rows
			continue
		}
		sorted := make([]Row, len(idx))
		for j, i := range idx {
			sorted[j] = rows[i]
		}
		groups[p] = sorted
	}
	return groups, nil
}
