package router

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"sync"
	"time"
	"unsafe"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

const (
	// fanoutReadBytes is the main-queue entry bytes the fan-out takes at
	// once: one group commit per subscriber queue covers them all.
	fanoutReadBytes = 1 << 20
	// maxPublishBytes bounds one PublishBatch; a larger one (not expected:
	// a main entry is at most a 1 MiB record) is split into several with
	// the same seq.
	maxPublishBytes = 3 << 20
	// fanoutRetry is how often the fan-out retries appends refused by a
	// full subscriber queue, and looks for a first subscriber.
	fanoutRetry = 100 * time.Millisecond
	// builtCacheBytes bounds the PublishBatches built for the live lane
	// that are kept for the durable fan-out, so that each main entry is
	// decoded, enriched and serialized once. Past it (the fan-out blocked,
	// or far behind) the fan-out builds them again itself when it gets
	// there.
	builtCacheBytes = 8 << 20
)

func slogLogLogger(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
}

// fanoutLoop moves the main queue to every subscriber queue, acking a main
// entry only once every subscriber queue holds it. With no durable
// subscriber known it waits: nothing leaves the main queue without a
// durable home. The live lane does not wait for it: each batch is offered
// live when the router receives it (livepub.go), and what was built for
// that is taken from r.built here.
func (r *Router) fanoutLoop(ctx context.Context) {
	if !r.waitRegistry(ctx) {
		return
	}
	r.openLiveLane()
	cache := r.built
	waiting := false
	for {
		if len(r.snapshotSubs()) == 0 {
			if !waiting {
				waiting = true
				r.m.fanoutBlocked.Set(1)
				r.logger.Warn("router: no durable subscriber known yet; the fan-out holds the main queue until one subscribes or is listed in -subscribers")
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(fanoutRetry):
			}
			continue
		}
		if waiting {
			waiting = false
			r.m.fanoutBlocked.Set(0)
		}
		b, err := r.q.Read(ctx, fanoutReadBytes)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, queue.ErrClosed) {
				return
			}
			r.logger.Error("router: fan-out: read main queue; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		pbs, records := r.publishBatches(b, cache)
		if !r.appendAll(ctx, pbs) {
			r.q.Nack(b)
			return
		}
		r.q.Ack(b)
		r.m.fanoutEntries.Add(float64(len(b.Entries)))
		r.m.fanoutRecords.Add(float64(records))
	}
}

// waitRegistry holds the lanes until the registry has a copy in force (a
// follower with no cache whose control plane has not answered yet):
// nothing is published unenriched. Frontends' batches are stored and acked
// meanwhile. It returns false if ctx ended first.
func (r *Router) waitRegistry(ctx context.Context) bool {
	if r.registry == nil || r.registry.Ready() == nil {
		return true
	}
	r.m.fanoutBlocked.Set(1)
	r.logger.Info("router: waiting for the device registry before publishing (no cached copy, and the control plane has not answered yet); batches are stored meanwhile")
	if err := r.registry.Wait(ctx); err != nil {
		return false
	}
	r.m.fanoutBlocked.Set(0)
	r.logger.Info("router: the device registry is in force; publishing", "devices", r.registry.Current().Len())
	return true
}

// publishBatches turns main-queue entries into serialized PublishBatches,
// enriched, taking those built already for the live lane from cache (they
// lack only the entry's seq, appended here).
func (r *Router) publishBatches(b queue.Batch, cache *builtCache) ([][]byte, int) {
	out := make([][]byte, 0, len(b.Entries))
	records := 0
	for _, e := range b.Entries {
		bt, ok := cache.take(e.Data)
		if ok {
			// A new slice: offerLive may still be reading bt.pbs.
			pbs := make([][]byte, len(bt.pbs))
			for i, pb := range bt.pbs {
				pbs[i] = appendSeq(pb, e.Seq)
			}
			bt.pbs = pbs
		} else {
			r.m.fanoutRebuilt.Inc()
			n, _ := forward.CountRecords(e.Data) // an error: buildEntry says it
			if bt, ok = r.buildEntry(e, n, true); !ok {
				continue
			}
		}
		// Counted here, where each entry passes once.
		r.m.enrichMisses.Add(float64(bt.misses))
		records += bt.records
		out = append(out, bt.pbs...)
	}
	return out, records
}

// built is one main-queue entry made ready for the lanes.
type built struct {
	pbs     [][]byte // serialized PublishBatches (several when split)
	records int
	misses  int // records of devices the registry does not know
	size    int // bytes of pbs
}

// buildEntry enriches the records of one main-queue entry and serializes
// them as one or more PublishBatches. It works on the wire bytes: each
// Record goes out as the frontend stored it, beside its Enrichment, and no
// Reading is decoded (telemetry.WalkBatchRecords, AppendPublishBatch); the
// bytes are those proto.Marshal would write for the decoded messages. n is
// the entry's record count (forward.CountRecords; ingest knows it), which
// sizes the per-record slices at once: a main entry holds up to thousands
// of records, and growing them by doubling allocated and copied twice
// their size. loud says whether a bad entry is counted and logged (by the
// fan-out, not by the live lane too).
func (r *Router) buildEntry(e queue.Entry, n int, loud bool) (built, bool) {
	var reg *registry.Registry
	if r.registry != nil {
		reg = r.registry.Current()
	}
	var (
		recs = make([]telemetry.RawEnriched, 0, n)
		enc  []byte // every distinct enrichment, encoded; recs' Enrichment slice it (few: one per run of a device)
		offs = make([][2]int, 0, n)
		last []byte // the previous record's device: a frame's records share one
		cur  [2]int // its enrichment in enc
		miss bool   // it is unknown to the registry
		bt   built
	)
	err := telemetry.WalkBatchRecords(e.Data, func(rec, dev []byte) {
		recs = append(recs, telemetry.RawEnriched{Record: rec, HasEnrichment: reg != nil})
		if reg == nil {
			return
		}
		if len(recs) == 1 || string(dev) != string(last) {
			// The key is only read by Lookup's map index; the Device it
			// returns is dropped here.
			d, ok := reg.Lookup(unsafe.String(unsafe.SliceData(dev), len(dev)))
			start := len(enc)
			enc = telemetry.AppendEnrichment(enc, d.Fleet, d.Class, d.Region)
			cur, last, miss = [2]int{start, len(enc)}, dev, !ok
		}
		if miss {
			bt.misses++
		}
		offs = append(offs, cur)
	})
	if err != nil {
		if loud {
			// Checked on ingest, so a bug or a damaged disk: say so loudly.
			r.m.fanoutBad.Inc()
			r.logger.Error("router: fan-out: main queue entry is not a Batch; skipped", "seq", e.Seq, "err", err)
		}
		return built{}, false
	}
	for i := range offs {
		recs[i].Enrichment = enc[offs[i][0]:offs[i][1]]
	}
	bt.records = len(recs)
	bt.pbs = r.appendSplit(nil, e.Seq, recs)
	for _, b := range bt.pbs {
		bt.size += len(b)
	}
	return bt, true
}

// publishLimit is the largest PublishBatch built, and the most bytes one
// append to a subscriber queue carries: maxPublishBytes, or a quarter of
// -subscriber-queue-max-bytes when that is smaller, so that an append
// always fits in an empty subscriber queue.
func (r *Router) publishLimit() int {
	if b := r.cfg.SubscriberQueueMaxBytes; b > 0 && b/4 < maxPublishBytes {
		return int(b / 4)
	}
	return maxPublishBytes
}

// appendSplit serializes recs as a PublishBatch of seq, split into several
// with the same seq when one would exceed publishLimit, and appends them to
// out. Each leaves room for the seq field appendSeq adds without a copy.
func (r *Router) appendSplit(out [][]byte, seq uint64, recs []telemetry.RawEnriched) [][]byte {
	size := telemetry.PublishBatchSize(r.cfg.ID, seq, recs)
	if len(recs) <= 1 || size <= r.publishLimit() {
		return append(out, telemetry.AppendPublishBatch(make([]byte, 0, size+maxSeqField), r.cfg.ID, seq, recs))
	}
	h := len(recs) / 2
	return r.appendSplit(r.appendSplit(out, seq, recs[:h]), seq, recs[h:])
}

// appendAll appends entries to every subscriber queue, concurrently (each
// queue's group commit covers the lot). A queue that refuses (full, disk
// failing) is retried until it takes them, its subscriber is dropped, or
// ctx ends (false: the caller gives the main entries back).
func (r *Router) appendAll(ctx context.Context, entries [][]byte) bool {
	if len(entries) == 0 {
		return true
	}
	appended := map[*subscriber]int{} // entries already in each queue
	blocked := false
	defer func() {
		if blocked {
			r.m.fanoutBlocked.Set(0)
			r.logger.Info("router: fan-out resumed")
		}
	}()
	for {
		var pending []*subscriber
		for _, s := range r.snapshotSubs() {
			if appended[s] < len(entries) && !s.dropped.Load() {
				pending = append(pending, s)
			}
		}
		if len(pending) == 0 {
			return true
		}
		errs := make([]error, len(pending))
		ns := make([]int, len(pending))
		var wg sync.WaitGroup
		for i, s := range pending {
			from := appended[s]
			wg.Go(func() { ns[i], errs[i] = s.appendEntries(entries[from:]) })
		}
		wg.Wait()
		ok := true
		for i, s := range pending {
			appended[s] += ns[i]
			switch err := errs[i]; {
			case err == nil:
			case errors.Is(err, queue.ErrClosed) && s.dropped.Load():
				appended[s] = len(entries)
			default:
				ok = false
				if !blocked {
					blocked = true
					r.m.fanoutBlocked.Set(1)
					r.logger.Warn("router: fan-out waits: a subscriber queue refuses appends; the live lane goes on, the main queue holds what arrives, and back-pressure reaches the frontends when it is full (until the subscriber drains, or -subscriber-retention drops it)",
						"subscriber", s.name, "err", err)
				}
			}
		}
		if ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(fanoutRetry):
		}
	}
}
