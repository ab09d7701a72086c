package alerts

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/atomicfile"
)

// The outbox is the engine's durable log of alert events: the evaluator
// appends, each output (webhooks, InfluxDB, the lake, the API, the alert
// lane) reads it from its own cursor. It is not a queue.Queue: that has
// one consumer and removes what it acks; here several outputs read the
// same events at their own pace, and a segment goes only when every
// durable cursor is past it.
//
// Layout: DIR/NNNNNNNNNNNNNNNNNNNN.log (20-digit number of the segment's
// first record), DIR/cursors/NAME (the record seq an output has done).
// Record framing: length (uint32 LE) of the payload, CRC-32C of the
// payload (uint32 LE), payload (JSON of outRecord). A torn last record (a
// crash mid-append) is cut at open; nothing after it was ever handed out.
type outbox struct {
	dir      string
	logger   *slog.Logger
	segBytes int64
	maxBytes int64

	mu      sync.Mutex
	f       *os.File // the segment being appended to
	w       *bufio.Writer
	segs    []outSeg // oldest first; the last is f
	next    uint64   // seq of the next record
	lastIn  uint64   // input seq of the last record (0: none)
	bytes   int64    // bytes of every segment
	wake    chan struct{}
	cursors map[string]*cursor
	closed  bool
	// overflow is told how many records were removed past maxBytes.
	overflow func(n uint64)
}

// outSeg is one segment file.
type outSeg struct {
	first uint64 // seq of its first record
	path  string
	size  int64
}

// outRecord is one append: the events of one evaluated batch of input
// entries, with the seq of the last input entry they came from.
type outRecord struct {
	Seq    uint64       `json:"seq"`
	In     uint64       `json:"in"`
	Events []eval.Event `json:"events"`
}

// cursor is an output's position: the seq of the last record it is done
// with. A durable cursor is saved and holds segments; an ephemeral one
// (the alert lane) starts at the end and holds nothing.
type cursor struct {
	name    string
	durable bool
	done    uint64
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

const (
	outSegBytes = 8 << 20
	maxRecord   = 64 << 20
)

// openOutbox opens (or creates) the outbox in dir, cutting a torn tail.
func openOutbox(dir string, maxBytes int64, logger *slog.Logger) (*outbox, error) {
	if err := os.MkdirAll(filepath.Join(dir, "cursors"), 0o755); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	o := &outbox{dir: dir, logger: logger, segBytes: outSegBytes, maxBytes: maxBytes, next: 1,
		wake: make(chan struct{}), cursors: map[string]*cursor{}}
	names, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	slices.Sort(names)
	for _, p := range names {
		first, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(p), ".log"), 10, 64)
		if err != nil {
			continue
		}
		o.segs = append(o.segs, outSeg{first: first, path: p})
	}
	// Scan the last segment: its end is where appends go on; the segments
	// before it were closed whole.
	for i := range o.segs {
		st, err := os.Stat(o.segs[i].path)
		if err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
		o.segs[i].size = st.Size()
		o.bytes += st.Size()
	}
	if n := len(o.segs); n > 0 {
		last := &o.segs[n-1]
		end, rec, count, err := scanSegment(last.path)
		if err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
		if end < last.size {
			logger.Warn("alerts: outbox: cutting a torn record at the end of the log (a crash in the middle of an append)",
				"segment", last.path, "at", end, "size", last.size)
			if err := os.Truncate(last.path, end); err != nil {
				return nil, fmt.Errorf("outbox: cut torn tail: %w", err)
			}
			o.bytes -= last.size - end
			last.size = end
		}
		o.next = last.first + count
		if rec != nil {
			o.lastIn = rec.In
		} else if n > 1 {
			// An empty last segment: the previous one has the last record.
			if _, prev, _, err := scanSegment(o.segs[n-2].path); err == nil && prev != nil {
				o.lastIn = prev.In
			}
		}
	}
	if err := o.openAppend(); err != nil {
		return nil, err
	}
	return o, nil
}

// scanSegment reads a segment's records, returning where the last whole
// one ends, that record, and how many there are.
func scanSegment(path string) (end int64, last *outRecord, n uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, 0, err
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var hdr [8]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return end, last, n, nil
		}
		size := binary.LittleEndian.Uint32(hdr[:4])
		if size > maxRecord {
			return end, last, n, nil
		}
		body := make([]byte, size)
		if _, err := io.ReadFull(r, body); err != nil || crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(hdr[4:]) {
			return end, last, n, nil
		}
		var rec outRecord
		if err := json.Unmarshal(body, &rec); err != nil {
			return end, last, n, nil
		}
		end += 8 + int64(size)
		last = &rec
		n++
	}
}

func (o *outbox) openAppend() error {
	if len(o.segs) == 0 || o.segs[len(o.segs)-1].size >= o.segBytes {
		p := filepath.Join(o.dir, fmt.Sprintf("%020d.log", o.next))
		o.segs = append(o.segs, outSeg{first: o.next, path: p})
		if err := atomicfile.SyncDir(o.dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			o.logger.Warn("alerts: outbox: sync folder", "err", err)
		}
	}
	last := o.segs[len(o.segs)-1]
	f, err := os.OpenFile(last.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("outbox: open segment: %w", err)
	}
	o.f, o.w = f, bufio.NewWriterSize(f, 64<<10)
	return nil
}

// lastInput is the input seq of the last record: the evaluation of input
// entries up to it has its events in the outbox.
func (o *outbox) lastInput() uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lastIn
}

// append writes the events of input entries up to in. They are readable at
// once (the file's page cache survives kill -9); sync makes them survive
// power loss, and the engine syncs before each snapshot.
func (o *outbox) append(in uint64, events []eval.Event) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return errors.New("outbox closed")
	}
	body, err := json.Marshal(outRecord{Seq: o.next, In: in, Events: events})
	if err != nil {
		return fmt.Errorf("outbox: encode: %w", err)
	}
	var hdr [8]byte
	binary.LittleEndian.PutUint32(hdr[:4], uint32(len(body)))
	binary.LittleEndian.PutUint32(hdr[4:], crc32.Checksum(body, castagnoli))
	_, _ = o.w.Write(hdr[:])
	_, _ = o.w.Write(body)
	if err := o.w.Flush(); err != nil {
		// Cut what part of the record made it, so that the next append
		// does not follow garbage.
		o.w.Reset(o.f)
		if terr := o.f.Truncate(o.segs[len(o.segs)-1].size); terr != nil {
			return fmt.Errorf("outbox: write: %w (and cutting it back: %v)", err, terr)
		}
		return fmt.Errorf("outbox: write: %w", err)
	}
	size := int64(8 + len(body))
	o.segs[len(o.segs)-1].size += size
	o.bytes += size
	o.next++
	o.lastIn = in
	close(o.wake)
	o.wake = make(chan struct{})
	if o.segs[len(o.segs)-1].size >= o.segBytes {
		if err := o.f.Sync(); err != nil {
			return fmt.Errorf("outbox: sync: %w", err)
		}
		_ = o.f.Close()
		if err := o.openAppend(); err != nil {
			return err
		}
	}
	return nil
}

// sync makes what was appended durable.
func (o *outbox) sync() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return nil
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("outbox: sync: %w", err)
	}
	return nil
}

// cursor registers an output's cursor: a durable one resumes from its
// file (a new one starts at the end: an output added later gets what
// happens from then on), an ephemeral one starts at the end.
func (o *outbox) cursor(name string, durable bool) (*cursor, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if c, ok := o.cursors[name]; ok {
		return c, nil
	}
	c := &cursor{name: name, durable: durable, done: o.next - 1}
	if durable {
		b, err := os.ReadFile(o.cursorPath(name))
		switch {
		case err == nil:
			v, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			if perr != nil {
				return nil, fmt.Errorf("outbox: cursor %s: %q", name, b)
			}
			c.done = min(v, o.next-1)
		case errors.Is(err, os.ErrNotExist):
			if err := atomicfile.WriteFile(o.cursorPath(name), []byte(strconv.FormatUint(c.done, 10)+"\n"), 0o644); err != nil {
				return nil, fmt.Errorf("outbox: cursor %s: %w", name, err)
			}
		default:
			return nil, fmt.Errorf("outbox: cursor %s: %w", name, err)
		}
	}
	o.cursors[name] = c
	return c, nil
}

func (o *outbox) cursorPath(name string) string { return filepath.Join(o.dir, "cursors", name) }

// forget removes an output's cursor (a webhook that was deleted): it no
// longer holds segments.
func (o *outbox) forget(name string) {
	o.mu.Lock()
	delete(o.cursors, name)
	o.mu.Unlock()
	_ = os.Remove(o.cursorPath(name))
	o.trim()
}

// done records that c's output is done with every record up to seq, and
// removes the segments no durable cursor needs.
func (o *outbox) done(c *cursor, seq uint64) error {
	o.mu.Lock()
	c.done = seq
	o.mu.Unlock()
	if c.durable {
		if err := atomicfile.WriteFile(o.cursorPath(c.name), []byte(strconv.FormatUint(seq, 10)+"\n"), 0o644); err != nil {
			return fmt.Errorf("outbox: save cursor %s: %w", c.name, err)
		}
	}
	o.trim()
	return nil
}

// trim removes whole segments below every durable cursor (never the one
// being appended to), and, past maxBytes, the oldest ones whatever the
// cursors say: the outputs behind lose them, which is logged.
func (o *outbox) trim() {
	o.mu.Lock()
	defer o.mu.Unlock()
	low := o.next - 1
	for _, c := range o.cursors {
		if c.durable {
			low = min(low, c.done)
		}
	}
	for len(o.segs) > 1 {
		s, nextFirst := o.segs[0], o.segs[1].first
		needed := nextFirst-1 > low
		if needed && (o.maxBytes <= 0 || o.bytes <= o.maxBytes) {
			return
		}
		if needed {
			var behind []string
			for _, c := range o.cursors {
				if c.durable && c.done < nextFirst-1 {
					behind = append(behind, c.name)
					c.done = nextFirst - 1
				}
			}
			o.logger.Error("alerts: outbox over its bound: removing its oldest segment although outputs have not delivered it; they lose those alerts",
				"outputs", strings.Join(behind, ","), "records", nextFirst-s.first, "max_bytes", o.maxBytes)
			if o.overflow != nil {
				o.overflow(nextFirst - s.first)
			}
		}
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			o.logger.Warn("alerts: outbox: remove segment", "segment", s.path, "err", err)
			return
		}
		o.bytes -= s.size
		o.segs = o.segs[1:]
	}
}

// read returns up to maxEvents events' worth of records after c's
// position, waiting for one until ctx ends.
func (o *outbox) read(ctx context.Context, c *cursor, maxEvents int) ([]outRecord, error) {
	for {
		o.mu.Lock()
		from, wake, next := c.done+1, o.wake, o.next
		segs := o.segsFromLocked(from)
		o.mu.Unlock()
		if from < next {
			return readRecords(segs, from, next, maxEvents)
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// segsFromLocked returns the segments that may hold records from seq from
// on: the one holding from and every later one. Call with o.mu held.
func (o *outbox) segsFromLocked(from uint64) []outSeg {
	var segs []outSeg
	for i, s := range o.segs {
		if i+1 < len(o.segs) && o.segs[i+1].first <= from {
			continue
		}
		segs = append(segs, s)
	}
	return segs
}

// readRange returns the records after c's position up to seq to, without
// waiting: none when there are none.
func (o *outbox) readRange(c *cursor, to uint64) ([]outRecord, error) {
	o.mu.Lock()
	from, end := c.done+1, min(to+1, o.next)
	segs := o.segsFromLocked(from)
	o.mu.Unlock()
	if from >= end {
		return nil, nil
	}
	return readRecords(segs, from, end, int(^uint(0)>>1))
}

// readRecords reads the records from seq from (before end) out of segs.
func readRecords(segs []outSeg, from, end uint64, maxEvents int) ([]outRecord, error) {
	var out []outRecord
	events := 0
	for _, s := range segs {
		f, err := os.Open(s.path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // trimmed meanwhile
			}
			return out, fmt.Errorf("outbox: %w", err)
		}
		r := bufio.NewReaderSize(f, 256<<10)
		var hdr [8]byte
		for seq := s.first; seq < end; seq++ {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				break
			}
			size := binary.LittleEndian.Uint32(hdr[:4])
			if seq < from {
				if _, err := r.Discard(int(size)); err != nil {
					break
				}
				continue
			}
			body := make([]byte, size)
			if _, err := io.ReadFull(r, body); err != nil {
				break
			}
			if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(hdr[4:]) {
				_ = f.Close()
				return out, fmt.Errorf("outbox: %s: record %d fails its checksum", s.path, seq)
			}
			var rec outRecord
			if err := json.Unmarshal(body, &rec); err != nil {
				_ = f.Close()
				return out, fmt.Errorf("outbox: %s: record %d: %w", s.path, seq, err)
			}
			out = append(out, rec)
			events += len(rec.Events)
			if events >= maxEvents {
				_ = f.Close()
				return out, nil
			}
		}
		_ = f.Close()
	}
	return out, nil
}

// close flushes and closes the segment being appended to.
func (o *outbox) close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	close(o.wake)
	o.wake = make(chan struct{})
	if err := o.f.Sync(); err != nil {
		_ = o.f.Close()
		return fmt.Errorf("outbox: sync: %w", err)
	}
	return o.f.Close()
}

// ReadOutbox returns every event the outbox of the engine whose data
// directory is dataDir holds, in order: for tools and tests, with the
// engine stopped (or killed).
func ReadOutbox(dataDir string) ([]eval.Event, error) {
	names, err := filepath.Glob(filepath.Join(dataDir, "outbox", "*.log"))
	if err != nil {
		return nil, err
	}
	slices.Sort(names)
	var segs []outSeg
	for _, n := range names {
		first, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(n), ".log"), 10, 64)
		if err != nil {
			continue
		}
		segs = append(segs, outSeg{first: first, path: n})
	}
	recs, err := readRecords(segs, 0, ^uint64(0), int(^uint(0)>>1))
	if err != nil {
		return nil, err
	}
	var out []eval.Event
	for _, r := range recs {
		out = append(out, r.Events...)
	}
	return out, nil
}
