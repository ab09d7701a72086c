package api

import (
	"sync"
	"time"
)

// holds closes a race between a device's report and a dispatch, on
// PostgreSQL, where a create and a report commit in parallel (db_group.go's
// lanes).
//
// A command created while the device's previous one is in flight (sent,
// not yet received) is queued behind it, and the dispatch that its create
// wakes finds it held back. Its turn comes with the previous command's
// report, whose statement also says whether the device has a command
// queued (commands_reports.go), so that the report wakes the dispatch
// again only then. On SQLite that answer is exact: one writer orders the
// two. On PostgreSQL the report's statement may run before the create
// commits, answer "nothing queued", and commit after the dispatch woken
// by the create found the command held: nothing woke the dispatch again,
// and the command waited for the next full scan, up to -command-poll
// (measured: single commands of 0.5–0.8 s at 500 commands/s).
//
// So each side leaves a mark and reads the other's, under one lock: a
// dispatch marks the devices it found held back, after its read; a report
// marks its devices, after its commit. Whichever comes second wakes the
// dispatch: a report finds the device held, or a dispatch finds a report
// committed since its read began (its read may have missed it).
//
// Only reports to this replica need it: another replica's report reaches
// this one by NOTIFY after its commit, and wakes the device's frontend
// whatever it says (remoteCommands).
type holds struct {
	mu       sync.Mutex
	held     map[string]time.Time // device → when a dispatch found its next command held back
	reported map[string]time.Time // device → when a report of it last committed
	pruned   time.Time
}

// holdsKeep is how long a mark is kept. A report mark matters only to a
// dispatch whose read began before it, and a dispatch's read takes
// milliseconds; a held mark that no report clears (the device went away)
// is cleared by the resend or the reconnect, which the full scan finds.
const holdsKeep = 10 * time.Second

func newHolds() *holds {
	return &holds{held: map[string]time.Time{}, reported: map[string]time.Time{}}
}

// hold records that a dispatch whose read began at readAt found each of
// devs' next command held back by one in flight, and returns those of
// them reported since readAt: the dispatch must look at them again.
func (h *holds) hold(devs []string, readAt time.Time) (again []string) {
	if len(devs) == 0 {
		return nil // most dispatches: nothing held
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range devs {
		if r, ok := h.reported[d]; ok && !r.Before(readAt) {
			again = append(again, d)
			continue
		}
		h.held[d] = readAt
	}
	h.prune(readAt)
	return again
}

// reportedAt records that reports of devs committed at at, and returns
// those of them a dispatch found held back: their next command may be due.
func (h *holds) reportedAt(devs []string, at time.Time) (wake []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, d := range devs {
		h.reported[d] = at
		if _, ok := h.held[d]; ok {
			delete(h.held, d)
			wake = append(wake, d)
		}
	}
	h.prune(at)
	return wake
}

// prune drops marks older than holdsKeep, at most once a holdsKeep.
func (h *holds) prune(now time.Time) {
	if now.Sub(h.pruned) < holdsKeep {
		return
	}
	h.pruned = now
	for _, m := range []map[string]time.Time{h.held, h.reported} {
		for d, t := range m {
			if now.Sub(t) > holdsKeep {
				delete(m, d)
			}
		}
	}
}
