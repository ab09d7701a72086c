package storagewriter

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/telemetry"
)

// recentRecords returns n records of `devices` devices taken in the last
// minutes, sequences from firstSeq.
func recentRecords(n, devices int, firstSeq uint64) []*telemetry.EnrichedRecord {
	recs := makeRecords(n, devices, firstSeq)
	now := time.Now()
	for i, r := range recs {
		r.Record.Reading.TimeMs = now.Add(-time.Duration(i) * time.Second).UnixMilli()
	}
	return recs
}

// writeDeadLetterFile writes a dead-letter file of writer as the writer
// would, and returns its path.
func writeDeadLetterFile(t *testing.T, dir, writer string, recs []*telemetry.EnrichedRecord, extra ...string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var b []byte
	for _, r := range recs {
		js, err := protojson.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		line, err := json.Marshal(DeadLetter{Time: time.Now().UTC(), Writer: writer, Sink: SinkLake, Reason: "lake: test", Router: "router-x", Record: js})
		if err != nil {
			t.Fatal(err)
		}
		b = append(append(b, line...), '\n')
	}
	for _, e := range extra {
		b = append(b, e...)
	}
	path := filepath.Join(dir, dlFileName(writer, time.Now().Add(-time.Hour)))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// TestReplayInflux: records InfluxDB refused for good (older than the
// retention policy) are dead-lettered; a replay while the writer runs
// leaves the file it writes to; a replay before the cause is fixed moves
// them, refused again, to a new file; once the retention policy is fixed,
// the replay stores every one and removes the file.
func TestReplayInflux(t *testing.T) {
	ctx := context.Background()
	inf := testenv.InfluxD(t).WithDatabase(t, "replay")
	if _, err := inf.Exec(ctx, "", `CREATE RETENTION POLICY "short" ON "replay" DURATION 1h REPLICATION 1`); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rt := startFakeRouter(t, "router-r")
	cfg := testWriterConfig(dir, rt.addr)
	cfg.Sink = SinkInflux
	cfg.Influx.URL, cfg.Influx.Database, cfg.Influx.RetentionPolicy = inf.URL, inf.Database, "short"
	r := startWriter(t, cfg, nil)
	waitFor(t, 10*time.Second, "subscribe", func() bool { return rt.subscriber() == "influx" })

	recent := recentRecords(20, 4, 100)
	old := makeRecords(10, 2, 1) // March 2025: beyond the 1 h retention policy
	rt.deliver(1, entriesOf(t, "router-r", append(recent, old...), 10))
	waitFor(t, 30*time.Second, "the old records dead-lettered", func() bool { return r.metric(r.w.m.deadLettered) == float64(len(old)) })
	waitFor(t, 10*time.Second, "the recent ones written", func() bool { return r.metric(r.w.m.recordsWritten) == float64(len(recent)) })
	count := func() float64 {
		rows := inf.Query(t, `SELECT count(seq) FROM "short".telemetry`)
		if len(rows) == 0 {
			return 0
		}
		n, _ := testenv.Float(rows[0][1])
		return n
	}
	if n := count(); n != float64(len(recent)) {
		t.Fatalf("InfluxDB holds %v points, want %d", n, len(recent))
	}

	// While the writer runs, the file it appends to is left alone.
	rep, err := Replay(ctx, cfg, ReplayOptions{RetryFor: time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Files) != 1 || rep.Files[0].Skipped == "" || rep.Done() {
		t.Fatalf("replay while the writer appends: %+v, want its file skipped", rep)
	}
	r.shutdown(t)

	// Not fixed yet: refused again, moved to a new file with the reason.
	rep, err = Replay(ctx, cfg, ReplayOptions{RetryFor: time.Second}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Files) != 1 || rep.Files[0].Records != len(old) || rep.Files[0].RefusedAgain != len(old) ||
		rep.Files[0].Written != 0 || !rep.Files[0].Removed || len(rep.NewFiles) != 1 || rep.Done() {
		t.Fatalf("replay before the fix: %+v", rep)
	}
	b, err := os.ReadFile(rep.NewFiles[0])
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "\n"); n != len(old) || !strings.Contains(string(b), "retention policy") {
		t.Fatalf("new dead-letter file: %d lines, want %d with the new reason:\n%.300s", n, len(old), b)
	}

	// The cause fixed: every record lands, the file goes.
	if _, err := inf.Exec(ctx, "", `ALTER RETENTION POLICY "short" ON "replay" DURATION INF`); err != nil {
		t.Fatal(err)
	}
	rep, err = Replay(ctx, cfg, ReplayOptions{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Files) != 1 || rep.Files[0].Written != len(old) || !rep.Files[0].Removed || len(rep.NewFiles) != 0 || !rep.Done() {
		t.Fatalf("replay after the fix: %+v", rep)
	}
	if n := count(); n != float64(len(recent)+len(old)) {
		t.Errorf("InfluxDB holds %v points after the replay, want %d", n, len(recent)+len(old))
	}
	if left, _ := listDeadLetters(cfg.deadLetterDir(), "influx"); len(left) != 0 {
		t.Errorf("dead-letter files left: %v", left)
	}
	// Nothing left: nothing to do.
	if rep, err = Replay(ctx, cfg, ReplayOptions{}, testLogger(t)); err != nil || len(rep.Files) != 0 || !rep.Done() {
		t.Errorf("replay of nothing: %+v, %v", rep, err)
	}
}

// TestReplayInfluxDown: a sink that stays down past RetryFor stops the
// replay with an error and leaves the files.
func TestReplayInfluxDown(t *testing.T) {
	dir := t.TempDir()
	cfg := testWriterConfig(dir, "tcp://127.0.0.1:1")
	cfg.Sink = SinkInflux
	cfg.Influx.URL = "http://127.0.0.1:1" // nothing listens: connection refused
	dlDir := cfg.deadLetterDir()
	a := writeDeadLetterFile(t, dlDir, "influx", recentRecords(3, 1, 1))
	rep, err := Replay(context.Background(), cfg, ReplayOptions{RetryFor: 300 * time.Millisecond}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "giving up") {
		t.Fatalf("Replay = %v, want giving up on the sink", err)
	}
	if len(rep.Files) != 1 || rep.Files[0].Err == nil || rep.Files[0].Removed || rep.Done() {
		t.Fatalf("report %+v", rep)
	}
	if _, err := os.Stat(a); err != nil {
		t.Errorf("the file was not kept: %v", err)
	}
}

// TestReplayLake: a replay into the real lake writes the records it can,
// moves the one the lake still refuses and an undecodable entry to a new
// file, and with Keep leaves the original.
func TestReplayLake(t *testing.T) {
	dir := t.TempDir()
	cfg := testWriterConfig(dir, "tcp://127.0.0.1:1")
	recs := makeRecords(12, 3, 1)
	recs[5].Record.Reading.Seq = math.MaxUint64 // the lake's seq is an int64: refused for good
	entry, _ := json.Marshal(DeadLetter{Writer: "lake", Sink: SinkLake, Reason: "undecodable entry", Entry: "AAEC"})
	path := writeDeadLetterFile(t, cfg.deadLetterDir(), "lake", recs, string(entry)+"\n", `{"time":"2026-12-06T`)
	rep, err := Replay(context.Background(), cfg, ReplayOptions{Keep: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	f := rep.Files[0]
	if len(rep.Files) != 1 || f.Records != 12 || f.Written != 11 || f.RefusedAgain != 1 || f.CarriedOver != 1 || f.Torn != 1 || f.Removed {
		t.Fatalf("report %+v", f)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("Keep: the file is gone: %v", err)
	}
	keys := rowKeys(readLake(t, cfg.Lake.Dir))
	for i, r := range recs {
		if want := i != 5; (keys[recKey(r)] == 1) != want {
			t.Errorf("record %s in the lake %d times", recKey(r), keys[recKey(r)])
		}
	}
	if len(rep.NewFiles) != 1 {
		t.Fatalf("new files %v, want one", rep.NewFiles)
	}
	b, _ := os.ReadFile(rep.NewFiles[0])
	if !strings.Contains(string(b), string(entry)) || strings.Count(string(b), "\n") != 2 {
		t.Errorf("new dead-letter file, want the refused record and the entry as it was:\n%s", b)
	}
	files, _ := filepath.Glob(filepath.Join(cfg.Lake.Dir, "date=*", "hour=*", "lake-replay-*.parquet"))
	if len(files) == 0 {
		t.Error("no lake file named lake-replay-*: the replay's sink must not share the writer's name")
	}
}
