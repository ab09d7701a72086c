package lake

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/telemetry"
)

// writeBatches writes n batches of size records into the hour of baseTime
// and returns every record written.
func writeBatches(t testing.TB, s *Sink, n, size int, firstSeq uint64) []*telemetry.EnrichedRecord {
	t.Helper()
	var all []*telemetry.EnrichedRecord
	for i := range n {
		b := makeRecords(size, 4, baseTime, time.Millisecond, firstSeq+uint64(i*size))
		if err := s.Write(context.Background(), b); err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

func fileNames(files []lakeFile) []string {
	var names []string
	for _, f := range files {
		names = append(names, f.rel)
	}
	slices.Sort(names)
	return names
}

// In the current hour, small files are merged once there are
// CompactMinFiles of them.
func TestCompactOpenHour(t *testing.T) {
	cfg := testConfig(t)
	cfg.CompactMinFiles = 4
	now := baseTime.Add(10 * time.Minute)
	s, err := newSink(cfg, nil, nil, nil, func() time.Time { return now })
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	ctx := context.Background()

	recs := writeBatches(t, s, 3, 100, 1)
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if files := readLake(t, cfg.Dir); len(files) != 3 {
		t.Fatalf("3 small files merged: %d files left, want 3 (fewer than CompactMinFiles)", len(files))
	}
	recs = append(recs, writeBatches(t, s, 7, 100, 10_000)...)
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	files := readLake(t, cfg.Dir)
	if len(files) != 1 {
		t.Fatalf("%d files after compaction, want 1", len(files))
	}
	sameRows(t, allRows(files), expectedRows(t, recs))
	if got := testutil.ToFloat64(s.m.filesRemoved); got != 10 {
		t.Errorf("files removed = %v, want 10", got)
	}
	if got := testutil.ToFloat64(s.m.openPartitions); got != 1 {
		t.Errorf("uncompacted partitions = %v, want 1 (the hour is still open)", got)
	}
}

// Once the hour is closed, everything below the target size is merged,
// into files rolled at the target size, and a second pass changes nothing.
func TestCompactClosedHour(t *testing.T) {
	cfg := testConfig(t)
	const target = 48 << 10 // below what Validate allows, to keep the test small
	now := baseTime.Add(10 * time.Minute)
	open := func() *Sink {
		s, err := newSink(cfg, nil, nil, nil, func() time.Time { return now })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close(context.Background()) })
		s.cfg.TargetFileSize = target
		s.rowGroupRows = 2500 // roll checks every 2.5k rows (~15 KiB)
		return s
	}
	s := open()
	ctx := context.Background()

	// 30k rows, ~180 KiB: several target-size files.
	recs := writeBatches(t, s, 10, 3000, 1)
	if err := s.Compact(ctx); err != nil { // open: 10 < 32 files
		t.Fatal(err)
	}
	if n := len(readLake(t, cfg.Dir)); n != 10 {
		t.Fatalf("%d files, want the 10 written", n)
	}

	now = baseTime.Add(time.Hour + cfg.CompactGrace)
	if err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	files := readLake(t, cfg.Dir)
	if len(files) < 2 {
		t.Fatalf("%d files after closing the hour, want several of the target size", len(files))
	}
	small := 0
	for _, f := range files {
		if f.size < target {
			small++
		}
		t.Logf("%s: %d bytes, %d rows", f.rel, f.size, len(f.rows))
	}
	if small > 1 {
		t.Errorf("%d files below the target size, want at most 1", small)
	}
	sameRows(t, allRows(files), expectedRows(t, recs))
	if got := testutil.ToFloat64(s.m.openPartitions); got != 0 {
		t.Errorf("uncompacted partitions = %v, want 0", got)
	}

	// Idempotent: a new sink (a restart: it scans the lake) finds nothing
	// to do.
	s2 := open()
	if err := s2.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if again := readLake(t, cfg.Dir); !slices.Equal(fileNames(again), fileNames(files)) {
		t.Errorf("second pass rewrote files:\n%v\n%v", fileNames(files), fileNames(again))
	}

	// A late reading makes a small file; the next pass merges it with the
	// one file below the target, if there is one.
	late := makeRecords(10, 2, baseTime, time.Second, 1_000_000)
	if err := s2.Write(ctx, late); err != nil {
		t.Fatal(err)
	}
	if err := s2.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	after := readLake(t, cfg.Dir)
	if want := len(files) + 1 - small; len(after) != want {
		t.Errorf("%d files after merging a late one, want %d", len(after), want)
	}
	sameRows(t, allRows(after), expectedRows(t, append(recs, late...)))
}

// The background loop compacts on its own and stops at Close.
func TestCompactLoop(t *testing.T) {
	cfg := testConfig(t)
	cfg.CompactInterval = 5 * time.Millisecond
	cfg.CompactGrace = 0
	s := newTestSink(t, cfg)
	recs := writeBatches(t, s, 3, 50, 1)
	waitFor(t, 10*time.Second, "the loop to merge the files", func() bool {
		files, err := s.dest.list(context.Background(), "")
		return err == nil && len(files) == 1
	})
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	files := readLake(t, cfg.Dir)
	if len(files) != 1 {
		t.Fatalf("%d files, want 1", len(files))
	}
	sameRows(t, allRows(files), expectedRows(t, recs))
}

// Compaction leaves other writers' files alone.
func TestCompactOwnFilesOnly(t *testing.T) {
	cfg := testConfig(t)
	now := func() time.Time { return baseTime.Add(3 * time.Hour) }
	other := cfg
	other.Name = "w-1-other" // a name that starts like ours
	so, err := newSink(other, nil, nil, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	defer so.Close(context.Background())
	writeBatches(t, so, 3, 10, 1)
	s, err := newSink(cfg, nil, nil, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	writeBatches(t, s, 3, 10, 100)
	if err := s.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(readLake(t, cfg.Dir)); n != 4 {
		t.Fatalf("%d files, want 3 of the other writer and 1 merged", n)
	}
}

// The open-hour rule merges a merged file again only with about as much new
// data: sizes grow geometrically.
func TestPickOpen(t *testing.T) {
	files := func(sizes ...int64) []fileInfo {
		var fs []fileInfo
		for i, s := range sizes {
			fs = append(fs, fileInfo{name: string(rune('a' + i)), size: s})
		}
		return fs
	}
	cases := []struct {
		sizes []int64
		want  int // files picked, from the newest
	}{
		{[]int64{10, 10, 10}, 0},               // too few
		{[]int64{10, 11, 9, 10}, 4},            // similar sizes go together
		{[]int64{40, 10, 10, 10}, 0},           // 40 > 1.25 × 30: wait for more new data
		{[]int64{40, 10, 10, 10, 10}, 5},       // 40 ≤ 1.25 × 40: merged with it
		{[]int64{80, 40, 10, 10, 10, 10}, 6},   // then the next size up too
		{[]int64{160, 40, 10, 10, 10, 10}, 5},  // but not a much bigger one
		{[]int64{10, 10, 10, 10, 1000, 10}, 0}, // a big file blocks older small ones
		{[]int64{10, 10, 10, 10, 10, 1000}, 6}, // a big newest file takes all before it
		{[]int64{5, 5, 5, 5, 5, 5, 5, 5, 5, 5}, 10},
	}
	for _, c := range cases {
		got := pickOpen(files(c.sizes...), 4)
		if len(got) != c.want {
			t.Errorf("pickOpen(%v) picked %d files, want %d", c.sizes, len(got), c.want)
		}
		if len(got) > 0 && got[len(got)-1].name != string(rune('a'+len(c.sizes)-1)) {
			t.Errorf("pickOpen(%v) did not pick the newest files", c.sizes)
		}
	}
}
