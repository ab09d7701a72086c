package api

import (
	"slices"
	"testing"
	"time"
)

// TestHolds: whichever of a dispatch that found a device's next command
// held back and a report of that device comes second wakes the dispatch
// again, once; a report older than the dispatch's read does not; marks
// older than holdsKeep are forgotten.
func TestHolds(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	h := newHolds()

	// The dispatch first: the report that follows wakes it, once.
	if again := h.hold([]string{"a", "b"}, t0); len(again) != 0 {
		t.Fatalf("hold with no report: again %v", again)
	}
	if wake := h.reportedAt([]string{"a", "c"}, t0.Add(time.Millisecond)); !slices.Equal(wake, []string{"a"}) {
		t.Errorf("report after the hold woke %v, want [a]", wake)
	}
	if wake := h.reportedAt([]string{"a"}, t0.Add(2*time.Millisecond)); len(wake) != 0 {
		t.Errorf("a second report woke %v again", wake)
	}

	// The report first, committed after the dispatch's read began (the
	// read may have missed it): the dispatch looks again.
	if again := h.hold([]string{"c"}, t0.Add(time.Millisecond)); !slices.Equal(again, []string{"c"}) {
		t.Errorf("hold after a report committed during its read: again %v, want [c]", again)
	}
	// A report before the read began was seen by it: held, no second look.
	if again := h.hold([]string{"a"}, t0.Add(time.Second)); len(again) != 0 {
		t.Errorf("hold after an older report: again %v, want none", again)
	}

	// Old marks are forgotten: b's hold and a's report.
	late := t0.Add(holdsKeep + 2*time.Second)
	h.reportedAt(nil, late)
	if wake := h.reportedAt([]string{"b"}, late); len(wake) != 0 {
		t.Errorf("a hold older than %v still woke %v", holdsKeep, wake)
	}
	if len(h.held) != 0 || len(h.reported) != 1 {
		t.Errorf("after pruning: held %v, reported %v; want none, [b]", h.held, h.reported)
	}
}

// TestDispatchMarksHeld: a dispatch that finds a device's next command
// behind one in flight marks the device, so that the report of the one in
// flight wakes the dispatch whatever its own statement saw
// (commands_holds.go).
func TestDispatchMarksHeld(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := startCmdEnv(t, b)
		c.presence("fe-1", "truck-1", true, time.Now())
		first := c.send("truck-1", map[string]any{"name": "first"})
		c.wantPolled("fe-1", "5s", first.ID)
		second := c.send("truck-1", map[string]any{"name": "second"})
		if second.State != CmdQueued {
			t.Fatalf("second command %s, want queued behind the first", second.State)
		}
		c.wantPolled("fe-1", "0s") // held back: nothing
		if wake := c.srv.holds.reportedAt([]string{"truck-1"}, time.Now()); !slices.Equal(wake, []string{"truck-1"}) {
			t.Errorf("after a dispatch found truck-1's second command held, a report woke %v, want [truck-1]", wake)
		}
	})
}
