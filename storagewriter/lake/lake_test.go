package lake

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// Batches go to files in the partition of their device time, each row as it
// was sent.
func TestWriteReadBack(t *testing.T) {
	cfg := testConfig(t)
	reg := prometheus.NewRegistry()
	s, err := New(cfg, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx := context.Background()

	// Three batches: one within an hour, one straddling two hours, one with
	// a late reading days older.
	b1 := makeRecords(600, 20, baseTime, time.Second, 1)
	b2 := makeRecords(1200, 20, baseTime.Add(29*time.Minute), 2*time.Second, 1000)
	late := makeRecords(1, 1, baseTime.Add(-72*time.Hour), time.Second, 5)
	late[0].Record.DeviceId = "dev-late"
	b3 := append(makeRecords(40, 20, baseTime.Add(90*time.Minute), time.Second, 5000), late...)
	var all []*telemetry.EnrichedRecord
	for _, b := range [][]*telemetry.EnrichedRecord{b1, b2, b3} {
		if err := s.Write(ctx, b); err != nil {
			t.Fatalf("Write: %v", err)
		}
		all = append(all, b...)
	}

	files := readLake(t, cfg.Dir)
	for _, f := range files {
		if !fileNameRE.MatchString(f.rel) || !strings.Contains(f.rel, "/w-1-") {
			t.Errorf("file name %q does not follow date=YYYY-MM-DD/hour=HH/<writer>-<nanos>-<counter>.parquet", f.rel)
		}
		for _, r := range f.rows {
			if want := partitionOf(r.TimeMs).dir(); !strings.HasPrefix(f.rel, want) {
				t.Errorf("%s holds a row of %s (%s/%d)", f.rel, want, r.DeviceID, r.Seq)
			}
		}
		if f.meta["drover.schema"] != SchemaVersion || f.meta["drover.writer"] != "w-1" {
			t.Errorf("%s: metadata %v", f.rel, f.meta)
		}
	}
	// b1: one file; b2: two hours; b3: two hours (09 and the late one).
	if len(files) != 5 {
		t.Errorf("%d files, want 5: %v", len(files), files)
	}
	sameRows(t, allRows(files), expectedRows(t, all))

	if got := testutil.ToFloat64(s.m.rows); got != float64(len(all)) {
		t.Errorf("rows_written_total = %v, want %d", got, len(all))
	}
	if got := testutil.ToFloat64(s.m.files.WithLabelValues(kindBatch)); got != 5 {
		t.Errorf("files_written_total{kind=batch} = %v, want 5", got)
	}
	if n, err := testutil.GatherAndCount(reg, "drover_lake_rows_written_total", "drover_lake_pending_rows"); err != nil || n != 2 {
		t.Errorf("registered metrics: %d, %v", n, err)
	}
	if got := scratchEntries(t, cfg); len(got) != 0 {
		t.Errorf("scratch folder not empty after writes: %v", got)
	}
}

// The same records written twice give twice the rows, which deduplicate by
// (device_id, seq) to exactly the records.
func TestWriteTwiceDedupes(t *testing.T) {
	cfg := testConfig(t)
	s := newTestSink(t, cfg)
	recs := makeRecords(1000, 10, baseTime, time.Second, 1)
	for range 2 {
		if err := s.Write(context.Background(), recs); err != nil {
			t.Fatal(err)
		}
	}
	rows := allRows(readLake(t, cfg.Dir))
	if len(rows) != 2*len(recs) {
		t.Fatalf("%d rows, want %d", len(rows), 2*len(recs))
	}
	sameRows(t, dedupe(rows), expectedRows(t, recs))
}

// A record that cannot be stored fails the whole call as permanent, and
// nothing is written.
func TestWritePermanent(t *testing.T) {
	good := makeRecords(1, 1, baseTime, time.Second, 1)[0]
	cases := map[string]*telemetry.EnrichedRecord{
		"no record":  {},
		"no reading": {Record: &telemetry.Record{DeviceId: "d"}},
		"no device":  {Record: &telemetry.Record{Reading: &telemetry.Reading{Seq: 1, TimeMs: baseTime.UnixMilli()}}},
		"seq 0":      {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{TimeMs: baseTime.UnixMilli()}}},
		"seq 2^63":   {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{Seq: 1 << 63, TimeMs: baseTime.UnixMilli()}}},
		"year 10000": {Record: &telemetry.Record{DeviceId: "d", Reading: &telemetry.Reading{Seq: 1, TimeMs: maxTimeMs + 1}}},
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t)
			s := newTestSink(t, cfg)
			err := s.Write(context.Background(), []*telemetry.EnrichedRecord{good, bad})
			if !sink.IsPermanent(err) {
				t.Fatalf("Write = %v, want a permanent error", err)
			}
			if files := readLake(t, cfg.Dir); len(files) != 0 {
				t.Fatalf("%d files written", len(files))
			}
		})
	}
}

// Write honours ctx, and refuses after Close.
func TestWriteContextAndClose(t *testing.T) {
	cfg := testConfig(t)
	s := newTestSink(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	recs := makeRecords(10, 2, baseTime, time.Second, 1)
	if err := s.Write(ctx, recs); !errors.Is(err, context.Canceled) || sink.IsPermanent(err) {
		t.Fatalf("Write with a cancelled ctx = %v", err)
	}
	if err := s.Write(context.Background(), nil); err != nil {
		t.Fatalf("empty Write = %v", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := s.Write(context.Background(), recs); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close = %v", err)
	}
}

// A disk error is transient: the writer retries.
func TestWriteDiskErrorTransient(t *testing.T) {
	cfg := testConfig(t)
	s := newTestSink(t, cfg)
	// Make the partition folder a file: creating it fails, as a full or
	// broken disk would.
	if err := writeFileAt(cfg.Dir, "date=2025-03-14", "not a folder"); err != nil {
		t.Fatal(err)
	}
	err := s.Write(context.Background(), makeRecords(10, 2, baseTime, time.Second, 1))
	if err == nil || sink.IsPermanent(err) {
		t.Fatalf("Write = %v, want a transient error", err)
	}
	if got := scratchEntries(t, cfg); len(got) != 0 {
		t.Errorf("failed Write left %v in scratch", got)
	}
}

func TestPartitionOf(t *testing.T) {
	cases := []struct {
		t    time.Time
		want string
	}{
		{time.Date(2025, 3, 14, 7, 0, 0, 0, time.UTC), "date=2025-03-14/hour=07/"},
		{time.Date(2025, 3, 14, 7, 59, 59, 999e6, time.UTC), "date=2025-03-14/hour=07/"},
		{time.Date(2025, 12, 31, 23, 30, 0, 0, time.UTC), "date=2025-12-31/hour=23/"},
		{time.Date(1969, 12, 31, 23, 59, 59, 999e6, time.UTC), "date=1969-12-31/hour=23/"},
		{time.Date(2025, 3, 14, 9, 30, 0, 0, time.FixedZone("UTC+2", 7200)), "date=2025-03-14/hour=07/"},
	}
	for _, c := range cases {
		p := partitionOf(c.t.UnixMilli())
		if got := p.dir(); got != c.want {
			t.Errorf("partitionOf(%v) = %s, want %s", c.t, got, c.want)
		}
		if back, ok := parsePartition(p.dir() + "x.parquet"); !ok || back != p {
			t.Errorf("parsePartition(%s) = %v, %v", p.dir(), back, ok)
		}
	}
}

func TestOwnFile(t *testing.T) {
	cases := []struct {
		name, writer string
		want         bool
	}{
		{"date=2025-03-14/hour=07/lake-1741937400000000000-000001.parquet", "lake", true},
		{"date=2025-03-14/hour=07/lake-2-1741937400000000000-000001.parquet", "lake", false},
		{"date=2025-03-14/hour=07/lake-2-1741937400000000000-000001.parquet", "lake-2", true},
		{"date=2025-03-14/hour=07/lake-1741937400000000000-000001.parquet.tmp", "lake", false},
		{"date=2025-03-14/hour=07/sub/lake-1741937400000000000-000001.parquet", "lake", false},
		{"date=2025-03-14/hour=07/lake-x-000001.parquet", "lake", false},
		{"other/lake-1741937400000000000-000001.parquet", "lake", false},
	}
	for _, c := range cases {
		if _, got := ownFile(c.name, c.writer); got != c.want {
			t.Errorf("ownFile(%q, %q) = %v, want %v", c.name, c.writer, got, c.want)
		}
	}
}
