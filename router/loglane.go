package router

// The durable lane as one log read through a cursor per subscriber
// (doc.go, "The durable lane"): the main queue is the log; each durable
// subscriber's sender reads it through its own queue.Cursor and sends
// each main entry as a PublishBatch with the entry's seq.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// lanesLoop opens the lanes once the registry is in force (nothing is
// published unenriched), then watches the subscribers: while none is
// known the log holds everything (nothing leaves it without a durable
// home), and a subscriber whose cursor is full is said once per episode.
func (r *Router) lanesLoop(ctx context.Context) {
	if !r.waitRegistry(ctx) {
		return
	}
	r.openLiveLane()
	close(r.lanesReady)
	t := time.NewTicker(fanoutRetry)
	defer t.Stop()
	waiting := false
	for {
		subs := r.snapshotSubs()
		switch {
		case len(subs) == 0 && !waiting:
			waiting = true
			r.m.fanoutBlocked.Set(1)
			r.logger.Warn("router: no durable subscriber known yet; the log holds what arrives until one subscribes or is listed in -subscribers")
		case len(subs) > 0 && waiting:
			waiting = false
			r.m.fanoutBlocked.Set(0)
		}
		for _, s := range subs {
			full := s.cur.Full()
			if full != s.full {
				_, b := s.cur.Lag()
				if full {
					r.logger.Warn("router: subscriber is as far behind as -subscriber-queue-max-bytes allows; the log holds its backlog, the other subscribers go on, and back-pressure reaches the frontends when the log is full (until it drains, or -subscriber-retention drops it)",
						"subscriber", s.name, "lag_bytes", b, "bound", s.cur.MaxBytes())
				} else {
					r.logger.Info("router: subscriber is within its bound again", "subscriber", s.name, "lag_bytes", b)
				}
				s.full = full
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// waitLanes holds a subscriber's reads until the lanes are open; false if
// ctx ended first.
func (r *Router) waitLanes(ctx context.Context) bool {
	select {
	case <-r.lanesReady:
		return true
	case <-ctx.Done():
		return false
	}
}

// readBatch reads the subscriber's next batch: from its queue of before
// the log while that holds anything, then from its cursor.
func (s *subscriber) readBatch(ctx context.Context, maxBytes int) (*sbatch, error) {
	s.oldMu.Lock()
	old := s.old
	s.oldMu.Unlock()
	if old != nil {
		b, err := old.TryRead(maxBytes)
		if err != nil && !errors.Is(err, queue.ErrClosed) {
			return nil, err
		}
		if len(b.Entries) > 0 {
			// PublishBatches already, with the seq of that queue.
			return &sbatch{qb: b, ents: b.Entries, src: old}, nil
		}
		s.oldDrained.Store(true)
		s.oldAcked(old)
	}
	b, err := s.cur.Read(ctx, maxBytes)
	if err != nil {
		return nil, err
	}
	return &sbatch{qb: b, ents: s.r.publishEntries(b), src: s.cur}, nil
}

// oldAcked deletes the subscriber's queue of before the log once it has
// been read to its end and everything read from it is acked.
func (s *subscriber) oldAcked(src source) {
	s.oldMu.Lock()
	defer s.oldMu.Unlock()
	if s.old == nil || src != source(s.old) || !s.oldDrained.Load() || s.old.Inflight() > 0 {
		return
	}
	err := s.old.Close()
	s.old = nil
	err = errors.Join(err, os.RemoveAll(s.dir))
	if err != nil {
		s.log.Error("router: subscriber's queue of before the log is drained; deleting it failed (delete QUEUE_DIR/subs/NAME by hand)", "dir", s.dir, "err", err)
		return
	}
	s.log.Info("router: subscriber's queue of before the log is drained and deleted; it reads the log from here on", "dir", s.dir)
}

// publishEntries turns log entries (main-queue entries: frontend batches)
// into PublishBatches with the entry's seq, enriched. What was built at
// receipt for the live lane is taken from r.built, shared by every
// subscriber (each adds the seq to a copy); an entry not there is built
// and put there for the others. An entry that cannot be built is left
// out (counted and logged by buildEntry).
func (r *Router) publishEntries(b queue.Batch) []queue.Entry {
	out := make([]queue.Entry, 0, len(b.Entries))
	for _, e := range b.Entries {
		bt, ok := r.built.get(e.Data)
		if !ok {
			r.m.fanoutRebuilt.Inc()
			n, _ := forward.CountRecords(e.Data) // an error: buildEntry says it
			if bt, ok = r.buildEntry(queue.Entry{Data: e.Data}, n, true); !ok {
				continue
			}
			r.m.enrichMisses.Add(float64(bt.misses))
			if si, err := forward.ParseStored(e.Data); err == nil {
				r.built.put(builtKey{si.Sender, si.First, si.Last}, bt)
			}
		}
		size := maxSeqField
		for _, pb := range bt.pbs {
			size += len(pb)
		}
		// Several PublishBatches of one entry (not expected: see
		// maxPublishBytes) go as one: serialized messages concatenated
		// decode as their merge.
		pb := make([]byte, 0, size)
		for _, p := range bt.pbs {
			pb = append(pb, p...)
		}
		out = append(out, queue.Entry{Seq: e.Seq, Data: appendSeq(pb, e.Seq)})
	}
	return out
}

// addSubLocked opens a subscriber's cursor in the log (and its queue of
// before the log, if it has one: drained first) and starts its sender.
// startHead says where a cursor new to the log starts; a subscriber
// migrating from its own queue starts at the head: the main queue holds
// what the old fan-out had not yet given every subscriber queue.
func (r *Router) addSubLocked(name string, startHead bool) (*subscriber, error) {
	dir := filepath.Join(r.subsDir(), name)
	log := r.logger.With("subscriber", name)
	var old *queue.Queue
	if _, err := os.Stat(filepath.Join(dir, "segments")); err == nil {
		q, err := queue.Open(dir, queue.Options{
			// Nothing is appended to it any more: unbounded, so that it
			// takes no share of the volume from the log.
			Name: "sub-" + name, MaxBytes: -1, MaxRecordBytes: subRecordBytes, Sync: r.queueSync,
		}, log, r.reg)
		if err != nil {
			return nil, fmt.Errorf("router: open the queue of subscriber %s of before the log: %w", name, err)
		}
		n, b := q.Depth()
		log.Info("router: subscriber has a queue of before the log; it is sent first, then the subscriber reads the log", "entries", n, "bytes", b)
		old, startHead = q, true
	}
	start := queue.StartTail
	if startHead {
		start = queue.StartHead
	}
	cur, err := r.q.OpenCursor(name, queue.CursorOptions{Start: start, MaxBytes: r.cfg.SubscriberQueueMaxBytes})
	if err != nil {
		if old != nil {
			_ = old.Close()
		}
		return nil, fmt.Errorf("router: open the cursor of subscriber %s: %w", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscriber{
		name: name, dir: dir, cur: cur, old: old, r: r, log: log,
		events: make(chan subEvent, 1024), cancel: cancel, done: make(chan struct{}),
		sent:      r.m.subSent.WithLabelValues(name),
		acked:     r.m.subAcked.WithLabelValues(name),
		busy:      r.m.subBusy.WithLabelValues(name),
		resent:    r.m.subResent.MustCurryWith(map[string]string{"subscriber": name}),
		connected: r.m.subConnected.WithLabelValues(name),
	}
	s.lastHeard.Store(time.Now().UnixNano())
	r.subs[name] = s
	r.m.subscribers.Set(float64(len(r.subs)))
	go s.run(ctx)
	return s, nil
}

// dropOrphanCursorsLocked deletes the cursors of the log that belong to no
// subscriber (one dropped by retention whose set was not persisted): they
// would hold the log's head for ever.
func (r *Router) dropOrphanCursorsLocked() {
	for _, n := range r.q.CursorNames() {
		if _, ok := r.subs[n]; ok {
			continue
		}
		err := r.q.DeleteCursor(n)
		r.logger.Warn("router: deleted a cursor of the log that belongs to no subscriber", "cursor", n, "err", err)
	}
}

// closeSub stops nothing (the sender is stopped already): it writes the
// cursor's position and closes the queue of before the log.
func (s *subscriber) closeSub() error {
	err := s.cur.Close()
	s.oldMu.Lock()
	if s.old != nil {
		err = errors.Join(err, s.old.Close())
		s.old = nil
	}
	s.oldMu.Unlock()
	if err != nil {
		return fmt.Errorf("router: close subscriber %s: %w", s.name, err)
	}
	return nil
}

// deleteSub deletes the subscriber's cursor and its queue of before the
// log; it returns the entries and bytes it had not acked.
func (s *subscriber) deleteSub() (int64, int64, error) {
	n, b := s.cur.Lag()
	err := s.r.q.DeleteCursor(s.name)
	s.oldMu.Lock()
	if s.old != nil {
		on, ob := s.old.Depth()
		n, b = n+on, b+ob
		err = errors.Join(err, s.old.Close())
		s.old = nil
	}
	s.oldMu.Unlock()
	return n, b, errors.Join(err, os.RemoveAll(s.dir))
}
