package queue

// Named durable cursors: several consumers reading one queue, each at its
// own pace, the head removed when the slowest has passed it (doc.go,
// "Cursors").

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

const cursorsName = "cursors"

// cursorNameRE is what a cursor's name may be: it is a file name.
var cursorNameRE = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)

// StartAt says where a cursor that has no file yet starts.
type StartAt int

const (
	// StartTail starts after what is committed now: the cursor gets what
	// is appended from then on.
	StartTail StartAt = iota
	// StartHead starts at the first record the queue holds.
	StartHead
)

// CursorOptions configure a Cursor.
type CursorOptions struct {
	// Start is where a new cursor (no file yet) starts. A cursor that has
	// a file resumes where it says.
	Start StartAt
	// MaxBytes is the lag past which Full reports true: the bound of what
	// this reader may hold back. 0: the queue's own bound; negative: none.
	MaxBytes int64
}

// Cursor is one named consumer of a queue with a window of its own (Read,
// Ack, Nack, Rewind, as the queue's own consumer) and a durable position:
// the end of what it has acked, kept in DIR/cursors/NAME (written at most
// every Options.RemovalSyncInterval, and at Close). The queue removes a
// record only when every cursor has passed it. After a restart a cursor
// reads again from its file's position: what it acked after the last write
// is delivered again (at least once).
type Cursor struct {
	q    *Queue
	name string
	path string
	opts CursorOptions

	// Guarded by q.rmu.
	cons           consumer
	acked          pos // end of the acked prefix: the durable position
	persisted      pos // what the file says
	passedEntries  int64
	passedBytes    int64 // in the frame of q.committed{Entries,Bytes}
	attached       bool  // OpenCursor returned it
	deleted        bool
	lagE, lagB, fr prometheus.Gauge
}

// cursorFile is the content of a cursor file: segment, offset, CRC-32C.
func cursorFile(p pos) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(p.seg))
	b = binary.LittleEndian.AppendUint64(b, uint64(p.off))
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func parseCursorFile(b []byte) (pos, error) {
	if len(b) != 20 || crc32.Checksum(b[:16], castagnoli) != binary.LittleEndian.Uint32(b[16:]) {
		return pos{}, fmt.Errorf("%d bytes, or checksum mismatch", len(b))
	}
	p := pos{int(binary.LittleEndian.Uint64(b)), int64(binary.LittleEndian.Uint64(b[8:]))}
	if p.seg < 0 || p.off < 0 {
		return pos{}, errors.New("negative position")
	}
	return p, nil
}

// loadCursors reads DIR/cursors/ at Open. Every cursor found holds the
// head back from then on, opened by OpenCursor or not, until DeleteCursor.
func (q *Queue) loadCursors() error {
	dir := filepath.Join(q.dir, cursorsName)
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read cursors: %w", err)
	}
	for _, de := range des {
		name := de.Name()
		if !cursorNameRE.MatchString(name) {
			continue // a temporary file of an interrupted write, or foreign
		}
		path := filepath.Join(dir, name)
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read cursor %s: %w", name, err)
		}
		p, perr := parseCursorFile(b)
		if perr != nil {
			// Torn or damaged: start at the head (everything it might not
			// have acked is delivered again).
			q.log.Warn("queue: cursor file damaged; the cursor starts at the head", "cursor", name, "err", perr)
			q.m.repairs.WithLabelValues("cursor_damaged").Inc()
			p = q.head
		}
		c := q.newCursor(name, CursorOptions{})
		if err := q.placeCursor(c, p); err != nil {
			return err
		}
	}
	return nil
}

func (q *Queue) newCursor(name string, opts CursorOptions) *Cursor {
	c := &Cursor{q: q, name: name, path: filepath.Join(q.dir, cursorsName, name), opts: opts}
	c.cons.rd = segReader{segDir: q.segDir}
	c.cons.onAcked = c.advanceLocked
	cl := prometheus.Labels{"cursor": name}
	c.cons.inflightGauge = q.m.cursorInflight.With(cl)
	c.cons.redelivered = q.m.cursorRedelivered.With(cl)
	c.lagE, c.lagB, c.fr = q.m.cursorLagEntries.With(cl), q.m.cursorLagBytes.With(cl), q.m.cursorFill.With(cl)
	return c
}

// placeCursor puts c at p (checked against the records on disk) and adds
// it to the queue's cursors.
func (q *Queue) placeCursor(c *Cursor, p pos) error {
	q.rmu.Lock()
	head, committed, ce, cb := q.head, q.committed, q.committedEntries, q.committedBytes
	q.rmu.Unlock()
	at, lagE, lagB, moved, err := locate(q.segDir, head, committed, p)
	if err != nil {
		return fmt.Errorf("place cursor %s: %w", c.name, err)
	}
	if moved {
		// Older than the head (its records were removed: every cursor had
		// passed them), past the committed end (a file written before a
		// power cut took records with it), or not on a record boundary.
		q.log.Info("queue: cursor position moved to a record boundary the queue holds", "cursor", c.name, "was", fmt.Sprint(p), "now", fmt.Sprint(at))
		q.m.repairs.WithLabelValues("cursor_moved").Inc()
	}
	q.rmu.Lock()
	defer q.rmu.Unlock()
	c.acked, c.persisted = at, p
	c.cons.rd.cursor = at
	c.passedEntries, c.passedBytes = ce-lagE, cb-lagB
	c.setLagLocked()
	q.cursors[c.name] = c
	return nil
}

// OpenCursor returns the cursor name, loaded from its file at Open, or new
// (at opts.Start; its file written before OpenCursor returns). A cursor is
// opened once per Open of the queue.
func (q *Queue) OpenCursor(name string, opts CursorOptions) (*Cursor, error) {
	if !cursorNameRE.MatchString(name) {
		return nil, fmt.Errorf("cursor name %q: want 1-64 of a-z 0-9 _ -", name)
	}
	q.curMu.Lock()
	defer q.curMu.Unlock()
	q.rmu.Lock()
	c := q.cursors[name]
	if c != nil {
		defer q.rmu.Unlock()
		if c.attached {
			return nil, fmt.Errorf("cursor %s is open already", name)
		}
		c.attached, c.opts = true, opts
		c.setLagLocked()
		return c, nil
	}
	start := q.committed
	if opts.Start == StartHead {
		start = q.head
	}
	q.rmu.Unlock()
	if err := os.MkdirAll(filepath.Join(q.dir, cursorsName), 0o755); err != nil {
		return nil, fmt.Errorf("create cursors dir: %w", err)
	}
	// The file first: a cursor that exists in memory only would let the
	// head pass what it has not read if the process died before its first
	// write, and the next Open would not know it.
	if err := replaceFile(filepath.Join(q.dir, cursorsName, name), cursorFile(start)); err != nil {
		return nil, fmt.Errorf("create cursor %s: %w", name, err)
	}
	c = q.newCursor(name, opts)
	if err := q.placeCursor(c, start); err != nil {
		return nil, err
	}
	q.rmu.Lock()
	c.attached = true
	q.rmu.Unlock()
	return c, nil
}

// DeleteCursor forgets the cursor name and its file: the head no longer
// waits for it. A Cursor of that name fails its reads from then on.
func (q *Queue) DeleteCursor(name string) error {
	q.curMu.Lock()
	defer q.curMu.Unlock()
	q.rmu.Lock()
	if c := q.cursors[name]; c != nil {
		c.deleted, c.cons.closed = true, true
		c.cons.rd.close()
		delete(q.cursors, name)
		cl := prometheus.Labels{"cursor": name}
		q.m.cursorLagEntries.Delete(cl)
		q.m.cursorLagBytes.Delete(cl)
		q.m.cursorFill.Delete(cl)
		q.m.cursorInflight.Delete(cl)
		q.m.cursorRedelivered.Delete(cl)
		q.wakeReadersLocked()
	}
	q.rmu.Unlock()
	q.kickRemover()
	if err := os.Remove(filepath.Join(q.dir, cursorsName, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete cursor %s: %w", name, err)
	}
	return syncDir(filepath.Join(q.dir, cursorsName))
}

// CursorNames returns the names of the cursors the queue holds, sorted.
func (q *Queue) CursorNames() []string {
	q.rmu.Lock()
	defer q.rmu.Unlock()
	out := make([]string, 0, len(q.cursors))
	for n := range q.cursors {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Name returns the cursor's name.
func (c *Cursor) Name() string { return c.name }

// Read returns the cursor's next entries, as Queue.Read does for the
// queue's own consumer.
func (c *Cursor) Read(ctx context.Context, maxBytes int) (Batch, error) {
	return c.q.readWait(ctx, &c.cons, maxBytes)
}

// TryRead is Read without waiting: an empty batch means nothing to read now.
func (c *Cursor) TryRead(maxBytes int) (Batch, error) {
	c.q.rmu.Lock()
	defer c.q.rmu.Unlock()
	if c.q.rclosed || c.cons.closed {
		return Batch{}, ErrClosed
	}
	return c.q.readLocked(&c.cons, maxBytes)
}

// Ack says the batch is durable downstream: the cursor passes its records
// once every record before them is acked too.
func (c *Cursor) Ack(b Batch) { c.q.ack(&c.cons, b) }

// Nack gives the batch back: Read returns it again, before newer records.
func (c *Cursor) Nack(b Batch) { c.q.nack(&c.cons, b) }

// Rewind gives back everything read and not acked.
func (c *Cursor) Rewind() { c.q.rewind(&c.cons) }

// Lag returns the entries and entry bytes committed that the cursor has
// not passed (acked) yet.
func (c *Cursor) Lag() (entries, bytes int64) {
	c.q.rmu.Lock()
	defer c.q.rmu.Unlock()
	return c.q.committedEntries - c.passedEntries, c.q.committedBytes - c.passedBytes
}

// MaxBytes returns the lag bound in effect (CursorOptions.MaxBytes, or the
// queue's bound); negative: none.
func (c *Cursor) MaxBytes() int64 {
	if c.opts.MaxBytes != 0 {
		return c.opts.MaxBytes
	}
	return c.q.MaxBytes()
}

// Full reports whether the cursor's lag has reached its bound: that reader
// holds back as much of the queue as it may.
func (c *Cursor) Full() bool {
	m := c.MaxBytes()
	_, b := c.Lag()
	return m > 0 && b >= m
}

// Close stops the cursor's reads (ErrClosed) and writes its position. It
// still holds the head back: only DeleteCursor lets the queue go past it.
func (c *Cursor) Close() error {
	c.q.rmu.Lock()
	c.cons.closed = true
	c.cons.rd.close()
	c.q.wakeReadersLocked()
	c.q.rmu.Unlock()
	return c.q.persistCursors()
}

// advanceLocked moves the cursor past the acked prefix of its window.
func (c *Cursor) advanceLocked() {
	k := 0
	for k < len(c.cons.window) && c.cons.window[k].state == stateAcked {
		r := c.cons.window[k]
		c.acked = r.end
		c.passedEntries += int64(len(r.entries))
		c.passedBytes += r.bytes
		k++
	}
	if k == 0 {
		return
	}
	clear(c.cons.window[:k])
	c.cons.window = c.cons.window[k:]
	if len(c.cons.window) == 0 {
		c.cons.window = nil
	}
	c.setLagLocked()
	c.q.kickRemover()
}

func (c *Cursor) setLagLocked() {
	e, b := c.q.committedEntries-c.passedEntries, c.q.committedBytes-c.passedBytes
	c.lagE.Set(float64(e))
	c.lagB.Set(float64(b))
	if m := c.MaxBytes(); m > 0 {
		c.fr.Set(float64(b) / float64(m))
	} else {
		c.fr.Set(0)
	}
}

// minCursorLocked is the position every cursor has passed.
func (q *Queue) minCursorLocked() pos {
	var m pos
	first := true
	for _, c := range q.cursors {
		if first || c.acked.before(m) {
			m, first = c.acked, false
		}
	}
	return m
}

func (q *Queue) cursorsDirtyLocked() bool {
	for _, c := range q.cursors {
		if c.acked != c.persisted {
			return true
		}
	}
	return false
}

// persistCursors writes the file of every cursor that moved.
func (q *Queue) persistCursors() error {
	q.curMu.Lock()
	defer q.curMu.Unlock()
	type w struct {
		c *Cursor
		p pos
	}
	var ws []w
	q.rmu.Lock()
	for _, c := range q.cursors {
		if c.acked != c.persisted {
			ws = append(ws, w{c, c.acked})
		}
	}
	q.rmu.Unlock()
	var errs []error
	for _, x := range ws {
		if err := replaceFile(x.c.path, cursorFile(x.p)); err != nil {
			q.m.storageErrors.Inc()
			errs = append(errs, fmt.Errorf("write cursor %s: %w", x.c.name, err))
			continue
		}
		q.rmu.Lock()
		x.c.persisted = x.p
		q.rmu.Unlock()
	}
	if err := errors.Join(errs...); err != nil {
		q.log.Warn("queue: write cursor files; retried with the next", "err", err)
		return err
	}
	return nil
}

// Scan calls fn with every entry committed from the head, in order, without
// taking them from any consumer; it stops at fn's first error.
func (q *Queue) Scan(ctx context.Context, fn func(Entry) error) error {
	q.rmu.Lock()
	rd := segReader{segDir: q.segDir, cursor: q.head}
	committed := q.committed
	q.rmu.Unlock()
	defer rd.close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := rd.next(committed)
		if err != nil || r == nil {
			return err
		}
		for _, e := range r.entries {
			if err := fn(e); err != nil {
				return err
			}
		}
	}
}

// walkRecords returns the records from `from` that end at or before `to`,
// reading only each record's length and trailer.
func walkRecords(segDir string, from, to pos) ([]recCount, error) {
	var out []recCount
	err := eachRecord(segDir, from, to, func(start pos, rc recCount) bool {
		if to.before(rc.end) {
			return false
		}
		out = append(out, rc)
		return true
	})
	return out, err
}

// locate checks p against the records between head and committed and
// returns the position to read from: p if it is a record boundary there,
// else the nearest one at or before it (the head when p is older), and the
// entries and bytes after it.
func locate(segDir string, head, committed, p pos) (at pos, lagE, lagB int64, moved bool, err error) {
	at = head
	err = eachRecord(segDir, head, committed, func(start pos, rc recCount) bool {
		if !p.before(rc.end) {
			at = rc.end // p is at or past this record's end
		} else {
			lagE += rc.entries
			lagB += rc.bytes
		}
		return true
	})
	// p between two records (delete markers, a segment's end) is as good as
	// the earlier record's end; moved says p was outside what is held or
	// inside a record.
	moved = p.before(head) || committed.before(p)
	if !moved && at != p && !p.before(at) {
		// Between at and the next record: fine unless inside a record.
		_ = eachRecord(segDir, at, committed, func(start pos, rc recCount) bool {
			if start.before(p) && p.before(rc.end) {
				moved = true
			}
			return false
		})
	}
	return at, lagE, lagB, moved, err
}

// eachRecord calls fn with the start and counts of each record from `from`
// up to the committed end `to`, until fn returns false. Delete markers are
// skipped; a segment file already deleted is passed over.
func eachRecord(segDir string, from, to pos, fn func(start pos, rc recCount) bool) error {
	cur := from
	var f *os.File
	fnum := -1
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	var hdr [4]byte
	var tr [trailerLen]byte
	for cur.before(to) {
		if f == nil || fnum != cur.seg {
			if f != nil {
				f.Close()
				f = nil
			}
			g, err := os.Open(segmentFile(segDir, cur.seg))
			if errors.Is(err, os.ErrNotExist) && cur.seg < to.seg {
				cur = pos{cur.seg + 1, 0}
				continue
			}
			if err != nil {
				return fmt.Errorf("walk records: %w", err)
			}
			f, fnum = g, cur.seg
		}
		if cur.seg == to.seg && cur.off+4 > to.off {
			return nil
		}
		if _, err := f.ReadAt(hdr[:], cur.off); err != nil {
			if errors.Is(err, io.EOF) && cur.seg < to.seg {
				cur = pos{cur.seg + 1, 0}
				continue
			}
			return fmt.Errorf("walk records: segment %d offset %d: %w", cur.seg, cur.off, err)
		}
		l := int64(binary.LittleEndian.Uint32(hdr[:]))
		if l == 0 {
			cur.off += 4
			continue
		}
		end := pos{cur.seg, cur.off + 4 + l}
		if l < trailerLen || (cur.seg == to.seg && to.off < end.off) {
			return fmt.Errorf("walk records: segment %d offset %d: record of %d bytes past the committed end", cur.seg, cur.off, l)
		}
		if _, err := f.ReadAt(tr[:], end.off-trailerLen); err != nil {
			return fmt.Errorf("walk records: segment %d offset %d: %w", cur.seg, cur.off, err)
		}
		if binary.LittleEndian.Uint32(tr[20:]) != recMagic {
			return fmt.Errorf("walk records: segment %d offset %d: no record trailer", cur.seg, cur.off)
		}
		rc := recCount{
			entries: int64(binary.LittleEndian.Uint32(tr[8:])),
			bytes:   int64(binary.LittleEndian.Uint32(tr[12:])),
			end:     end,
		}
		if !fn(cur, rc) {
			return nil
		}
		cur = end
	}
	return nil
}
