package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/drover-telemetry/drover/storagewriter"
	"github.com/drover-telemetry/drover/storagewriter/lake"
	"github.com/drover-telemetry/drover/telemetry"
)

// deadLetterLines returns n dead-letter lines of writer, as the writer
// writes them, for devices replay-0 and replay-1.
func deadLetterLines(t *testing.T, writer string, n int) []byte {
	t.Helper()
	var b []byte
	base := time.Now().Add(-time.Hour)
	for i := range n {
		r := &telemetry.Reading{Seq: uint64(i + 1), TimeMs: base.Add(time.Duration(i) * time.Second).UnixMilli()}
		r.SetPosition(45.5, -73.6)
		rec := &telemetry.EnrichedRecord{
			Record:     &telemetry.Record{DeviceId: fmt.Sprintf("replay-%d", i%2), ReceivedMs: base.UnixMilli(), Reading: r},
			Enrichment: &telemetry.Enrichment{Fleet: "north"},
		}
		js, err := protojson.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		line, err := json.Marshal(storagewriter.DeadLetter{Time: time.Now().UTC(), Writer: writer, Sink: "lake",
			Reason: "lake: schema being migrated", Router: "router-0", Record: js})
		if err != nil {
			t.Fatal(err)
		}
		b = append(append(b, line...), '\n')
	}
	return b
}

// lakeKeys returns the device/seq keys of the rows of every Parquet file
// under dir whose name starts with prefix.
func lakeKeys(t *testing.T, dir, prefix string) map[string]int {
	t.Helper()
	keys := map[string]int{}
	files, _ := filepath.Glob(filepath.Join(dir, "date=*", "hour=*", prefix+"*.parquet"))
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := f.Stat()
		pf, err := parquet.OpenFile(f, st.Size())
		if err != nil {
			t.Fatal(err)
		}
		rd := parquet.NewGenericReader[lake.Row](pf)
		rows := make([]lake.Row, pf.NumRows())
		n, err := rd.Read(rows)
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		for _, r := range rows[:n] {
			keys[fmt.Sprintf("%s/%d", r.DeviceID, r.Seq)]++
		}
		rd.Close()
		f.Close()
	}
	return keys
}

// TestReplayCommand runs drover storage-writer replay on a lake writer's
// dead-letter folder: the records land in the lake, the file goes, the
// report says so and the exit status is 0; a file with a line that holds
// no record leaves it in a new file and exits 1.
func TestReplayCommand(t *testing.T) {
	dir := t.TempDir()
	dl := filepath.Join(dir, "queue", "dead-letter")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dl, "lake-dead-letter-20261206T100000.000000000Z.jsonl")
	if err := os.WriteFile(file, deadLetterLines(t, "lake", 6), 0o644); err != nil {
		t.Fatal(err)
	}
	lakeDir := filepath.Join(dir, "lake")
	args := []string{"storage-writer", "replay", "-sink", "lake", "-queue-dir", filepath.Join(dir, "queue"), "-lake-dir", lakeDir}
	r := runDrover(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("replay: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"replayed " + file + ": 6 records: 6 written, 0 refused again; removed", "1 files: 6 records written", "done"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("report lacks %q:\n%s", want, r.stdout)
		}
	}
	if _, err := os.Stat(file); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("replayed file still there: %v", err)
	}
	keys := lakeKeys(t, lakeDir, "lake-replay-")
	for i := range 6 {
		if k := fmt.Sprintf("replay-%d/%d", i%2, i+1); keys[k] != 1 {
			t.Errorf("row %s in the lake %d times, want 1 (rows: %v)", k, keys[k], keys)
		}
	}

	// A line without a record cannot be replayed: carried over, exit 1.
	entry := `{"time":"2026-12-06T10:00:00Z","writer":"lake","sink":"lake","reason":"undecodable entry","entry_base64":"AAEC"}` + "\n"
	if err := os.WriteFile(file, append(deadLetterLines(t, "lake", 2), entry...), 0o644); err != nil {
		t.Fatal(err)
	}
	r = runDrover(t, nil, args...)
	if r.code != 1 || !strings.Contains(r.stdout, "1 lines without a record carried over") || !strings.Contains(r.stdout, "new dead-letter file") {
		t.Fatalf("replay with an undecodable entry: exit %d, want 1 and the line carried over\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	left, _ := filepath.Glob(filepath.Join(dl, "lake-dead-letter-*.jsonl"))
	if len(left) != 1 {
		t.Fatalf("dead-letter files after the replay: %v, want the new one", left)
	}
	if b, _ := os.ReadFile(left[0]); string(b) != entry {
		t.Errorf("new dead-letter file holds %q, want the entry as it was", b)
	}

	// A bad flag is a usage error.
	if r := runDrover(t, nil, "storage-writer", "replay", "-sink", "postgres"); r.code != 2 {
		t.Errorf("replay -sink postgres: exit %d, want 2", r.code)
	}
}
