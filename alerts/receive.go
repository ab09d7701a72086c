package alerts

import (
	"errors"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// The engine is a durable subscriber of the routers' store lane, speaking
// the same protocol as a storage writer (internal/forward/doc.go, "The
// store lane"), with the same pieces: a forward.Subscription (subscribe
// every heartbeat to every router listed) and a forward.Receiver (append
// each batch to the queue, dropping entries appended before, by router
// and queue sequence; ack once durable; answer busy when full).
const (
	maxAppenders   = 64
	dedupIntervals = 4096
	maxRecordBytes = 4 << 20
)

// newReceiver is the engine's receiving side (forward.Receiver): batches
// deduplicated by (router, sequence) and appended as readings entries in
// the order each router sent them. The order matters here: appends that
// raced to the queue let a batch be overtaken by later ones, which left
// its devices' readings after theirs; more than ReorderMax readings of a
// device held for the gap made the evaluator go over it, and the
// overtaken readings became a late stretch (events that evaluating in
// order does not raise). An entry larger than a queue record (an
// enormous batch a router would never send) is counted and skipped.
func (e *Engine) newReceiver() *forward.Receiver {
	return forward.NewReceiver(forward.ReceiverConfig{
		Name:           "alerts",
		Queue:          func() *queue.Queue { return e.q.Load() },
		Entry:          readingsEntry,
		ChunkBytes:     func(*queue.Queue) int { return maxRecordBytes - 1024 },
		MaxAppends:     maxAppenders,
		DedupIntervals: dedupIntervals,
		TooLarge: func(m forward.Message, seq uint64, entry []byte, _ error) error {
			e.m.oversized.Inc()
			e.logger.Error("alerts: router entry larger than a queue record; skipped", "router", m.Sender, "seq", seq, "bytes", len(entry))
			return nil
		},
		Busy: func(m forward.Message, err error, _ [][]byte) {
			e.m.busy.Inc()
			if !errors.Is(err, forward.ErrTooManyAppends) && !errors.Is(err, queue.ErrClosed) && !queue.Retryable(err) {
				e.logger.Error("alerts: append failed", "router", m.Sender, "first", m.First, "last", m.Last, "err", err)
			}
		},
	})
}

// Kinds of queue entry: the queue is the journal of everything the
// evaluation depends on, in the order it happened.
const (
	entryReadings byte = 1 // a serialized PublishBatch (router field set)
	entryTick     byte = 2 // the clock: wall time, ms (8 bytes LE)
	entryRules    byte = 3 // a rule set became current: its version (8 bytes LE)
)

// readingsEntry is a readings entry for a router's entry (a serialized
// PublishBatch), with its router field set: protobuf takes the last value
// of a field, so appending it sets it without decoding.
func readingsEntry(entry []byte, router string) []byte {
	out := make([]byte, 0, 1+len(entry)+len(router)+3)
	out = append(out, entryReadings)
	out = append(out, entry...)
	out = protowire.AppendTag(out, 1, protowire.BytesType)
	return protowire.AppendString(out, router)
}
