package lake

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/drover-telemetry/drover/telemetry"
)

// testConfig is a local lake in a fresh folder with compaction left to the
// test.
func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.Dir = t.TempDir()
	cfg.CompactInterval = 0
	cfg.Name = "w-1"
	return cfg
}

func newTestSink(t testing.TB, cfg Config) *Sink {
	t.Helper()
	s, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// baseTime is a device time in the middle of an hour, long enough ago for
// the hour to be closed.
var baseTime = time.Date(2025, 3, 14, 7, 30, 0, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// makeRecords returns n records of `devices` devices, one per device every
// step from start, with sequences from firstSeq, and every kind of value: some
// readings have a fix and every sensor, some have none, some carry extra
// sensors.
func makeRecords(n, devices int, start time.Time, step time.Duration, firstSeq uint64) []*telemetry.EnrichedRecord {
	recs := make([]*telemetry.EnrichedRecord, 0, n)
	for i := range n {
		dev := i % devices
		k := uint64(i / devices)
		r := &telemetry.Reading{
			Seq:    firstSeq + k,
			TimeMs: start.Add(time.Duration(k) * step).UnixMilli(),
		}
		switch i % 3 {
		case 0: // full
			r.SetPosition(45.1234567+float64(dev)*0.01, -73.7654321+float64(k)*1e-5)
			r.AltitudeM = ptr(float32(30.5))
			r.HeadingDeg = ptr(float32(k % 360))
			r.SpeedKmh = ptr(float32(i%120) + 0.25)
			r.Satellites = ptr(uint32(i % 20))
			r.Ignition = ptr(i%2 == 0)
			r.EngineTempC = ptr(float32(90.5))
			r.EngineRpm = ptr(float32(1500 + i%1000))
			r.FuelLevelPct = ptr(float32(i%100) + 0.5)
			r.OdometerKm = ptr(123456.789 + float64(i))
			r.BatteryVoltageV = ptr(float32(13.8))
			r.BatteryCurrentA = ptr(float32(-2.5))
			r.PneumaticPressureKpa = ptr(float32(800))
		case 1: // no fix, a few values, extra sensors
			r.Ignition = ptr(false)
			r.BatteryVoltageV = ptr(float32(12.1))
			r.Extra = map[string]float64{"oil_pressure_kpa": float64(300 + i%50), "cabin_temp_c": 21.5}
		case 2: // nothing but the fix at (0, 0)
			r.SetPosition(0, 0)
		}
		recs = append(recs, &telemetry.EnrichedRecord{
			Record: &telemetry.Record{
				DeviceId:   fmt.Sprintf("dev-%04d", dev),
				ReceivedMs: r.TimeMs + 1500,
				Reading:    r,
			},
			Enrichment: &telemetry.Enrichment{
				Fleet:        fmt.Sprintf("fleet-%d", dev%3),
				VehicleClass: []string{"truck", "van", "bus"}[dev%3],
				Region:       "eu-west",
			},
		})
	}
	return recs
}

// lakeFile is a data file of a local lake, read back.
type lakeFile struct {
	rel  string // relative path, slash separated
	size int64
	rows []Row
	meta map[string]string
}

var fileNameRE = regexp.MustCompile(`^date=\d{4}-\d{2}-\d{2}/hour=\d{2}/[A-Za-z0-9._-]+-\d{19}-\d{6}\.parquet$`)

// readLake reads every .parquet file under dir as a reader would (skipping
// folders that start with '_' or '.'), failing on any that does not open.
func readLake(t testing.TB, dir string) []lakeFile {
	t.Helper()
	var files []lakeFile
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && p != dir && (strings.HasPrefix(e.Name(), "_") || strings.HasPrefix(e.Name(), ".")) {
			return filepath.SkipDir
		}
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".parquet") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rows, meta := decodeParquet(t, rel, data)
		files = append(files, lakeFile{rel: filepath.ToSlash(rel), size: int64(len(data)), rows: rows, meta: meta})
		return nil
	})
	if err != nil {
		t.Fatalf("walk lake: %v", err)
	}
	return files
}

// decodeParquet reads all rows of a Parquet file held in memory.
func decodeParquet(t testing.TB, name string, data []byte) ([]Row, map[string]string) {
	t.Helper()
	f, err := parquet.OpenFile(strings.NewReader(string(data)), int64(len(data)))
	if err != nil {
		t.Fatalf("%s: not a complete Parquet file: %v", name, err)
	}
	rows := make([]Row, f.NumRows())
	rd := parquet.NewGenericReader[Row](f)
	n := 0
	for n < len(rows) {
		k, err := rd.Read(rows[n:])
		n += k
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: read rows: %v", name, err)
		}
	}
	if int64(n) != f.NumRows() {
		t.Fatalf("%s: read %d rows of %d", name, n, f.NumRows())
	}
	rd.Close()
	meta := map[string]string{}
	for _, kv := range f.Metadata().KeyValueMetadata {
		meta[kv.Key] = kv.Value
	}
	return rows, meta
}

// allRows returns the rows of files, sorted by key.
func allRows(files []lakeFile) []Row {
	var rows []Row
	for _, f := range files {
		rows = append(rows, f.rows...)
	}
	sortRows(rows)
	return rows
}

func sortRows(rows []Row) {
	slices.SortStableFunc(rows, func(a, b Row) int {
		return cmp.Or(cmp.Compare(a.DeviceID, b.DeviceID), cmp.Compare(a.Seq, b.Seq))
	})
}

// expectedRows converts recs as the lake should, sorted by key.
func expectedRows(t testing.TB, recs []*telemetry.EnrichedRecord) []Row {
	t.Helper()
	rows := make([]Row, 0, len(recs))
	for _, r := range recs {
		row, err := rowOf(r)
		if err != nil {
			t.Fatalf("rowOf: %v", err)
		}
		rows = append(rows, row)
	}
	sortRows(rows)
	return rows
}

// dedupe keeps the first row of each (device_id, seq), as the documented
// queries do.
func dedupe(rows []Row) []Row {
	var out []Row
	for i, r := range rows {
		if i > 0 && r.DeviceID == rows[i-1].DeviceID && r.Seq == rows[i-1].Seq {
			continue
		}
		out = append(out, r)
	}
	return out
}

// sameRows compares rows field by field (an empty and a nil map are the
// same: Parquet stores both as an empty map) and reports the first
// difference.
func sameRows(t testing.TB, got, want []Row) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d rows, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if len(g.Extra) == 0 && len(w.Extra) == 0 {
			g.Extra, w.Extra = nil, nil
		}
		if !maps.Equal(g.Extra, w.Extra) {
			t.Fatalf("row %d (%s/%d): extra %v, want %v", i, w.DeviceID, w.Seq, g.Extra, w.Extra)
		}
		g.Extra, w.Extra = nil, nil
		if !reflect.DeepEqual(g, w) {
			t.Fatalf("row %d:\n got  %s\n want %s", i, fmtRow(g), fmtRow(w))
		}
	}
}

func fmtRow(r Row) string {
	v := reflect.ValueOf(r)
	var b strings.Builder
	for i := range v.NumField() {
		f := v.Field(i)
		if f.Kind() == reflect.Pointer {
			if f.IsNil() {
				fmt.Fprintf(&b, "%s=nil ", v.Type().Field(i).Name)
				continue
			}
			f = f.Elem()
		}
		fmt.Fprintf(&b, "%s=%v ", v.Type().Field(i).Name, f.Interface())
	}
	return b.String()
}

// scratchEntries lists what is in a writer's scratch folder.
func scratchEntries(t testing.TB, cfg Config) []string {
	t.Helper()
	entries, err := os.ReadDir(scratchName(cfg.Dir, cfg.Name))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writeFileAt writes a small file at dir/name.
func writeFileAt(dir, name, content string) error {
	return os.WriteFile(filepath.Join(dir, filepath.FromSlash(name)), []byte(content), 0o644)
}
