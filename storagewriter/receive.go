package storagewriter

// The receiving side: a router's store batches, deduplicated by sequence,
// appended to the writer's queue in the order they arrived, and answered.

import (
	"context"
	"errors"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// newReceiver is the writer's receiving side (forward.Receiver): batches
// deduplicated by (router, sequence), appended in each router's order, an
// entry larger than a queue record dead-lettered, and every busy answer
// counted by reason.
func (w *Writer) newReceiver() *forward.Receiver {
	return forward.NewReceiver(forward.ReceiverConfig{
		Name:           "writer",
		Queue:          func() *queue.Queue { return w.q.Load() },
		Entry:          withRouter,
		ChunkBytes:     func(q *queue.Queue) int { return appendChunkBytes(q.MaxBytes()) },
		MaxAppends:     maxAppenders,
		DedupIntervals: dedupIntervals,
		TooLarge: func(m forward.Message, _ uint64, entry []byte, err error) error {
			err = w.dl.writeEntries(m.Sender, "entry larger than the writer's queue records ("+err.Error()+")", [][]byte{entry})
			if err == nil {
				w.m.undecodable.Inc()
			}
			return err
		},
		Appended:   func(n int) { w.m.appended.Add(float64(n)) },
		Duplicates: func(n int) { w.m.duplicates.Add(float64(n)) },
		Busy:       w.busy,
	})
}

// receive counts a batch from a router and hands it to the receiver. It
// never blocks.
func (w *Writer) receive(send func(forward.Message), m forward.Message) {
	w.m.batchesReceived.WithLabelValues(m.Sender).Inc()
	w.m.entriesReceived.Add(float64(len(m.Entries)))
	for _, e := range m.Entries {
		w.m.recordsReceived.Add(float64(countRecords(e)))
	}
	w.recv.Receive(send, m)
}

// busy counts a busy answer to batch m by its reason, and logs a failure
// that is not the queue being full or closed. last is what the failing
// append held.
func (w *Writer) busy(m forward.Message, err error, last [][]byte) {
	bound := w.q.Load().MaxBytes()
	reason := "error"
	switch {
	case errors.Is(err, forward.ErrTooManyAppends):
		reason = "appenders"
	case errors.Is(err, queue.ErrFull) && len(last) == 1 && bound > 0 && int64(len(last[0])) > bound:
		reason = "over_bound"
		w.logOverBound(m, len(last[0]), bound)
	case errors.Is(err, queue.ErrFull):
		reason = "full"
	case errors.Is(err, queue.ErrStorage):
		reason = "storage"
	case errors.Is(err, queue.ErrClosed), errors.Is(err, context.Canceled):
		reason = "closed"
	}
	w.m.busy.WithLabelValues(reason).Inc()
	if reason != "appenders" && reason != "closed" && !queue.Retryable(err) {
		w.logger.Error("storage-writer: append failed", "router", m.Sender, "first", m.First, "last", m.Last, "err", err)
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
