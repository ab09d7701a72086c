package router

import (
	"encoding/binary"
	"slices"
	"sync"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// The live lane publishes at receipt: a batch is offered live when the
// router has it and dedup says which of its sequences are new, before the
// router's own append and fsync (the batch is durable at its frontend
// already, and live is best effort), not when the main queue has
// committed it, and never after the durable fan-out. What is built for it
// (decoded, enriched, serialized, without a seq) is kept in r.built for
// the fan-out, which adds the main entry's seq, so that an entry is built
// once. See doc.go, "The live lane", for what a live client can see that
// the durable lanes do not.

// maxSeqField is the most bytes appendSeq adds: a tag and a varint.
const maxSeqField = 1 + binary.MaxVarintLen64

// pbFieldSeq is telemetry.PublishBatch's seq field.
const pbFieldSeq protowire.Number = 2

// appendSeq sets the seq of a serialized PublishBatch that has none by
// appending the field (protobuf reads fields in any order). pb's spare
// capacity is used when there is room: the caller must own it.
func appendSeq(pb []byte, seq uint64) []byte {
	pb = protowire.AppendTag(pb, pbFieldSeq, protowire.VarintType)
	return protowire.AppendVarint(pb, seq)
}

// openLiveLane starts offering batches live; fanoutLoop calls it once the
// registry is in force (nothing is published unenriched).
func (r *Router) openLiveLane() {
	r.liveMu.Lock()
	defer r.liveMu.Unlock()
	if !r.liveStopped {
		r.liveOpen.Store(true)
	}
}

// closeLiveLane stops offering (for good) and closes the lane: the
// appends under way at shutdown must not offer to a closed publisher.
func (r *Router) closeLiveLane() {
	r.liveMu.Lock()
	r.liveOpen.Store(false)
	r.liveStopped = true
	r.liveMu.Unlock()
	r.live.close()
}

// buildLive builds the main entries ents (of sender, covering ivs, holding
// recs records each) for the lanes while the live lane is open: each is
// kept for the fan-out and returned for offerLive. Nil when the lane is not
// open.
func (r *Router) buildLive(sender string, ents [][]byte, ivs []forward.Interval, recs []int) []built {
	if !r.liveOpen.Load() {
		return nil
	}
	out := make([]built, 0, len(ents))
	for i, e := range ents {
		bt, ok := r.buildEntry(queue.Entry{Data: e}, recs[i], false) // seq 0: none serialized
		if !ok {
			continue // cannot happen (ingest built e); the fan-out says so
		}
		r.built.put(builtKey{sender, ivs[i].First, ivs[i].Last}, bt)
		r.m.enrichMisses.Add(float64(bt.misses)) // counted where an entry is built
		out = append(out, bt)
	}
	return out
}

// offerLive offers what buildLive built to the live lane, each
// PublishBatch with the next number of the lane's own sequence (1, 2, …
// from the router's start; a gap at a subscriber is what the lane lost).
// Numbering and offering under one lock keep the numbers in order on the
// wire. It never blocks on a subscriber.
func (r *Router) offerLive(bts []built) {
	if len(bts) == 0 {
		return
	}
	r.liveMu.Lock()
	defer r.liveMu.Unlock()
	if !r.liveOpen.Load() {
		return
	}
	for _, bt := range bts {
		for _, pb := range bt.pbs {
			r.liveSeq++
			// A copy: the fan-out appends the main entry's seq to pb in place.
			r.live.offer(appendSeq(slices.Clip(pb), r.liveSeq))
		}
	}
}

// builtKey names a main entry by what ingest and the fan-out both know
// before decoding it: its sender and sender sequences (forward.ParseStored).
type builtKey struct {
	sender      string
	first, last uint64
}

// builtCache hands what was built for the live lane to the subscribers'
// senders, within max bytes, the oldest evicted first: every sender reads
// the same entry from the log and takes it from here (each adds the seq to
// a copy). Entries no sender reads (an append that failed: the frontend
// resends, maybe grouped otherwise) age out the same way.
type builtCache struct {
	mu    sync.Mutex
	max   int
	bytes int
	items map[builtKey]built
	order []builtKey // put order; may hold keys taken since
}

func newBuiltCache(max int) *builtCache {
	return &builtCache{max: max, items: map[builtKey]built{}}
}

// put keeps bt for k, evicting the oldest past max.
func (c *builtCache) put(k builtKey, bt built) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.items[k]; ok {
		c.bytes -= old.size
	}
	c.items[k] = bt
	c.bytes += bt.size
	c.order = append(c.order, k)
	for c.bytes > c.max && len(c.order) > 0 {
		k0 := c.order[0]
		c.order = c.order[1:]
		if it, ok := c.items[k0]; ok {
			delete(c.items, k0)
			c.bytes -= it.size
		}
	}
	// Keys replaced stay in order: compact it when they are most of it,
	// so that it stays within a few times the items.
	if len(c.order) > 64 && len(c.order) > 4*len(c.items) {
		c.order = slices.DeleteFunc(c.order, func(k builtKey) bool { _, ok := c.items[k]; return !ok })
	}
}

// get returns what was built for the main entry data. It stays for the
// other subscribers' senders until it ages out (put's bound).
func (c *builtCache) get(data []byte) (built, bool) {
	si, err := forward.ParseStored(data)
	if err != nil {
		return built{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	bt, ok := c.items[builtKey{si.Sender, si.First, si.Last}]
	return bt, ok
}
