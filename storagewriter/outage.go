package storagewriter

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/storagewriter/sink"
)

// outageSummaryInterval is how often a sink outage that lasts is
// summarised in the log.
const outageSummaryInterval = 5 * time.Minute

// outage is the state of a sink outage: from the first failed write (or
// check) to the next one that works. The log gets one line when it begins,
// a summary at most every `every` while it lasts, and one line when it
// ends, however many retries the sink writers make meanwhile (at up to one
// per 3 s each, a line per retry was ~1,200 lines an hour).
type outage struct {
	every time.Duration

	mu          sync.Mutex
	down        bool
	since       time.Time
	attempts    int // failed attempts since
	lastErr     error
	lastSummary time.Time
}

// sinkFailed records a write (or check) that failed transiently: the first
// begins an outage and is logged; later ones are counted, and summarised
// every outage.every. records is what the failed write held (0 for a
// check).
func (w *Writer) sinkFailed(records int, err error) {
	o := &w.out
	o.mu.Lock()
	defer o.mu.Unlock()
	now := time.Now()
	o.attempts++
	o.lastErr = err
	if !o.down {
		o.down, o.since, o.attempts, o.lastSummary = true, now, 1, now
		w.m.sinkDown.Set(1)
		w.logger.Log(context.Background(), outageLevel(err), "storage-writer: sink outage: holding the records in the queue and retrying with backoff (one line now, a summary every "+o.every.String()+" while it lasts, one when it ends)",
			"records", records, "err", err)
		return
	}
	if now.Sub(o.lastSummary) < o.every {
		return
	}
	o.lastSummary = now
	args := []any{"down_for", now.Sub(o.since).Round(time.Second), "failed_attempts", o.attempts}
	if q := w.q.Load(); q != nil {
		n, b := q.Depth()
		args = append(args, "queued_entries", n, "queued_bytes", b)
	}
	args = append(args, "err", err)
	w.logger.Log(context.Background(), outageLevel(err), "storage-writer: sink still down; the queue holds the records", args...)
}

// sinkUp records a write (or check) that worked: the end of an outage, if
// one was on.
func (w *Writer) sinkUp() {
	o := &w.out
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.down {
		return
	}
	w.m.sinkDown.Set(0)
	w.logger.Info("storage-writer: sink is back; draining the backlog", "down_for", time.Since(o.since).Round(time.Millisecond),
		"failed_attempts", o.attempts)
	o.down, o.attempts, o.lastErr = false, 0, nil
}

// outageLevel is error when an operator must act (the store refuses the
// writer's configuration), warn when the store is merely unavailable.
func outageLevel(err error) slog.Level {
	if sink.IsMisconfigured(err) {
		return slog.LevelError
	}
	return slog.LevelWarn
}
