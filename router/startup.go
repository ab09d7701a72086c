package router

// What a router rebuilds at start and keeps in step: its queue's close, the dedup state from the journal or a scan of the queue.

import (
	"context"
	"fmt"
	"time"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

func (r *Router) closeQueue() error {
	if err := r.q.Close(); err != nil {
		return fmt.Errorf("router: close queue: %w", err)
	}
	return nil
}

// openDedup loads what the router has stored, from the dedup journal; the
// first time (no journal yet) from the queue itself.
func (r *Router) openDedup(ctx context.Context) (*dedup, error) {
	state, found, err := readJournal(r.cfg.QueueDir, r.logger)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	if !found {
		if state, err = r.scanQueue(ctx); err != nil {
			return nil, err
		}
	}
	j, err := openJournal(r.cfg.QueueDir, state, r.m, r.logger)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	dd := newDedup(r.cfg.DedupIntervals, j, r.m, r.logger)
	n := 0
	for sender, ivs := range state {
		dd.load(sender, ivs...)
		n += len(ivs)
	}
	from := "journal"
	if !found {
		from = "queue"
	}
	r.logger.Info("router: duplicates will be recognised", "senders", len(state), "intervals", n, "from", from)
	return dd, nil
}

// scanQueue reads the whole queue (Queue.Scan: nothing taken from any
// cursor) for the sequences stored. It runs only when there is no journal.
func (r *Router) scanQueue(ctx context.Context) (map[string][]forward.Interval, error) {
	state := map[string][]forward.Interval{}
	sets := map[string]*forward.SeqSet{}
	err := r.q.Scan(ctx, func(e queue.Entry) error {
		si, err := forward.ParseStored(e.Data)
		if err != nil {
			r.logger.Warn("router: queue entry without a sender range; not counted for deduplication", "seq", e.Seq, "err", err)
			return nil
		}
		s := sets[si.Sender]
		if s == nil {
			s = forward.NewSeqSet(r.cfg.DedupIntervals)
			sets[si.Sender] = s
		}
		s.Add(si.First, si.Last)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("router: scan queue: %w", err)
	}
	for sender, s := range sets {
		state[sender] = s.Intervals()
	}
	return state, nil
}

func (r *Router) syncLoop(stop <-chan struct{}) {
	t := time.NewTicker(journalSync)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			r.dd.sync()
		}
	}
}
