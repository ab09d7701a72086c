package router

import (
	"context"
	"errors"
	"log"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

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
			if bt, ok = r.buildEntry(e, true); !ok {
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

// buildEntry decodes one main-queue entry, enriches its records and
// serializes them as one or more PublishBatches. loud says whether a bad
// entry is counted and logged (by the fan-out, not by the live lane too).
func (r *Router) buildEntry(e queue.Entry, loud bool) (built, bool) {
	var in telemetry.Batch
	if err := proto.Unmarshal(e.Data, &in); err != nil {
		if loud {
			// Checked on ingest, so a bug or a damaged disk: say so loudly.
			r.m.fanoutBad.Inc()
			r.logger.Error("router: fan-out: main queue entry is not a Batch; skipped", "seq", e.Seq, "err", err)
		}
		return built{}, false
	}
	var reg *registry.Registry
	if r.registry != nil {
		reg = r.registry.Current()
	}
	bt := built{records: len(in.Records)}
	pb := &telemetry.PublishBatch{Router: r.cfg.ID, Seq: e.Seq, Records: make([]*telemetry.EnrichedRecord, len(in.Records))}
	for i, rec := range in.Records {
		er := &telemetry.EnrichedRecord{Record: rec}
		if reg != nil {
			if d, ok := reg.Lookup(rec.GetDeviceId()); ok {
				er.Enrichment = &telemetry.Enrichment{Fleet: d.Fleet, VehicleClass: d.Class, Region: d.Region}
			} else {
				er.Enrichment = &telemetry.Enrichment{}
				bt.misses++
			}
		}
		pb.Records[i] = er
	}
	bt.pbs = r.marshalSplit(pb)
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

// marshalSplit serializes pb, split into several PublishBatches with the
// same seq when it would exceed publishLimit.
func (r *Router) marshalSplit(pb *telemetry.PublishBatch) [][]byte {
	if n := proto.Size(pb); len(pb.Records) <= 1 || n <= r.publishLimit() {
		// Room for the seq appendSeq adds without a copy.
		out, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 0, n+maxSeqField), pb)
		if err != nil {
			r.logger.Error("router: fan-out: marshal", "seq", pb.Seq, "err", err) // a bug
			return nil
		}
		return [][]byte{out}
	}
	h := len(pb.Records) / 2
	a := &telemetry.PublishBatch{Router: pb.Router, Seq: pb.Seq, Records: pb.Records[:h]}
	b := &telemetry.PublishBatch{Router: pb.Router, Seq: pb.Seq, Records: pb.Records[h:]}
	return append(r.marshalSplit(a), r.marshalSplit(b)...)
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
