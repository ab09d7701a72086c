package router

import (
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/queue"
)

// logLines returns the lines of logs that contain msg.
func logLines(logs *testenv.SyncBuffer, msg string) []string {
	var out []string
	for _, ln := range strings.Split(logs.String(), "\n") {
		if strings.Contains(ln, msg) {
			out = append(out, ln)
		}
	}
	return out
}

// TestStuckSenderSaysWhy: a subscriber whose cursor stays full because it
// answers busy says so, with the sender's state and the busy reason, once
// per stuckEvery (an operator's way to the cause of a stall like issue
// 20's, which only debug lines showed).
func TestStuckSenderSaysWhy(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"influx"}
	cfg.SubscriberQueueMaxBytes = 64 << 10
	cfg.RegistryStore = testRegistry(t)
	logs := &testenv.SyncBuffer{}
	rt := startRouter(t, cfg, withFastLanes, func(r *Router) {
		r.logger = slog.New(slog.NewTextHandler(logs, nil))
		r.timing.stuckAfter, r.timing.stuckEvery = 200*time.Millisecond, time.Hour
	})
	sub := startSub(t, rt.StoreAddr(), "influx", false)
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)
	fe.appendN(t, 100, 20, rand.New(rand.NewPCG(20, 20)))
	waitFor(t, 10*time.Second, "influx's cursor to be full", func() bool { return rt.sub("influx").cur.Full() })
	waitFor(t, 10*time.Second, "a batch at the subscriber", func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return len(sub.order) > 0
	})
	sub.mu.Lock()
	first := sub.order[0]
	sub.mu.Unlock()
	const msg = "cursor is still full; its sender's state"
	waitFor(t, 10*time.Second, "the stuck sender's line", func() bool {
		// Busy, as a writer whose queue is full answers, until it is said.
		sub.send(forward.Message{Type: forward.TypeBusy, First: first, Last: first + 1<<20, Reason: "writer: queue full: test"})
		return len(logLines(logs, msg)) > 0
	})
	ln := logLines(logs, msg)[0]
	for _, want := range []string{"subscriber=influx", "connected=true", "runs_in_flight=", `last_busy_reason="writer: queue full: test"`, "largest_run_bytes="} {
		if !strings.Contains(ln, want) {
			t.Errorf("the stuck sender's line lacks %s: %s", want, ln)
		}
	}
	time.Sleep(300 * time.Millisecond) // more ticks: still one line within stuckEvery
	if n := len(logLines(logs, msg)); n != 1 {
		t.Errorf("%d stuck lines within stuckEvery, want 1", n)
	}
}
