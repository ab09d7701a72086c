package queue

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/joncrlsn/dque"
)

const readChunk = 256 << 10

// Read returns the next entries to send downstream, blocking until there are
// some or ctx ends. Records given back by Nack or Rewind come first, then
// records not read before. A batch holds whole records, as many as fit in
// maxBytes of entry data, and at least one. Each batch must be acked (Ack)
// or given back (Nack, Rewind); until then it stays in the queue.
func (q *Queue) Read(ctx context.Context, maxBytes int) (Batch, error) {
	return q.readWait(ctx, &q.cons, maxBytes)
}

// readWait is Read for any consumer of q (the queue's own, or a Cursor's).
func (q *Queue) readWait(ctx context.Context, c *consumer, maxBytes int) (Batch, error) {
	for {
		q.rmu.Lock()
		if q.rclosed || c.closed {
			q.rmu.Unlock()
			return Batch{}, ErrClosed
		}
		b, err := q.readLocked(c, maxBytes)
		avail := q.avail
		q.rmu.Unlock()
		if err != nil || len(b.Entries) > 0 {
			return b, err
		}
		select {
		case <-avail:
		case <-ctx.Done():
			return Batch{}, ctx.Err()
		}
	}
}

// TryRead is Read without waiting: an empty batch means nothing to read now.
func (q *Queue) TryRead(maxBytes int) (Batch, error) {
	q.rmu.Lock()
	defer q.rmu.Unlock()
	if q.rclosed {
		return Batch{}, ErrClosed
	}
	return q.readLocked(&q.cons, maxBytes)
}

// consumer is one window over the queue's records: a reader of the segment
// files and the records it has handed out and not yet seen acked. The
// queue has one of its own (Read, Ack, ...), and each Cursor has one.
// Guarded by the queue's rmu.
type consumer struct {
	rd        segReader
	peeked    *inflight // read from disk, did not fit the last batch
	window    []*inflight
	resend    int   // records in window waiting to be read again
	inflightN int64 // entries read and not yet acked
	closed    bool
	// onAcked, when set, is told (under rmu) that records at the window's
	// head are acked: a Cursor advances its position. The queue's own
	// consumer leaves them to the remover.
	onAcked func()
	// inflightGauge and redelivered are the consumer's metrics.
	inflightGauge interface{ Set(float64) }
	redelivered   interface{ Add(float64) }
}

func (q *Queue) readLocked(c *consumer, maxBytes int) (Batch, error) {
	var b Batch
	add := func(r *inflight) {
		b.Entries = append(b.Entries, r.entries...)
		b.Bytes += int(r.bytes)
		b.recs = append(b.recs, r)
	}
	if c.resend > 0 {
		// A contiguous run of records given back, oldest first.
		i := 0
		for i < len(c.window) && c.window[i].state != stateResend {
			i++
		}
		for ; i < len(c.window) && c.window[i].state == stateResend; i++ {
			r := c.window[i]
			if len(b.recs) > 0 && b.Bytes+int(r.bytes) > maxBytes {
				break
			}
			r.state = stateSent
			c.resend--
			add(r)
		}
		c.redelivered.Add(float64(len(b.Entries)))
		return b, nil
	}
	fillers := false
	for {
		r := c.peeked
		c.peeked = nil
		if r == nil {
			var err error
			r, err = c.rd.next(q.committed)
			if err != nil {
				return b, err
			}
			if r == nil {
				break
			}
			if len(r.entries) == 0 {
				// A filler record from a repair: nothing to send; remove it.
				r.state = stateAcked
				c.window = append(c.window, r)
				fillers = true
				continue
			}
		}
		if len(b.recs) > 0 && b.Bytes+int(r.bytes) > maxBytes {
			c.peeked = r
			break
		}
		r.state = stateSent
		c.window = append(c.window, r)
		c.inflightN += int64(len(r.entries))
		add(r)
	}
	if fillers {
		q.ackedLocked(c)
	}
	c.inflightGauge.Set(float64(c.inflightN))
	return b, nil
}

// ackedLocked says records of c's window may be acked now.
func (q *Queue) ackedLocked(c *consumer) {
	if c.onAcked != nil {
		c.onAcked()
		return
	}
	q.kickRemover()
}

// Ack says the batch is durable downstream: its records are removed from
// the queue as soon as every record before them is acked too.
func (q *Queue) Ack(b Batch) { q.ack(&q.cons, b) }

func (q *Queue) ack(c *consumer, b Batch) {
	q.rmu.Lock()
	defer q.rmu.Unlock()
	for _, r := range b.recs {
		switch r.state {
		case stateAcked:
			continue
		case stateResend:
			c.resend--
		}
		r.state = stateAcked
		c.inflightN -= int64(len(r.entries))
	}
	c.inflightGauge.Set(float64(c.inflightN))
	q.ackedLocked(c)
}

// Nack gives the batch back: Read returns it again, before newer records.
func (q *Queue) Nack(b Batch) { q.nack(&q.cons, b) }

func (q *Queue) nack(c *consumer, b Batch) {
	q.rmu.Lock()
	for _, r := range b.recs {
		if r.state == stateSent {
			r.state = stateResend
			c.resend++
		}
	}
	q.wakeReadersLocked()
	q.rmu.Unlock()
}

// Rewind gives back everything read and not acked, as after a reconnect:
// Read returns it again, oldest first.
func (q *Queue) Rewind() { q.rewind(&q.cons) }

func (q *Queue) rewind(c *consumer) {
	q.rmu.Lock()
	for _, r := range c.window {
		if r.state == stateSent {
			r.state = stateResend
			c.resend++
		}
	}
	q.wakeReadersLocked()
	q.rmu.Unlock()
}

// Inflight returns the number of entries read and not yet acked.
func (q *Queue) Inflight() int64 {
	q.rmu.Lock()
	defer q.rmu.Unlock()
	return q.cons.inflightN
}

func (q *Queue) wakeReadersLocked() {
	if !q.rclosed {
		close(q.avail)
		q.avail = make(chan struct{})
	}
}

func (q *Queue) kickRemover() {
	select {
	case q.removeKick <- struct{}{}:
	default:
	}
}

// segReader reads records sequentially from the segment files, up to a
// committed end it is given. The consumer's cursor is one (Queue.rd); each
// Tail has its own. It is not safe for concurrent use.
type segReader struct {
	segDir  string
	cursor  pos // next byte to look at
	rf      *os.File
	rfNum   int
	rbuf    []byte
	rbufOff int64
}

// next reads the record at the cursor, if one is committed there (before
// committed).
func (s *segReader) next(committed pos) (*inflight, error) {
	for s.cursor.before(committed) {
		if s.rf == nil || s.rfNum != s.cursor.seg {
			if s.rf != nil {
				s.rf.Close()
				s.rf = nil
			}
			f, err := os.Open(segmentFile(s.segDir, s.cursor.seg))
			if errors.Is(err, os.ErrNotExist) && s.cursor.seg < committed.seg {
				// Consumed and deleted (everything in it was read).
				s.cursor = pos{s.cursor.seg + 1, 0}
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("queue read: open segment: %w", err)
			}
			s.rf, s.rfNum, s.rbuf, s.rbufOff = f, s.cursor.seg, s.rbuf[:0], 0
		}
		limit := int64(-1)
		if s.cursor.seg == committed.seg {
			limit = committed.off
		}
		hdr, err := s.readAt(s.cursor.off, 4, limit)
		if err != nil {
			return nil, err
		}
		if hdr == nil {
			if limit >= 0 {
				// The committed end of the tail segment lies inside a
				// delete marker whose write was under way: the rest of it,
				// and what follows, comes with a later commit. Never leave
				// the tail segment here.
				return nil, nil
			}
			// End of a finished segment (only delete markers can follow).
			s.cursor = pos{s.cursor.seg + 1, 0}
			continue
		}
		l := int(binary.LittleEndian.Uint32(hdr))
		if l == 0 {
			s.cursor.off += 4
			continue
		}
		body, own, err := s.readBody(s.cursor.off+4, l, limit)
		if err != nil {
			return nil, err
		}
		if body == nil {
			return nil, fmt.Errorf("queue read: segment %d offset %d: record of %d bytes cut short", s.cursor.seg, s.cursor.off, l)
		}
		rr, err := parseItem(body)
		var ents [][]byte
		if err == nil {
			ents, err = rr.entries()
		}
		if err != nil {
			return nil, fmt.Errorf("queue read: segment %d offset %d: %w", s.cursor.seg, s.cursor.off, err)
		}
		s.cursor.off += 4 + int64(l)
		r := &inflight{bytes: rr.payloadBytes(), entries: make([]Entry, len(ents)), end: s.cursor}
		if own {
			// The body has a buffer of its own: the entries keep it.
			for i, e := range ents {
				r.entries[i] = Entry{Seq: rr.seq + uint64(i), Data: e[:len(e):len(e)]}
			}
			return r, nil
		}
		data := append([]byte(nil), rr.data...) // keep one allocation per record
		base := 0
		for i, e := range ents {
			// e aliases rr.data; find it in the copy by offset.
			start := base + uvarintLen(uint64(len(e)))
			r.entries[i] = Entry{Seq: rr.seq + uint64(i), Data: data[start : start+len(e) : start+len(e)]}
			base = start + len(e)
		}
		return r, nil
	}
	return nil, nil
}

// readAt returns n bytes of the reader's segment at off, or nil if they are
// not all there before limit (-1: end of file).
func (s *segReader) readAt(off int64, n int, limit int64) ([]byte, error) {
	if limit >= 0 && off+int64(n) > limit {
		return nil, nil
	}
	if off >= s.rbufOff && off+int64(n) <= s.rbufOff+int64(len(s.rbuf)) {
		o := off - s.rbufOff
		return s.rbuf[o : o+int64(n)], nil
	}
	want := max(n, readChunk)
	if limit >= 0 {
		want = int(min(int64(want), limit-off))
	}
	if cap(s.rbuf) < want {
		s.rbuf = make([]byte, want)
	}
	buf := s.rbuf[:want]
	got, err := s.rf.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("queue read: segment %d: %w", s.rfNum, err)
	}
	s.rbuf, s.rbufOff = buf[:got], off
	if got < n {
		return nil, nil
	}
	return s.rbuf[:n], nil
}

// readBody returns the n bytes of a record's body at off, or nil if they
// are not all there before limit. A body in the read-ahead buffer, or a
// small one, comes from that buffer (own false: the caller copies what it
// keeps); a larger one is read into a buffer of its own (own true), which
// the caller keeps as it is: the records of a frontend's or a router's
// queue are hundreds of KiB, and reading them through the read-ahead buffer
// cost a copy of every byte.
func (s *segReader) readBody(off int64, n int, limit int64) ([]byte, bool, error) {
	if limit >= 0 && off+int64(n) > limit {
		return nil, false, nil
	}
	if n < readChunk/2 || off >= s.rbufOff && off+int64(n) <= s.rbufOff+int64(len(s.rbuf)) {
		b, err := s.readAt(off, n, limit)
		return b, false, err
	}
	buf := make([]byte, n)
	got, err := s.rf.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, false, fmt.Errorf("queue read: segment %d: %w", s.rfNum, err)
	}
	if got < n {
		return nil, false, nil
	}
	return buf, true, nil
}

// close releases the reader's file.
func (s *segReader) close() {
	if s.rf != nil {
		s.rf.Close()
		s.rf = nil
	}
}

// removeLoop removes acked records from the head of dque, in order, syncs
// the delete markers now and then, and writes the cursor files.
func (q *Queue) removeLoop() {
	defer close(q.removerDone)
	var owed []recCount
	dirty := false
	var syncTimer <-chan time.Time
	var retry <-chan time.Time
	stopping := false
	statTick := time.NewTicker(volumeStatInterval)
	defer statTick.Stop()
	for {
		select {
		case <-statTick.C:
			q.refreshVolumeFree()
			continue
		case <-q.removeKick:
		case <-retry:
			retry = nil
		case <-syncTimer:
			syncTimer = nil
			if q.opts.Sync == SyncAlways && dirty {
				q.dqMu.Lock()
				if q.dq != nil {
					if err := q.dq.TurboSync(); err != nil {
						q.log.Warn("queue: sync delete markers", "err", err)
					}
				}
				q.dqMu.Unlock()
			}
			dirty = false
			q.persistCursors()
		case <-q.stop:
			stopping = true
		}

		q.rmu.Lock()
		c := &q.cons
		k := 0
		for k < len(c.window) && c.window[k].state == stateAcked {
			k++
		}
		byCursors := len(q.cursors) > 0
		if !byCursors {
			for _, r := range c.window[:k] {
				owed = append(owed, recCount{int64(len(r.entries)), r.bytes, r.end})
			}
		}
		// With cursors, the queue's own consumer's acks remove nothing
		// (doc.go, "Cursors"): the slowest cursor does.
		clear(c.window[:k])
		c.window = c.window[k:]
		if len(c.window) == 0 {
			c.window = nil
		}
		from, target := q.head, q.head
		if len(owed) > 0 {
			from = owed[len(owed)-1].end
		}
		if byCursors {
			target = q.minCursorLocked()
		}
		cursorsDirty := q.cursorsDirtyLocked()
		q.rmu.Unlock()
		if cursorsDirty && syncTimer == nil && !stopping {
			syncTimer = time.After(q.opts.RemovalSyncInterval)
		}

		if byCursors && from.before(target) {
			more, err := walkRecords(q.segDir, from, target)
			if err != nil {
				q.m.storageErrors.Inc()
				q.log.Error("queue: find the records every cursor has passed", "err", err)
				if !stopping {
					retry = time.After(q.opts.RetryInterval)
				}
			}
			owed = append(owed, more...)
		}
		if len(owed) > 0 {
			n, b, err := q.removeHead(owed)
			if n > 0 {
				q.rmu.Lock()
				q.head = owed[n-1].end
				q.rmu.Unlock()
			}
			clear(owed[:n])
			owed = owed[n:]
			if len(owed) == 0 {
				owed = nil
			}
			if n > 0 {
				dirty = true
				q.mu.Lock()
				q.liveEntries -= b.entries
				q.liveBytes -= b.bytes
				live, liveB, bound := q.liveEntries, q.liveBytes, q.maxBytes
				q.mu.Unlock()
				q.m.removed.Add(float64(b.entries))
				q.setDepth(live, liveB, bound)
				if syncTimer == nil {
					syncTimer = time.After(q.opts.RemovalSyncInterval)
				}
			}
			if err != nil {
				q.m.storageErrors.Inc()
				q.log.Error("queue: remove acked records", "err", err, "owed", len(owed))
				if !stopping {
					retry = time.After(q.opts.RetryInterval)
				}
			}
		}
		if stopping {
			q.persistCursors()
			return
		}
	}
}

type counts struct{ entries, bytes int64 }

// recCount is one record to remove: its entries and bytes, and where it ends.
type recCount struct {
	entries, bytes int64
	end            pos
}

// removeHead dequeues len(recs) records from dque's head; it returns how many
// it removed and their entries and bytes.
func (q *Queue) removeHead(recs []recCount) (int, counts, error) {
	var c counts
	q.dqMu.Lock()
	defer q.dqMu.Unlock()
	if q.dq == nil {
		return 0, c, errors.New("queue storage is reopening")
	}
	for i, r := range recs {
		if _, err := q.dq.Dequeue(); err != nil {
			if errors.Is(err, dque.ErrEmpty) {
				// Cannot happen after Open's repair; drop the debt rather
				// than spin, and say so.
				q.log.Error("queue: dque head empty while acked records remain; dropping the removal", "records", len(recs)-i)
				for _, r := range recs[i:] {
					c.entries += r.entries
					c.bytes += r.bytes
				}
				return len(recs), c, nil
			}
			return i, c, fmt.Errorf("dequeue: %w", err)
		}
		c.entries += r.entries
		c.bytes += r.bytes
	}
	return len(recs), c, nil
}
