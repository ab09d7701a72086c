package storagewriter

// The receiving side: a router's store batches, deduplicated by sequence,
// appended to the writer's queue in the order they arrived, and answered.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// routerSeqs is what the writer knows of one router's queue sequences.
type routerSeqs struct {
	done    *forward.SeqSet    // appended to the writer's queue
	pending []forward.Interval // being appended
	// last is placed when the batch received last from this router has
	// its place in the queue (queue.Begin of its last append) or is done:
	// the next waits for it before its own first append, so that a
	// router's batches (several in flight) enter the queue in the order
	// they arrived, as they sit in the router's log, and still share group
	// commits.
	last *queue.Turn
}

// receive handles a batch from a router: it drops what was appended
// before, starts an append of the rest, and answers. It never blocks.
func (w *Writer) receive(l *link, m forward.Message) {
	n := uint64(len(m.Entries))
	w.m.batchesReceived.WithLabelValues(m.Sender).Inc()
	w.m.entriesReceived.Add(float64(n))
	for _, e := range m.Entries {
		w.m.recordsReceived.Add(float64(countRecords(e)))
	}
	w.mu.Lock()
	rs := w.routers[m.Sender]
	if rs == nil {
		rs = &routerSeqs{done: forward.NewSeqSet(dedupIntervals)}
		w.routers[m.Sender] = rs
	}
	missing := rs.done.Missing(m.First, m.Last, nil)
	if len(missing) == 0 {
		w.mu.Unlock()
		w.m.duplicates.Add(float64(n))
		l.send(forward.Message{Type: forward.TypeAck, First: m.First, Last: m.Last})
		return
	}
	var todo []forward.Interval
	for _, iv := range missing {
		todo = forward.Subtract(iv, rs.pending, todo)
	}
	if len(todo) == 0 {
		// Everything new is being appended by an earlier copy of these
		// entries, whose append answers for its own batch; this range is
		// acked when the router resends it.
		w.mu.Unlock()
		w.m.duplicates.Add(float64(n))
		return
	}
	select {
	case w.appendSem <- struct{}{}:
	default:
		w.mu.Unlock()
		w.m.busy.WithLabelValues("appenders").Inc()
		l.send(forward.Message{Type: forward.TypeBusy, First: m.First, Last: m.Last, Reason: "writer: too many appends in flight"})
		return
	}
	rs.pending = append(rs.pending, todo...)
	prev, mine := rs.last, queue.NewTurn()
	rs.last = mine
	w.appendWG.Add(1)
	w.mu.Unlock()
	w.m.duplicates.Add(float64(n - forward.TotalLen(todo)))
	go w.appendBatch(l, rs, m, todo, prev, mine)
}

// appendBatch appends the entries todo of batch m to the queue, once the
// router's batch before it (prev, nil for none) has its place there, and
// acks the batch when all of it is durable. It marks mine placed once its own
// last append has its place (queue.Begin), or when it returns.
func (w *Writer) appendBatch(l *link, rs *routerSeqs, m forward.Message, todo []forward.Interval, prev, mine *queue.Turn) {
	defer w.appendWG.Done()
	defer func() { <-w.appendSem }()
	defer mine.Placed()
	q := w.q.Load()
	bound := q.MaxBytes()
	chunk := appendChunkBytes(bound)
	var failed error
	overBound := 0 // the size of an entry that no free space can take
	if prev.Wait(w.appendCtx) != nil {
		failed = fmt.Errorf("%w: stopping", queue.ErrClosed)
	}
	for i, iv := range todo {
		if failed != nil {
			break
		}
		for first := iv.First; first <= iv.Last; {
			entries, size := make([][]byte, 0, 16), 0
			last := first
			for seq := first; seq <= iv.Last; seq++ {
				e := withRouter(m.Entries[seq-m.First], m.Sender)
				if len(entries) > 0 && size+len(e)+16 > chunk {
					break
				}
				entries = append(entries, e)
				size += len(e) + 16
				last = seq
			}
			pend, err := q.Begin(entries...)
			if i == len(todo)-1 && last == iv.Last {
				mine.Placed()
			}
			if err == nil {
				_, err = pend.Wait(w.appendCtx)
			}
			if err != nil {
				if errors.Is(err, queue.ErrTooLarge) && len(entries) == 1 {
					err = w.dl.writeEntries(m.Sender, "entry larger than the writer's queue records ("+err.Error()+")", entries)
					if err == nil {
						w.m.undecodable.Inc()
					}
				}
				if err != nil {
					if errors.Is(err, queue.ErrFull) && len(entries) == 1 && bound > 0 && int64(len(entries[0])) > bound {
						overBound = len(entries[0])
					}
					failed = err
					break
				}
			} else {
				w.m.appended.Add(float64(len(entries)))
			}
			w.mu.Lock()
			rs.done.Add(first, last)
			w.mu.Unlock()
			first = last + 1
		}
	}
	w.mu.Lock()
	for _, iv := range todo {
		rs.pending = forward.RemoveInterval(rs.pending, iv)
	}
	complete := rs.done.Contains(m.First, m.Last)
	w.mu.Unlock()
	switch {
	case failed != nil:
		reason := "error"
		switch {
		case overBound > 0:
			reason = "over_bound"
			w.logOverBound(m, overBound, bound)
		case errors.Is(failed, queue.ErrFull):
			reason = "full"
		case errors.Is(failed, queue.ErrStorage):
			reason = "storage"
		case errors.Is(failed, queue.ErrClosed), errors.Is(failed, context.Canceled):
			reason = "closed"
		}
		w.m.busy.WithLabelValues(reason).Inc()
		if !queue.Retryable(failed) && reason != "closed" {
			w.logger.Error("storage-writer: append failed", "router", m.Sender, "first", m.First, "last", m.Last, "err", failed)
		}
		l.send(forward.Message{Type: forward.TypeBusy, First: m.First, Last: m.Last, Reason: "writer: " + failed.Error()})
	case complete:
		l.send(forward.Message{Type: forward.TypeAck, First: m.First, Last: m.Last})
	}
}

// logOverBound says, at most once a minute, that an entry is larger than
// the writer's whole queue bound: it is refused (busy) every time, and the
// router holds it and what follows until the bound is raised.
func (w *Writer) logOverBound(m forward.Message, size int, bound int64) {
	now := time.Now().UnixNano()
	last := w.overBoundLogged.Load()
	if last != 0 && time.Duration(now-last) < time.Minute || !w.overBoundLogged.CompareAndSwap(last, now) {
		return
	}
	w.logger.Error("storage-writer: an entry is larger than the whole queue bound and can never be stored; the router keeps it (and holds back what follows) until -queue-max-bytes is raised above it",
		"router", m.Sender, "first", m.First, "last", m.Last, "entry_bytes", size, "queue_max_bytes", bound)
}

// appendChunkBytes is the most entry bytes appended at once (one queue
// record) with a queue bound of bound: what a record holds, and at most a
// quarter of the bound. A batch larger than the whole bound (a router's
// log record of several entries, issue 20) is then appended piecewise as
// the sink drains the queue, each piece recorded as done; appended as one
// record it was refused as full every time, even with the queue empty.
func appendChunkBytes(bound int64) int {
	n := maxRecordBytes - 1024
	if bound > 0 {
		n = int(min(int64(n), max(bound/4, 1)))
	}
	return n
}

// withRouter returns entry (a serialized PublishBatch) with its router
// field set to router: protobuf takes the last value of a field, so
// appending the field sets it without decoding anything.
func withRouter(entry []byte, router string) []byte {
	out := make([]byte, 0, len(entry)+len(router)+3)
	out = append(out, entry...)
	out = protowire.AppendTag(out, 1, protowire.BytesType)
	return protowire.AppendString(out, router)
}

// countRecords counts the records (field 3) of a serialized PublishBatch
// without decoding them; a malformed entry counts what it has before the
// damage.
func countRecords(b []byte) int {
	n := 0
	for len(b) > 0 {
		num, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return n
		}
		b = b[k:]
		k = protowire.ConsumeFieldValue(num, typ, b)
		if k < 0 {
			return n
		}
		if num == 3 && typ == protowire.BytesType {
			n++
		}
		b = b[k:]
	}
	return n
}
