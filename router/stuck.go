package router

import (
	"time"
)

// stuckReport is what a subscriber's sender says, at most once per
// storeTiming.stuckEvery, while its cursor has been full for
// storeTiming.stuckAfter: the state that shows why it does not catch up.
// Issue 20's stall (a batch the writer refused as full on every resend)
// showed only in debug lines; this line names it (busy answers, their
// reason, the largest batch in flight) at warning level.
type stuckReport struct {
	fullSince, last time.Time
	busy, acked     int    // busy answers and runs acked since the last line
	lastBusy        string // the reason of the last busy answer
}

// subSenderState is the part of a sender's loop the report shows.
type subSenderState struct {
	inflight     []*srun
	held, window int // batches read and not acked; the most allowed
	up           bool
	backoffUntil time.Time
}

// reportStuck logs st's line when it is due (see stuckReport).
func (s *subscriber) reportStuck(st *stuckReport, now time.Time, ss subSenderState) {
	if !s.cur.Full() {
		st.fullSince = time.Time{}
		return
	}
	if st.fullSince.IsZero() {
		*st = stuckReport{fullSince: now, last: st.last}
		return
	}
	t := s.r.timing
	if now.Sub(st.fullSince) < t.stuckAfter || (!st.last.IsZero() && now.Sub(st.last) < t.stuckEvery) {
		return
	}
	var unsent, largest int
	var oldest *srun
	for _, rn := range ss.inflight {
		if !rn.sent {
			unsent++
		}
		largest = max(largest, rn.bytes)
		if oldest == nil {
			oldest = rn
		}
	}
	_, lag := s.cur.Lag()
	args := []any{
		"full_for", now.Sub(st.fullSince).Round(time.Second), "lag_bytes", lag, "bound", s.cur.MaxBytes(),
		"connected", ss.up, "batches_held", ss.held, "window", ss.window,
		"runs_in_flight", len(ss.inflight), "runs_waiting_to_send", unsent, "largest_run_bytes", largest,
		"runs_acked", st.acked, "busy_answers", st.busy, "last_busy_reason", st.lastBusy,
		"backoff_left", max(0, ss.backoffUntil.Sub(now)).Round(time.Millisecond),
	}
	if oldest != nil {
		args = append(args, "oldest_first", oldest.first, "oldest_last", oldest.last, "oldest_sent", oldest.sent)
	}
	s.log.Warn("router: subscriber's cursor is still full; its sender's state (counts since the last such line)", args...)
	st.last, st.busy, st.acked = now, 0, 0
}
