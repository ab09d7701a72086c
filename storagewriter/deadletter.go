package storagewriter

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/drover-telemetry/drover/internal/atomicfile"
	"github.com/drover-telemetry/drover/telemetry"
)

// DeadLetter is one line of a dead-letter file: a record the sink refused
// for good, or a queue entry that is not a PublishBatch.
type DeadLetter struct {
	// Time is when the writer gave up on it (RFC 3339, UTC).
	Time time.Time `json:"time"`
	// Writer and Sink name the writer that wrote the line.
	Writer string `json:"writer"`
	Sink   string `json:"sink"`
	// Reason is the sink's (or the decoder's) error.
	Reason string `json:"reason"`
	// Router is the ID of the router the record came through.
	Router string `json:"router,omitempty"`
	// Record is the telemetry.EnrichedRecord as protojson.
	Record json.RawMessage `json:"record,omitempty"`
	// Entry is a raw queue entry that could not be decoded, base64.
	Entry string `json:"entry_base64,omitempty"`
}

// Dead-letter file names: NAME-dead-letter-<UTC time the file was opened,
// to the nanosecond>.jsonl, so that names sort in creation order. Writers
// before rotation used NAME-dead-letter.jsonl, which still counts (as the
// oldest file).
const (
	dlInfix      = "-dead-letter"
	dlExt        = ".jsonl"
	dlTimeLayout = "20060102T150405.000000000Z"
)

// dlFile is one dead-letter file of a writer.
type dlFile struct {
	path   string
	opened time.Time // from the name; the legacy file's modification time
	bytes  int64
	mtime  time.Time
}

// dlFileName returns the name of a file opened at t.
func dlFileName(writer string, t time.Time) string {
	return writer + dlInfix + "-" + t.UTC().Format(dlTimeLayout) + dlExt
}

// parseDLFileName reports whether name is a dead-letter file of writer and
// when it was opened (zero for the legacy name). The time must parse in
// full, so that writer "lake" does not claim the files of writer
// "lake-dead-letter-x".
func parseDLFileName(name, writer string) (opened time.Time, legacy, ok bool) {
	rest, found := strings.CutPrefix(name, writer+dlInfix)
	if !found {
		return time.Time{}, false, false
	}
	if rest == dlExt {
		return time.Time{}, true, true
	}
	stamp, found := strings.CutPrefix(rest, "-")
	if !found {
		return time.Time{}, false, false
	}
	stamp, found = strings.CutSuffix(stamp, dlExt)
	if !found || len(stamp) != len(dlTimeLayout) {
		return time.Time{}, false, false
	}
	t, err := time.Parse(dlTimeLayout, stamp)
	if err != nil {
		return time.Time{}, false, false
	}
	return t, false, true
}

// listDeadLetters returns writer's dead-letter files in dir, oldest first.
// A missing dir has none.
func listDeadLetters(dir, writer string) ([]dlFile, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list dead-letter files: %w", err)
	}
	var files []dlFile
	for _, e := range ents {
		opened, legacy, ok := parseDLFileName(e.Name(), writer)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed meanwhile (a replay)
			}
			return nil, fmt.Errorf("list dead-letter files: %w", err)
		}
		if legacy {
			opened = time.Time{} // before every rotated file
		}
		files = append(files, dlFile{path: filepath.Join(dir, e.Name()), opened: opened, bytes: info.Size(), mtime: info.ModTime()})
	}
	slices.SortFunc(files, func(a, b dlFile) int { return a.opened.Compare(b.opened) })
	return files, nil
}

// lockFile takes an exclusive advisory lock on f without waiting: the
// writer holds one on the file it appends to, a replay on the file it
// replays, so that neither removes a file the other is using.
func lockFile(f *os.File) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return errFileInUse
		}
		return fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return nil
}

// errFileInUse: another process holds the file's lock.
var errFileInUse = errors.New("in use by another process (a running writer appends to it, or a replay reads it)")

// countLines counts the lines of the file at path (its records), for the
// metrics of a dropped file.
func countLines(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	n := 0
	for {
		k, err := f.Read(buf)
		n += bytes.Count(buf[:k], []byte{'\n'})
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// deadLetterLimits are the dead-letter store's bounds (see Config).
type deadLetterLimits struct {
	fileBytes int64
	fileAge   time.Duration
	maxBytes  int64         // 0: no bound
	maxAge    time.Duration // 0: keep
}

// deadLetter is a writer's dead-letter store: JSON lines appended and
// fsynced to the newest of a series of files in dir, before the records
// leave the queue. A file is closed and a new one started when it reaches
// fileBytes or fileAge (and at every start of the writer), so that closed
// files can be replayed, moved or removed while the writer runs. The oldest
// closed files are removed only past maxBytes or maxAge, when set; each
// removal is logged and counted with the lines and bytes it drops.
type deadLetter struct {
	dir, writer, sink string
	lim               deadLetterLimits
	logger            *slog.Logger
	m                 *metrics
	now               func() time.Time

	// quiet: no warning at open about the files waiting (a replay).
	quiet bool

	mu      sync.Mutex
	loaded  bool
	files   []dlFile // every file, oldest first; the open one last
	f       *os.File // the open file, or nil
	created []string // the files this store created
}

func newDeadLetter(dir, writer, sinkName string, lim deadLetterLimits, logger *slog.Logger, m *metrics) *deadLetter {
	return &deadLetter{dir: dir, writer: writer, sink: sinkName, lim: lim, logger: logger, m: m, now: time.Now}
}

// open lists the files that are there, sets the gauges and applies the
// bounds. Writing calls it when it was not called.
func (d *deadLetter) open() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.loadLocked()
}

func (d *deadLetter) loadLocked() error {
	if d.loaded {
		return nil
	}
	files, err := listDeadLetters(d.dir, d.writer)
	if err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	d.files, d.loaded = files, true
	if len(files) > 0 && !d.quiet {
		var held int64
		for _, f := range files {
			held += f.bytes
		}
		d.logger.Warn("storage-writer: dead letters are waiting to be replayed or removed (drover storage-writer replay)",
			"files", len(files), "bytes", held, "folder", d.dir)
	}
	d.pruneLocked()
	return nil
}

// writeRecord dead-letters one record.
func (d *deadLetter) writeRecord(router, reason string, rec *telemetry.EnrichedRecord) error {
	js, err := protojson.Marshal(rec)
	if err != nil {
		return fmt.Errorf("dead letter: encode record: %w", err)
	}
	return d.write(DeadLetter{Router: router, Reason: reason, Record: js})
}

// writeEntries dead-letters raw queue entries.
func (d *deadLetter) writeEntries(router, reason string, entries [][]byte) error {
	lines := make([]DeadLetter, len(entries))
	for i, e := range entries {
		lines[i] = DeadLetter{Router: router, Reason: reason, Entry: base64.StdEncoding.EncodeToString(e)}
	}
	return d.write(lines...)
}

func (d *deadLetter) write(lines ...DeadLetter) error {
	var buf []byte
	now := d.now().UTC()
	for _, l := range lines {
		l.Time, l.Writer, l.Sink = now, d.writer, d.sink
		b, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("dead letter: encode: %w", err)
		}
		buf = append(append(buf, b...), '\n')
	}
	return d.append(buf)
}

// writeRaw appends lines as they are (each ending in '\n'): lines a replay
// carries over to a new file.
func (d *deadLetter) writeRaw(lines []byte) error { return d.append(lines) }

// append writes buf to the open file, starting a new one first when due,
// and fsyncs it.
func (d *deadLetter) append(buf []byte) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.loadLocked(); err != nil {
		return err
	}
	if d.f != nil {
		cur := d.files[len(d.files)-1]
		if cur.bytes >= d.lim.fileBytes || d.now().Sub(cur.opened) >= d.lim.fileAge {
			d.closeLocked()
		}
	}
	if d.f == nil {
		if err := d.startLocked(); err != nil {
			return err
		}
	}
	cur := &d.files[len(d.files)-1]
	if _, err := d.f.Write(buf); err != nil {
		// What part of buf reached the file is unknown: start afresh
		// with the next write (the records stay queued meanwhile).
		d.closeLocked()
		return fmt.Errorf("dead letter: write %s: %w", cur.path, err)
	}
	cur.bytes += int64(len(buf))
	if err := d.f.Sync(); err != nil {
		d.closeLocked()
		return fmt.Errorf("dead letter: fsync %s: %w", cur.path, err)
	}
	cur.mtime = d.now()
	d.m.deadLetteredBytes.Add(float64(len(buf)))
	d.pruneLocked()
	return nil
}

// startLocked creates and locks a new file and makes its name durable.
func (d *deadLetter) startLocked() error {
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	opened := d.now().UTC()
	if n := len(d.files); n > 0 && !opened.After(d.files[n-1].opened) {
		opened = d.files[n-1].opened.Add(time.Nanosecond) // names sort in creation order
	}
	path := filepath.Join(d.dir, dlFileName(d.writer, opened))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("dead letter: %w", err)
	}
	if err := lockFile(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("dead letter: %w", err)
	}
	if err := atomicfile.SyncDir(d.dir); err != nil {
		_ = f.Close()
		return fmt.Errorf("dead letter: %w", err)
	}
	d.f = f
	d.files = append(d.files, dlFile{path: path, opened: opened, mtime: opened})
	d.created = append(d.created, path)
	d.logger.Info("storage-writer: new dead-letter file", "file", path)
	return nil
}

func (d *deadLetter) closeLocked() {
	if d.f == nil {
		return
	}
	if err := d.f.Close(); err != nil {
		d.logger.Warn("storage-writer: close dead-letter file", "file", d.f.Name(), "err", err)
	}
	d.f = nil
}

// maintain closes the open file once it is older than fileAge (so that it
// can be replayed without waiting for the next dead letter) and applies the
// bounds. The writer calls it every minute.
func (d *deadLetter) maintain() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.loaded {
		return
	}
	if d.f != nil && d.now().Sub(d.files[len(d.files)-1].opened) >= d.lim.fileAge {
		d.closeLocked()
	}
	// Files removed by a replay meanwhile no longer count.
	kept := d.files[:0]
	for i, f := range d.files {
		if d.f != nil && i == len(d.files)-1 {
			kept = append(kept, f)
			continue
		}
		if _, err := os.Stat(f.path); errors.Is(err, os.ErrNotExist) {
			continue
		}
		kept = append(kept, f)
	}
	d.files = kept
	d.pruneLocked()
}

// pruneLocked removes the oldest closed files while the store is over
// maxBytes, and closed files last written more than maxAge ago, and sets
// the gauges.
func (d *deadLetter) pruneLocked() {
	defer d.setGaugesLocked()
	if d.lim.maxBytes <= 0 && d.lim.maxAge <= 0 {
		return
	}
	now := d.now()
	closed := len(d.files)
	if d.f != nil {
		closed-- // the open file is never removed
	}
	held := d.heldLocked()
	for i := 0; i < closed; i++ {
		f := d.files[i]
		why := ""
		switch {
		case d.lim.maxBytes > 0 && held > d.lim.maxBytes:
			why = "the store is over -dead-letter-max-bytes"
		case d.lim.maxAge > 0 && now.Sub(f.mtime) > d.lim.maxAge:
			why = "the file is older than -dead-letter-max-age"
		default:
			continue
		}
		if err := d.dropLocked(f, why); err != nil {
			d.logger.Error("storage-writer: cannot remove a dead-letter file past its bound", "file", f.path, "err", err)
			continue
		}
		held -= f.bytes
		d.files = slices.Delete(d.files, i, i+1)
		i--
		closed--
	}
}

// dropLocked removes one closed file, counting and logging what it drops.
func (d *deadLetter) dropLocked(f dlFile, why string) error {
	h, err := os.Open(f.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // a replay took it
	}
	if err != nil {
		return err
	}
	defer h.Close()
	if err := lockFile(h); err != nil {
		return err
	}
	lines, err := countLines(f.path)
	if err != nil {
		return fmt.Errorf("count its records: %w", err)
	}
	if err := os.Remove(f.path); err != nil {
		return err
	}
	if err := atomicfile.SyncDir(d.dir); err != nil {
		d.logger.Warn("storage-writer: fsync dead-letter folder", "err", err)
	}
	d.m.dlDroppedFiles.Inc()
	d.m.dlDroppedRecords.Add(float64(lines))
	d.m.dlDroppedBytes.Add(float64(f.bytes))
	d.logger.Warn("storage-writer: dead letters dropped: "+why, "file", f.path, "records", lines, "bytes", f.bytes,
		"max_bytes", d.lim.maxBytes, "max_age", d.lim.maxAge)
	return nil
}

func (d *deadLetter) heldLocked() int64 {
	var n int64
	for _, f := range d.files {
		n += f.bytes
	}
	return n
}

func (d *deadLetter) setGaugesLocked() {
	d.m.dlFiles.Set(float64(len(d.files)))
	d.m.dlBytes.Set(float64(d.heldLocked()))
}

// current returns the path of the open file, "" when none is.
func (d *deadLetter) current() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return ""
	}
	return d.f.Name()
}

// createdFiles returns the files this store created (a replay reports
// where the lines it could not replay went).
func (d *deadLetter) createdFiles() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.created)
}

// path names the store in logs: the open file, or the folder.
func (d *deadLetter) path() string {
	if p := d.current(); p != "" {
		return p
	}
	return d.dir
}

func (d *deadLetter) close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		return nil
	}
	err := d.f.Close()
	d.f = nil
	return err
}
