package router

import (
	"context"
	"log"
	"log/slog"
	"time"
	"unsafe"

	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

const (
	// maxPublishBytes bounds one PublishBatch; a larger one (not expected:
	// a main entry is at most a 1 MiB record, and enrichment adds far less
	// than as much again) is split into several, which the store lane
	// sends concatenated as one entry (publishEntries).
	maxPublishBytes = 3 << 20
	// fanoutRetry is how often the lanes look for a first subscriber and
	// for cursors that are full.
	fanoutRetry = 100 * time.Millisecond
	// builtCacheBytes bounds the PublishBatches built for the live lane
	// (or by a subscriber's sender) that are kept for the subscribers'
	// senders, so that each main entry is decoded, enriched and serialized
	// once. Past it (a subscriber far behind) a sender builds them again
	// itself when it gets there.
	builtCacheBytes = 8 << 20
)

func slogLogLogger(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
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

// publishLimit is the largest PublishBatch built: maxPublishBytes.
func (r *Router) publishLimit() int { return maxPublishBytes }

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
