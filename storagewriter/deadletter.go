package storagewriter

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// DeadLetter is one line of the dead-letter file: a record the sink refused
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

// deadLetter appends lines to DIR/NAME-dead-letter.jsonl and fsyncs them
// before the records are removed from the queue.
type deadLetter struct {
	dir, writer, sink string

	mu sync.Mutex
	f  *os.File
}

func newDeadLetter(dir, writer, sinkName string) *deadLetter {
	return &deadLetter{dir: dir, writer: writer, sink: sinkName}
}

// path is the dead-letter file.
func (d *deadLetter) path() string {
	return filepath.Join(d.dir, d.writer+"-dead-letter.jsonl")
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
	now := time.Now().UTC()
	for _, l := range lines {
		l.Time, l.Writer, l.Sink = now, d.writer, d.sink
		b, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("dead letter: encode: %w", err)
		}
		buf = append(append(buf, b...), '\n')
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		if err := os.MkdirAll(d.dir, 0o755); err != nil {
			return fmt.Errorf("dead letter: %w", err)
		}
		f, err := os.OpenFile(d.path(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("dead letter: %w", err)
		}
		if dir, err := os.Open(d.dir); err == nil {
			_ = dir.Sync()
			_ = dir.Close()
		}
		d.f = f
	}
	if _, err := d.f.Write(buf); err != nil {
		return fmt.Errorf("dead letter: write %s: %w", d.path(), err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("dead letter: sync %s: %w", d.path(), err)
	}
	return nil
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

// ReplayDeadLetters reads a dead-letter file from r and writes its records
// to s, batch records per write (at least 1), once the cause of the refusal
// is fixed (a field type changed in InfluxDB, a schema migrated). Lines
// without a record (undecodable entries) are skipped and counted. It stops
// at the first error: the sinks are idempotent, so the file can be replayed
// again from the start. It returns the records written and the lines
// skipped.
func ReplayDeadLetters(ctx context.Context, r io.Reader, s sink.Sink, batch int) (written, skipped int, err error) {
	batch = max(batch, 1)
	var recs []*telemetry.EnrichedRecord
	flush := func() error {
		if len(recs) == 0 {
			return nil
		}
		if err := s.Write(ctx, recs); err != nil {
			return fmt.Errorf("replay dead letters: write %d records: %w", len(recs), err)
		}
		written += len(recs)
		recs = recs[:0]
		return nil
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for line := 1; sc.Scan(); line++ {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var dl DeadLetter
		if err := json.Unmarshal(sc.Bytes(), &dl); err != nil {
			return written, skipped, fmt.Errorf("replay dead letters: line %d: %w", line, err)
		}
		if len(dl.Record) == 0 {
			skipped++
			continue
		}
		rec := new(telemetry.EnrichedRecord)
		if err := protojson.Unmarshal(dl.Record, rec); err != nil {
			return written, skipped, fmt.Errorf("replay dead letters: line %d: record: %w", line, err)
		}
		recs = append(recs, rec)
		if len(recs) >= batch {
			if err := flush(); err != nil {
				return written, skipped, err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return written, skipped, fmt.Errorf("replay dead letters: read: %w", err)
	}
	return written, skipped, flush()
}
