package api

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/apiclient"
)

// forget drops what this replica knows of fe's polls and hand-offs, as if
// fe had never polled it (or the replica had restarted): the next create
// for its devices queues.
func (h *handoffs) forget(fe string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.fes, fe)
}

// TestCommandHandoff: a command for a connected device with nothing
// before it, whose frontend polls this replica, is created sent to that
// frontend and answered by its waiting poll; a command behind an
// unreported one is queued and goes once the first is received; a
// hand-off lost (the replica's memory gone) is sent again after the
// resend delay; a frontend that has not polled lately gets queued
// commands, through the dispatch.
func TestCommandHandoff(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := startCmdEnv(t, b, func(cfg *Config) { cfg.Commands.Resend = 300 * time.Millisecond })
		c.presence("fe-1", "truck-1", true, time.Now())
		c.dispatch("fe-1", "0s") // fe-1 polls this replica
		handoffs := func(r string) float64 { return testutil.ToFloat64(c.srv.metrics.handoffs.WithLabelValues(r)) }

		polled := make(chan []DispatchedCommand, 1)
		go func() { polled <- c.dispatch("fe-1", "10s") }()
		first := c.send("truck-1", map[string]any{"name": "unlock", "params": map[string]string{"door": "driver"}, "ttl": "30s"})
		if first.State != CmdSent || first.SentTo != "fe-1" || first.Attempts != 1 || first.SentAt == nil || !first.SentAt.Equal(first.CreatedAt) {
			t.Fatalf("created %+v, want sent to fe-1 at its creation, attempt 1", first)
		}
		if got := <-polled; len(got) != 1 || got[0].ID != first.ID || got[0].Params["door"] != "driver" || got[0].Seq != uint64(first.Seq) ||
			got[0].ExpiresAt != first.ExpiresAt.UnixMilli() {
			t.Fatalf("the poll answered %+v, want %s as created", got, first.ID)
		}
		if g := c.get("truck-1", first.ID); g.State != CmdSent || g.Attempts != 1 || g.SentTo != "fe-1" {
			t.Errorf("stored %+v, want sent to fe-1, attempt 1", g)
		}
		if handoffs("handed") != 1 || handoffs("taken") != 1 {
			t.Errorf("hand-offs: handed %v, taken %v; want 1, 1", handoffs("handed"), handoffs("taken"))
		}

		// Behind the first, unreported: queued, held back until it is received.
		second := c.send("truck-1", map[string]any{"name": "locate", "ttl": "30s"})
		if second.State != CmdQueued {
			t.Fatalf("a command behind an unreported one: %s, want queued", second.State)
		}
		c.wantPolled("fe-1", "0s") // nothing while the first is unreported
		c.report("fe-1", "truck-1", first.ID, "received")
		c.wantPolled("fe-1", "5s", second.ID)
		c.report("fe-1", "truck-1", second.ID, "succeeded")
		c.report("fe-1", "truck-1", first.ID, "succeeded")

		// A hand-off lost: the resend delivers it.
		third := c.send("truck-1", map[string]any{"name": "locate", "ttl": "30s"})
		if third.State != CmdSent {
			t.Fatalf("third: %s, want sent (handed)", third.State)
		}
		c.srv.handoff.forget("fe-1")
		var again []DispatchedCommand
		waitFor(t, 10*time.Second, "the lost hand-off sent again", func() bool {
			again = c.dispatch("fe-1", "1s")
			return len(again) > 0
		})
		if len(again) != 1 || again[0].ID != third.ID {
			t.Fatalf("resent %+v, want %s", again, third.ID)
		}
		if g := c.get("truck-1", third.ID); g.Attempts != 2 {
			t.Errorf("the resend is attempt %d, want 2", g.Attempts)
		}
		c.report("fe-1", "truck-1", third.ID, "succeeded")

		// A frontend that has not polled lately: queued, for the dispatch.
		c.srv.handoff.forget("fe-1")
		c.presence("fe-1", "truck-2", true, time.Now())
		if q := c.send("truck-2", map[string]any{"name": "locate"}); q.State != CmdQueued {
			t.Errorf("for a frontend that has not polled lately: %s, want queued", q.State)
		}
	})
}

// TestReportWakesNextCommand: with no full scan to fall back on (an hour
// apart), a report wakes the frontend's poll for its device when a command
// of the device is queued (behind the reported one, or requeued), and
// only then.
func TestReportWakesNextCommand(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := startCmdEnv(t, b, func(cfg *Config) { cfg.Commands.Poll = time.Hour })
		c.presence("fe-1", "truck-1", true, time.Now())
		c.dispatch("fe-1", "0s") // the first poll's full scan; none for an hour after it
		woken := func() bool {
			c.srv.notify.mu.Lock()
			defer c.srv.notify.mu.Unlock()
			_, ok := c.srv.notify.work["fe-1"]["truck-1"]
			return ok
		}
		first := c.send("truck-1", map[string]any{"name": "locate", "ttl": "30s"})
		c.wantPolled("fe-1", "5s", first.ID)
		c.report("fe-1", "truck-1", first.ID, "received")
		if woken() {
			t.Error("a report with nothing queued behind it woke the poll for its device")
		}
		second := c.send("truck-1", map[string]any{"name": "unlock", "ttl": "30s"})
		third := c.send("truck-1", map[string]any{"name": "locate", "ttl": "30s"})
		if second.State != CmdSent || third.State != CmdQueued {
			t.Fatalf("second %s, third %s; want sent (the first is delivered: it holds nothing back), queued", second.State, third.State)
		}
		c.wantPolled("fe-1", "5s", second.ID)
		c.wantPolled("fe-1", "0s") // nothing while the second is unreported
		c.report("fe-1", "truck-1", second.ID, "succeeded")
		c.wantPolled("fe-1", "5s", third.ID)
		c.report("fe-1", "truck-1", first.ID, "succeeded")
		if woken() {
			t.Error("a result with nothing queued behind it woke the poll for its device")
		}
	})
}

// TestCommandWaitFinalRow: a wait ended by a report of this replica
// answers the row that report wrote, which is the row as stored.
func TestCommandWaitFinalRow(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := startCmdEnv(t, b)
		c.presence("fe-1", "truck-1", true, time.Now())
		done := c.sendWaiting("truck-1", map[string]any{"name": "unlock", "ttl": "30s"})
		var got []DispatchedCommand
		waitFor(t, 10*time.Second, "the command dispatched", func() bool {
			got = c.dispatch("fe-1", "1s")
			return len(got) > 0
		})
		c.report("fe-1", "truck-1", got[0].ID, "received")
		waitFor(t, 10*time.Second, "the wait registered", func() bool { return c.srv.notify.watchingCommand(got[0].ID) })
		c.report("fe-1", "truck-1", got[0].ID, "failed", "jammed", `{"door":"stuck"}`)
		var cmd Command
		(<-done).json(t, &cmd)
		if stored := c.get("truck-1", got[0].ID); !reflect.DeepEqual(cmd, stored) {
			t.Errorf("the wait answered\n%+v\nstored\n%+v", cmd, stored)
		}
		if cmd.State != CmdFailed || cmd.Message != "jammed" || cmd.DeliveredAt == nil || cmd.CompletedAt == nil {
			t.Errorf("the wait answered %+v", cmd)
		}
	})
}

// TestHandoffTake: a poll takes the hand-offs younger than the resend
// delay and not expired, in order, once; a frontend is handed to only
// while it polls or has lately.
func TestHandoffTake(t *testing.T) {
	h := newHandoffs()
	now := time.Now()
	if h.takes("fe-1", now) {
		t.Fatal("a frontend that never polled takes hand-offs")
	}
	end := h.pollBegin("fe-1")
	if !h.takes("fe-1", now.Add(time.Hour)) {
		t.Fatal("a frontend polling now does not take hand-offs")
	}
	end()
	if !h.takes("fe-1", time.Now().Add(handoffRecent/2)) || h.takes("fe-1", time.Now().Add(handoffRecent)) {
		t.Fatalf("after a poll ended: takes should hold for %v, then stop", handoffRecent)
	}
	if got := h.polling(time.Now()); !reflect.DeepEqual(got, []string{"fe-1"}) {
		t.Errorf("polling %v, want [fe-1]", got)
	}
	later := now.Add(time.Minute).UnixMilli()
	h.put("fe-1", DispatchedCommand{ID: "old", ExpiresAt: later}, now.Add(-5*time.Second))
	h.put("fe-1", DispatchedCommand{ID: "expired", ExpiresAt: now.UnixMilli()}, now)
	h.put("fe-1", DispatchedCommand{ID: "a", ExpiresAt: later}, now)
	h.put("fe-1", DispatchedCommand{ID: "b", ExpiresAt: later}, now)
	got, stale := h.take("fe-1", now, 5*time.Second)
	if len(got) != 2 || got[0].ID != "a" || got[1].ID != "b" || stale != 2 {
		t.Fatalf("took %+v, %d stale; want a, b and 2 stale", got, stale)
	}
	h.put("fe-1", DispatchedCommand{ID: "c", ExpiresAt: later}, now)
	if again, _ := h.take("fe-1", now, 5*time.Second); len(again) != 1 || again[0].ID != "c" {
		t.Fatalf("the next take: %+v, want only c (a and b were taken)", again)
	}
	for i := range maxHandoffs {
		h.put("fe-1", DispatchedCommand{ID: string(rune(i))}, now)
	}
	if h.takes("fe-1", time.Now()) {
		t.Error("a frontend with maxHandoffs waiting takes more")
	}
}

// TestMergeDispatched: hand-offs and a dispatch's commands, each once, by
// device and seq.
func TestMergeDispatched(t *testing.T) {
	got := mergeDispatched(
		[]DispatchedCommand{{ID: "b1", DeviceID: "b", Seq: 1}, {ID: "a2", DeviceID: "a", Seq: 2}},
		[]DispatchedCommand{{ID: "a2", DeviceID: "a", Seq: 2}, {ID: "a3", DeviceID: "a", Seq: 3}, {ID: "c1", DeviceID: "c", Seq: 1}})
	var ids []string
	for _, c := range got {
		ids = append(ids, c.ID)
	}
	if want := []string{"a2", "a3", "b1", "c1"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("merged %v, want %v", ids, want)
	}
}

// TestCommandStream: a frontend that holds a command stream open
// (stream=true) gets each command on it as the command is created — three
// commands of two devices, the next of a device once the last is reported,
// on one open answer — and the stream ends by itself when its wait is
// over. The answer matches openapi.yaml (NDJSON of Dispatch lines), and a
// stream value that is not a boolean is refused.
func TestCommandStream(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := startCmdEnv(t, b)
		now := time.Now()
		c.presence("fe-1", "truck-1", true, now)
		c.presence("fe-1", "truck-2", true, now)
		cl, err := apiclient.New(apiclient.Config{URL: c.base, Key: c.fkey, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		batches := make(chan apiclient.Dispatch, 10)
		ended := make(chan error, 1)
		const wait = 3 * time.Second
		opened := time.Now()
		go func() {
			ended <- cl.CommandStream(context.Background(), "fe-1", wait, func(d apiclient.Dispatch) { batches <- d })
		}()
		waitFor(t, 5*time.Second, "the stream to be open", func() bool { return c.srv.handoff.takes("fe-1", time.Now()) })
		for i, dev := range []string{"truck-1", "truck-2", "truck-1"} {
			cmd := c.send(dev, map[string]any{"name": fmt.Sprintf("step-%d", i)})
			select {
			case d := <-batches:
				if len(d.Commands) != 1 || d.Commands[0].ID != cmd.ID || d.Commands[0].DeviceID != dev {
					t.Fatalf("command %d on the stream: %+v, want %s of %s", i, d.Commands, cmd.ID, dev)
				}
			case err := <-ended:
				t.Fatalf("the stream ended (%v) before command %d came on it", err, i)
			case <-time.After(2 * time.Second):
				t.Fatalf("command %d (%s) did not come on the open stream", i, cmd.ID)
			}
			c.report("fe-1", dev, cmd.ID, "succeeded")
		}
		select {
		case err := <-ended:
			if err != nil {
				t.Fatalf("stream: %v", err)
			}
			if held := time.Since(opened); held < wait-100*time.Millisecond {
				t.Errorf("the stream ended after %v, want it open for its wait (%v)", held, wait)
			}
		case <-time.After(wait + 3*time.Second):
			t.Fatal("the stream did not end after its wait")
		}

		// Through the validating client: the answer's lines are Dispatches.
		queued := c.send("truck-2", map[string]any{"name": "after"})
		r := c.must(200, req{method: "GET", path: "/v1/frontends/fe-1/commands?wait=300ms&stream=true", key: c.fkey}, nil)
		if ct, xb := r.header.Get("Content-Type"), r.header.Get("X-Accel-Buffering"); ct != "application/x-ndjson" || xb != "no" {
			t.Errorf("stream Content-Type %q, X-Accel-Buffering %q; want application/x-ndjson, no (a buffering proxy would hold the lines)", ct, xb)
		}
		if !strings.Contains(string(r.body), queued.ID) || strings.Count(string(r.body), "\n") != 1 {
			t.Errorf("stream body %q, want one line with %s", r.body, queued.ID)
		}
		if r := c.do(req{method: "GET", path: "/v1/frontends/fe-1/commands?stream=yes", key: c.fkey, invalid: true}); r.status != http.StatusBadRequest {
			t.Errorf("stream=yes answered %d, want 400", r.status)
		}
	})
}
