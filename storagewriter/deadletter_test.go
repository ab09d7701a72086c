package storagewriter

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// dlClock is a settable clock for the dead-letter store.
type dlClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *dlClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *dlClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuf is a log destination tests can read while the store writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) count(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), substr)
}

// testDeadLetter returns a store of writer "influx" in dir with lim, its
// metrics, clock and log.
func testDeadLetter(t *testing.T, dir string, lim deadLetterLimits) (*deadLetter, *metrics, *dlClock, *syncBuf) {
	t.Helper()
	m := newMetrics()
	logs := &syncBuf{}
	d := newDeadLetter(dir, "influx", SinkInflux, lim, slog.New(slog.NewTextHandler(logs, nil)), m)
	clk := &dlClock{t: time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)}
	d.now = clk.now
	t.Cleanup(func() { d.close() })
	return d, m, clk, logs
}

// writeN dead-letters n records, one write each.
func writeN(t *testing.T, d *deadLetter, n int) {
	t.Helper()
	for i, rec := range makeRecords(n, 3, 1) {
		if err := d.writeRecord("router-0", "HTTP 400: partial write: points beyond retention policy dropped=1", rec); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
}

// linesIn counts the lines of every dead-letter file of writer influx.
func linesIn(t *testing.T, dir string) (files, lines int) {
	t.Helper()
	found, err := listDeadLetters(dir, "influx")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range found {
		n, err := countLines(f.path)
		if err != nil {
			t.Fatal(err)
		}
		lines += n
	}
	return len(found), lines
}

func TestDeadLetterFileNames(t *testing.T) {
	at := time.Date(2026, 12, 6, 16, 24, 0, 123456789, time.UTC)
	name := dlFileName("lake", at)
	if name != "lake-dead-letter-20261206T162400.123456789Z.jsonl" {
		t.Fatalf("name %q", name)
	}
	for _, tc := range []struct {
		name, writer string
		ok, legacy   bool
	}{
		{name, "lake", true, false},
		{"lake-dead-letter.jsonl", "lake", true, true},
		{name, "lake-2", false, false},
		{dlFileName("lake-2", at), "lake", false, false},
		{dlFileName("lake-dead-letter-x", at), "lake", false, false},
		{"lake-dead-letter-20261206T162400Z.jsonl", "lake", false, false},
		{name + ".tmp", "lake", false, false},
	} {
		opened, legacy, ok := parseDLFileName(tc.name, tc.writer)
		if ok != tc.ok || legacy != tc.legacy || (ok && !legacy && !opened.Equal(at)) {
			t.Errorf("parse %q for writer %q: %v, legacy %v, ok %v", tc.name, tc.writer, opened, legacy, ok)
		}
	}
}

// TestDeadLetterRotates: a file is closed past its size or age and a new
// one started; a restarted store never appends to an old file; nothing is
// removed without a bound.
func TestDeadLetterRotates(t *testing.T) {
	dir := t.TempDir()
	lim := deadLetterLimits{fileBytes: 4 << 10, fileAge: time.Hour}
	d, m, clk, _ := testDeadLetter(t, dir, lim)
	writeN(t, d, 40) // ~600 bytes each: several files
	files, err := listDeadLetters(dir, "influx")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 4 {
		t.Fatalf("%d files after 40 dead letters of ~600 bytes with 4 KiB files, want at least 4", len(files))
	}
	for i, f := range files[:len(files)-1] {
		if f.bytes < lim.fileBytes || f.bytes > lim.fileBytes+1<<10 {
			t.Errorf("closed file %d holds %d bytes, want about %d", i, f.bytes, lim.fileBytes)
		}
	}
	if n, lines := linesIn(t, dir); lines != 40 {
		t.Fatalf("%d lines in %d files, want 40", lines, n)
	}
	if got := testutil.ToFloat64(m.dlFiles); got != float64(len(files)) {
		t.Errorf("dead_letter_files = %v, want %d", got, len(files))
	}
	var held int64
	for _, f := range files {
		held += f.bytes
	}
	if got := testutil.ToFloat64(m.dlBytes); got != float64(held) {
		t.Errorf("dead_letter_bytes = %v, want %d", got, held)
	}
	if got := testutil.ToFloat64(m.deadLetteredBytes); got != float64(held) {
		t.Errorf("dead_lettered_bytes_total = %v, want %d", got, held)
	}

	// Past its age the open file is closed by maintenance, and the next
	// dead letter goes to a new file.
	open := d.current()
	clk.advance(time.Hour + time.Second)
	d.maintain()
	if d.current() != "" {
		t.Fatalf("file %s still open an hour later", open)
	}
	writeN(t, d, 1)
	if d.current() == open || d.current() == "" {
		t.Fatalf("wrote to %q after the age rotation, want a new file", d.current())
	}

	// A restart lists what is there and starts a new file.
	before := len(files) + 1
	d.close()
	d2, m2, _, logs := testDeadLetter(t, dir, lim)
	if err := d2.open(); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m2.dlFiles); got != float64(before) {
		t.Errorf("dead_letter_files after a restart = %v, want %d", got, before)
	}
	if logs.count("dead letters are waiting") != 1 {
		t.Errorf("no warning about the dead letters waiting at start")
	}
	writeN(t, d2, 1)
	if n, lines := linesIn(t, dir); n != before+1 || lines != 42 {
		t.Errorf("after a restart: %d files, %d lines; want %d, 42", n, lines, before+1)
	}
	if got := testutil.ToFloat64(m2.dlDroppedFiles) + testutil.ToFloat64(m.dlDroppedFiles); got != 0 {
		t.Errorf("files dropped without a bound: %v", got)
	}
}

// TestDeadLetterBoundsDropCounted: past -dead-letter-max-bytes the oldest
// files go, each logged and counted with its records; the open file and a
// file a replay holds are never removed; past -dead-letter-max-age, old
// files go too.
func TestDeadLetterBoundsDropCounted(t *testing.T) {
	dir := t.TempDir()
	lim := deadLetterLimits{fileBytes: 4 << 10, fileAge: time.Hour, maxBytes: 12 << 10}
	d, m, clk, logs := testDeadLetter(t, dir, lim)
	writeN(t, d, 100)
	files, lines := linesIn(t, dir)
	if got := testutil.ToFloat64(m.dlBytes); got > float64(lim.maxBytes) {
		t.Errorf("dead_letter_bytes = %v past the bound %d", got, lim.maxBytes)
	}
	dropped := testutil.ToFloat64(m.dlDroppedRecords)
	if dropped == 0 || int(dropped)+lines != 100 {
		t.Fatalf("%d lines kept, %v counted dropped: want them to add up to the 100 written", lines, dropped)
	}
	droppedFiles := int(testutil.ToFloat64(m.dlDroppedFiles))
	if n := logs.count("dead letters dropped"); n != droppedFiles || n == 0 {
		t.Errorf("%d log lines for %d files dropped", n, droppedFiles)
	}
	if testutil.ToFloat64(m.dlDroppedBytes) == 0 {
		t.Error("dropped bytes not counted")
	}
	if got := testutil.ToFloat64(m.dlFiles); got != float64(files) {
		t.Errorf("dead_letter_files = %v, %d on disk", got, files)
	}

	// A file a replay holds stays, however old or over the bound.
	all, _ := listDeadLetters(dir, "influx")
	oldest, err := os.Open(all[0].path)
	if err != nil {
		t.Fatal(err)
	}
	if err := lockFile(oldest); err != nil {
		t.Fatal(err)
	}
	d.lim.maxAge = time.Hour
	clk.advance(2 * time.Hour)
	d.maintain()
	if _, err := os.Stat(all[0].path); err != nil {
		t.Fatalf("a file held by a replay was removed: %v", err)
	}
	for _, f := range all[1:] {
		if _, err := os.Stat(f.path); err == nil && f.path != d.current() {
			t.Errorf("%s, last written 2 h ago, kept past a max age of 1 h", filepath.Base(f.path))
		}
	}
	oldest.Close()
	d.maintain()
	if _, err := os.Stat(all[0].path); err == nil {
		t.Error("the oldest file stayed once released")
	}
	if got, _ := linesIn(t, dir); got != 0 {
		t.Errorf("%d files left after every one aged out", got)
	}
	if got := testutil.ToFloat64(m.dlDroppedRecords); got != 100 {
		t.Errorf("dropped records %v after everything aged out, want 100", got)
	}
}
