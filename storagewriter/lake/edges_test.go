package lake

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
	"github.com/drover-telemetry/drover/telemetry/telemetrytest"
)

// TestLakeStoresEveryValidRecord writes records drawn at the edges of
// everything the frontend's validation accepts (seq up to 2^63-1, time_ms
// from 1677 to 2262, every sensor at its bounds, 32 extras with keys of any
// allowed character and values over the whole double range, 128-byte ids,
// labels with any allowed character) to a local lake. Every write must
// succeed and every row must read back unchanged, and DuckDB must read the
// extremes: a valid reading the lake refused would be acked at the edge and
// then dead-lettered.
func TestLakeStoresEveryValidRecord(t *testing.T) {
	cfg := testConfig(t)
	s := newTestSink(t, cfg)
	var all []*telemetry.EnrichedRecord
	for seed := uint64(1); seed <= 3; seed++ {
		g := telemetrytest.NewEdge(seed)
		batch := make([]*telemetry.EnrichedRecord, 200)
		for i := range batch {
			batch[i] = g.Record()
		}
		if err := s.Write(context.Background(), batch); err != nil {
			t.Fatalf("seed %d: a valid batch was refused (permanent %v): %v", seed, sink.IsPermanent(err), err)
		}
		all = append(all, batch...)
	}
	want := make([]Row, len(all))
	for i, er := range all {
		want[i] = wantRow(er)
	}
	sortRows(want)
	sameRows(t, allRows(readLake(t, cfg.Dir)), want)

	// DuckDB, as an analyst reads the lake, sees the extremes: the largest
	// seq exactly, and the first and last instants InfluxDB can also hold.
	node, module := testenv.DuckDBNode(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out := testenv.RunDuckDB(t, ctx, node, module, "-e", duckdbEdges, cfg.Dir)
	var got struct{ Rows, MaxSeq, MinTime, MaxTime string }
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("duckdb output %q: %v", out, err)
	}
	if got.Rows != strconv.Itoa(len(all)) || got.MaxSeq != "9223372036854775807" ||
		got.MinTime != strconv.Itoa(telemetry.MinTimeMs) || got.MaxTime != strconv.Itoa(telemetry.MaxTimeMs) {
		t.Errorf("duckdb read %+v; want %d rows, max seq 2^63-1, times %d to %d", got, len(all), telemetry.MinTimeMs, telemetry.MaxTimeMs)
	}
}

// duckdbEdges prints the row count, the largest seq and the first and last
// times (Unix ms) of the lake in argv[1], as strings: JavaScript numbers
// cannot hold 2^63-1.
const duckdbEdges = `
const duckdb = require(process.env.DUCKDB_NODE_API);
(async () => {
  const inst = await duckdb.DuckDBInstance.create(':memory:');
  const conn = await inst.connect();
  const r = await conn.runAndReadAll("SELECT count(*)::VARCHAR AS rows, max(seq)::VARCHAR AS maxSeq, " +
    "epoch_ms(min(time))::VARCHAR AS minTime, epoch_ms(max(time))::VARCHAR AS maxTime " +
    "FROM read_parquet('" + process.argv[1] + "/**/*.parquet', hive_partitioning = true)");
  const o = r.getRowObjectsJson()[0];
  process.stdout.write(JSON.stringify({Rows: o.rows, MaxSeq: o.maxSeq, MinTime: o.minTime, MaxTime: o.maxTime}) + '\n');
})().catch((e) => { process.stderr.write(String(e && e.stack || e) + '\n'); process.exit(1); });
`

// wantRow is the row the lake must hold for er, restated from the schema
// (docs/lake.md) rather than from rowOf.
func wantRow(er *telemetry.EnrichedRecord) Row {
	rec, r := er.Record, er.Record.Reading
	row := Row{
		DeviceID: rec.DeviceId, Seq: int64(r.Seq), TimeMs: r.TimeMs, ReceivedMs: rec.ReceivedMs,
		AltitudeM: r.AltitudeM, HeadingDeg: r.HeadingDeg, SpeedKmh: r.SpeedKmh, Ignition: r.Ignition,
		EngineTempC: r.EngineTempC, EngineRPM: r.EngineRpm, FuelLevelPct: r.FuelLevelPct, OdometerKm: r.OdometerKm,
		BatteryVoltageV: r.BatteryVoltageV, BatteryCurrentA: r.BatteryCurrentA, PneumaticPressureKPa: r.PneumaticPressureKpa,
		Extra: r.Extra, Fleet: er.Enrichment.Fleet, VehicleClass: er.Enrichment.VehicleClass, Region: er.Enrichment.Region,
	}
	if r.LatE7 != nil {
		lat, lon := float64(*r.LatE7)/1e7, float64(*r.LonE7)/1e7
		row.Lat, row.Lon = &lat, &lon
	}
	if r.Satellites != nil {
		n := int32(*r.Satellites)
		row.Satellites = &n
	}
	return row
}
