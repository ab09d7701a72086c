package storagewriter

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/backoff"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/storagewriter/sink"
	"github.com/drover-telemetry/drover/telemetry"
)

// Backoff of sink retries. The cap is short on purpose: one retry of one
// batch every few seconds costs a down store nothing, and the operator who
// just brought InfluxDB back wants the backlog draining now, not in 30 s
// (measured: a 30 s cap resumed 22-28 s after influxd answered again).
const (
	minRetryBackoff = 100 * time.Millisecond
	maxRetryBackoff = 3 * time.Second
	// readBytes is the entry bytes one queue Read takes.
	readBytes = 1 << 20
)

// gathered is what the sink loop takes from the queue for one write.
type gathered struct {
	batches []queue.Batch
	recs    []*telemetry.EnrichedRecord
	routers []string // routers[i] brought recs[i]
	bad     []badEntry
	oldest  int64 // lowest ReceivedMs, 0 if none
}

// badEntry is a queue entry that is not a PublishBatch.
type badEntry struct {
	data []byte
	err  error
}

// sinkLoop reads the queue, writes to the sink and acks the queue until ctx
// ends; wctx bounds the last writes. One goroutine gathers batches from the
// queue; SinkWriters goroutines write them, so that the sink works on one
// write while the writer encodes the next and the network carries a third
// (a store like InfluxDB is idle between the writes of a single writer).
// Writes finish out of order: the queue acks out of order, and removes a
// record once every record before it is acked; the sinks are idempotent,
// so the order in which two batches land does not matter.
func (w *Writer) sinkLoop(ctx, wctx context.Context, q *queue.Queue, s sink.Sink) {
	work := make(chan gathered)
	var wg sync.WaitGroup
	for range w.cfg.SinkWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := range work {
				w.finish(ctx, wctx, q, s, g)
			}
		}()
	}
	defer func() {
		close(work)
		wg.Wait()
	}()
	for {
		g, err := w.gather(ctx, q)
		if len(g.batches) == 0 {
			if ctx.Err() != nil || errors.Is(err, queue.ErrClosed) {
				return
			}
			if err != nil {
				w.logger.Error("storage-writer: read queue", "err", err)
				if !backoff.Sleep(ctx, time.Second) {
					return
				}
			}
			continue
		}
		select {
		case work <- g:
		case <-ctx.Done():
			for _, b := range g.batches {
				q.Nack(b)
			}
			return
		}
	}
}

// finish writes g and acks its batches, or gives them back to the queue
// when ctx ended first.
func (w *Writer) finish(ctx, wctx context.Context, q *queue.Queue, s sink.Sink, g gathered) {
	w.track.start(g.oldest)
	ok := w.store(ctx, wctx, s, g)
	w.track.done(g.oldest)
	w.setBacklogAge()
	for _, b := range g.batches {
		if ok {
			q.Ack(b)
		} else {
			q.Nack(b)
		}
	}
}

// gather reads up to BatchRecords records, waiting at most BatchInterval
// after the first for more.
func (w *Writer) gather(ctx context.Context, q *queue.Queue) (gathered, error) {
	var g gathered
	b, err := q.Read(ctx, readBytes)
	if err != nil {
		return g, err
	}
	g.add(b)
	deadline := time.Now().Add(w.cfg.BatchInterval)
	for len(g.recs) < w.cfg.BatchRecords && ctx.Err() == nil {
		if b, err = q.TryRead(readBytes); err == nil && len(b.Entries) > 0 {
			g.add(b)
			continue
		}
		if err != nil || !time.Now().Before(deadline) {
			break
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		b, err = q.Read(rctx, readBytes)
		cancel()
		if err != nil {
			break
		}
		g.add(b)
	}
	return g, nil
}

func (g *gathered) add(b queue.Batch) {
	g.batches = append(g.batches, b)
	for _, e := range b.Entries {
		var pb telemetry.PublishBatch
		if err := proto.Unmarshal(e.Data, &pb); err != nil {
			g.bad = append(g.bad, badEntry{data: append([]byte(nil), e.Data...), err: err})
			continue
		}
		for _, r := range pb.GetRecords() {
			if r == nil {
				continue
			}
			g.recs = append(g.recs, r)
			g.routers = append(g.routers, pb.GetRouter())
			if ms := r.GetRecord().GetReceivedMs(); ms > 0 && (g.oldest == 0 || ms < g.oldest) {
				g.oldest = ms
			}
		}
	}
}

// store writes g to the sink, dead-lettering what it refuses for good. It
// returns true when every record is stored or dead-lettered, false when
// ctx ended first (the records stay queued).
func (w *Writer) store(ctx, wctx context.Context, s sink.Sink, g gathered) bool {
	for _, be := range g.bad {
		if !w.retryDeadLetter(ctx, func() error {
			return w.dl.writeEntries("", "undecodable entry: "+be.err.Error(), [][]byte{be.data})
		}) {
			return false
		}
		w.m.undecodable.Inc()
		w.logger.Error("storage-writer: queue entry is not a PublishBatch; dead-lettered", "err", be.err, "file", w.dl.path())
	}
	if len(g.recs) == 0 {
		return true
	}
	return w.writeIsolating(ctx, wctx, s, g.recs, g.routers, true) == nil
}

// writeIsolating writes recs; when the sink refuses them for good it
// bisects them to find the records at fault and dead-letters those. It
// returns nil when every record is stored or dead-lettered.
func (w *Writer) writeIsolating(ctx, wctx context.Context, s sink.Sink, recs []*telemetry.EnrichedRecord, routers []string, top bool) error {
	err := w.writeRetrying(ctx, wctx, s, recs)
	if err == nil || !sink.IsPermanent(err) {
		return err
	}
	if top {
		w.logger.Warn("storage-writer: sink refuses records for good; isolating them", "records", len(recs), "err", err)
	}
	if len(recs) == 1 {
		r := recs[0].GetRecord()
		if !w.retryDeadLetter(ctx, func() error { return w.dl.writeRecord(routers[0], err.Error(), recs[0]) }) {
			return ctx.Err()
		}
		w.m.deadLettered.Inc()
		w.dlRecords.Add(1)
		w.logger.Warn("storage-writer: record dead-lettered", "device", r.GetDeviceId(), "seq", r.GetReading().GetSeq(),
			"router", routers[0], "reason", err, "file", w.dl.path())
		return nil
	}
	mid := len(recs) / 2
	if err := w.writeIsolating(ctx, wctx, s, recs[:mid], routers[:mid], false); err != nil {
		return err
	}
	return w.writeIsolating(ctx, wctx, s, recs[mid:], routers[mid:], false)
}

// writeRetrying writes recs, retrying transient errors with jittered
// exponential backoff until it works, the sink refuses for good (returned),
// or ctx ends (the last error returned).
func (w *Writer) writeRetrying(ctx, wctx context.Context, s sink.Sink, recs []*telemetry.EnrichedRecord) error {
	retry := backoff.New(minRetryBackoff, maxRetryBackoff, nil)
	var failingSince time.Time
	for {
		start := time.Now()
		err := s.Write(wctx, recs)
		w.m.writeSeconds.Observe(time.Since(start).Seconds())
		if err == nil {
			w.sinkUp()
			w.m.sinkWrites.Inc()
			w.m.recordsWritten.Add(float64(len(recs)))
			w.m.writeRecords.Observe(float64(len(recs)))
			return nil
		}
		if sink.IsPermanent(err) {
			w.m.sinkErrors.WithLabelValues("permanent").Inc()
			return err
		}
		w.m.sinkErrors.WithLabelValues("transient").Inc()
		if ctx.Err() != nil {
			return err
		}
		if failingSince.IsZero() {
			failingSince = start
		}
		if w.retryFor > 0 && time.Since(failingSince) >= w.retryFor {
			return fmt.Errorf("sink failing for %v; giving up: %w", time.Since(failingSince).Round(time.Second), err)
		}
		w.sinkFailed(len(recs), err)
		if !backoff.Sleep(ctx, retry.Next()) {
			return err
		}
		w.setBacklogAge()
	}
}

// setBacklogAge sets the backlog-age gauge from the oldest record being
// written, 0 when nothing is.
func (w *Writer) setBacklogAge() {
	if ms := w.track.oldest(); ms > 0 {
		w.m.backlogAge.Set(max(0, time.Since(time.UnixMilli(ms)).Seconds()))
		return
	}
	w.m.backlogAge.Set(0)
}

// writing tracks the ReceivedMs of the oldest record of each write in
// flight, for the backlog-age gauge.
type writing struct {
	mu sync.Mutex
	ms map[int64]int // ReceivedMs -> writes in flight with it as oldest
}

func (t *writing) start(ms int64) {
	if ms <= 0 {
		return
	}
	t.mu.Lock()
	if t.ms == nil {
		t.ms = map[int64]int{}
	}
	t.ms[ms]++
	t.mu.Unlock()
}

func (t *writing) done(ms int64) {
	if ms <= 0 {
		return
	}
	t.mu.Lock()
	if t.ms[ms]--; t.ms[ms] <= 0 {
		delete(t.ms, ms)
	}
	t.mu.Unlock()
}

// oldest returns the lowest ReceivedMs of the writes in flight, 0 if none.
func (t *writing) oldest() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var o int64
	for ms := range t.ms {
		if o == 0 || ms < o {
			o = ms
		}
	}
	return o
}

// retryDeadLetter runs write until it works or ctx ends, reporting whether
// it worked. A dead-letter file that cannot be written is an outage like a
// sink's: the records stay queued.
func (w *Writer) retryDeadLetter(ctx context.Context, write func() error) bool {
	retry := backoff.New(minRetryBackoff, maxRetryBackoff, nil)
	logged := false
	for {
		err := write()
		if err == nil {
			return true
		}
		w.m.sinkErrors.WithLabelValues("dead_letter").Inc()
		if !logged {
			w.logger.Error("storage-writer: cannot write the dead-letter file; retrying", "err", err)
			logged = true
		}
		if !backoff.Sleep(ctx, retry.Next()) {
			return false
		}
	}
}
