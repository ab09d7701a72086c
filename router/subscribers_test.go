package router

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// The live lane with libzmq subscribers, a subscriber's full cursor, fixed subscribers.

// TestLiveLaneLibzmq: a libzmq subscriber (pyzmq, Debian's python3-zmq)
// receives live. messages from the router's publisher (ZMTP on zmq4.Open,
// with -insecure-links: libzmq has no TLS); Go decodes what it got.
func TestLiveLaneLibzmq(t *testing.T) {
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import zmq").Run(); err != nil {
		msg := fmt.Sprintf("pyzmq missing (%s -c 'import zmq': %v): run scripts/install-pyzmq.sh", py, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED LOUDLY: " + msg)
	}
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake"}
	cfg.RegistryStore = testRegistry(t)
	// libzmq has no TLS transport: plain ZMTP, as -insecure-links runs it.
	cfg.Links = clusterlink.Config{Insecure: true}
	rt := startRouter(t, cfg, withFastLanes)
	startSub(t, rt.StoreAddr(), "lake", true, cfg.Links)
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	dc := testDrainerConfig("frontend-1", rt.Addr())
	dc.Links = cfg.Links
	startDrainer(t, dc, fe.q)

	const want = 20
	out := filepath.Join(dir, "live.hex")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, filepath.Join("testdata", "live_sub.py"), rt.LiveAddr(), fmt.Sprint(want), out)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Keep publishing until Python has what it wants (a SUB misses what is
	// published before its subscription reaches the PUB).
	r := rand.New(rand.NewPCG(6, 6))
	var err error
wait:
	for {
		select {
		case err = <-exited:
			break wait
		case <-time.After(20 * time.Millisecond):
			fe.appendN(t, 5, 5, r)
		}
	}
	if err != nil {
		t.Fatalf("python subscriber: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(b))
	if len(lines) != want {
		t.Fatalf("python wrote %d messages, want %d", len(lines), want)
	}
	sizes := strings.Fields(stdout.String())
	for i, l := range lines {
		raw, err := hex.DecodeString(l)
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		var pb telemetry.PublishBatch
		if err := proto.Unmarshal(raw, &pb); err != nil {
			t.Fatalf("message %d as received by libzmq does not decode: %v", i, err)
		}
		if pb.Router != "router-a" || pb.Seq == 0 || len(pb.Records) == 0 || len(pb.Records)%recordsPerEntry != 0 {
			t.Errorf("message %d: router %q seq %d with %d records", i, pb.Router, pb.Seq, len(pb.Records))
		}
		for _, er := range pb.Records {
			checkEnriched(t, er)
		}
		if i < len(sizes) && sizes[i] != fmt.Sprint(len(raw)) {
			t.Errorf("message %d: python printed size %s, decoded %d bytes", i, sizes[i], len(raw))
		}
	}
	t.Logf("pyzmq received %d live messages, sizes %v", len(lines), sizes)
}

// TestSubscriberCursorFull: a subscriber whose cursor is full (it never
// connects) holds back only itself: the others get everything while the
// log keeps its backlog, and dropping it after the retention frees the
// log.
func TestSubscriberCursorFull(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake", "influx"}
	cfg.SubscriberQueueMaxBytes = 64 << 10
	cfg.SubscriberRetention = 2 * time.Second
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes)
	influx := startSub(t, rt.StoreAddr(), "influx", true) // lake never connects
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)

	const n = 600
	fe.appendN(t, n, 20, rand.New(rand.NewPCG(7, 7)))
	// lake's cursor passes its bound: that holds back lake alone (its
	// backlog stays in the log), never influx.
	waitFor(t, 20*time.Second, "influx to receive every reading while lake is away", func() bool {
		d, _ := influx.counts()
		return d == n*recordsPerEntry
	})
	if s := rt.sub("lake"); s != nil {
		if !s.cur.Full() {
			_, b := s.cur.Lag()
			t.Errorf("lake's cursor lags %d bytes and is not full (bound %d)", b, cfg.SubscriberQueueMaxBytes)
		}
		if rt.mainDepth() == 0 {
			t.Error("the log let go of lake's backlog while lake was registered")
		}
	}
	waitFor(t, 20*time.Second, "lake dropped after the retention", func() bool {
		return metric(t, rt.reg, "drover_router_subscribers_dropped_total", "subscriber", "lake") == 1
	})
	if got := metric(t, rt.reg, "drover_router_subscribers_dropped_total", "subscriber", "lake"); got != 1 {
		t.Errorf("lake dropped %v times, want 1", got)
	}
	waitFor(t, 10*time.Second, "queues to empty", func() bool {
		return fe.depth() == 0 && rt.mainDepth() == 0 && rt.subDepth("influx") == 0
	})
}

// TestFixedSubscribers: with FixedSubscribers, a writer subscribing under a
// name the router was not given is refused (counted) and gets nothing; the
// main queue goes to the listed subscriber only, and no queue is kept for
// the stranger.
func TestFixedSubscribers(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-f")
	cfg.Subscribers = []string{"lake"}
	cfg.FixedSubscribers = true
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes)
	stranger := startSub(t, rt.StoreAddr(), "laek", true)
	waitFor(t, 10*time.Second, "the stranger refused", func() bool {
		return metric(t, rt.reg, "drover_router_bad_messages_total", "reason", "subscriber_unknown") > 0
	})
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)
	const n = 200
	fe.appendN(t, n, 20, rand.New(rand.NewPCG(5, 5)))
	waitFor(t, 30*time.Second, "the router to hold every entry for lake", func() bool {
		return fe.depth() == 0 && rt.mainDepth() > 0 && rt.subDepth("lake") == rt.mainDepth()
	})
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	waitFor(t, 30*time.Second, "lake to receive every reading", func() bool {
		d, _ := lake.counts()
		return d == n*recordsPerEntry
	})
	if d, _ := stranger.counts(); d != 0 {
		t.Errorf("the unknown subscriber received %d readings", d)
	}
	if _, err := os.Stat(filepath.Join(cfg.QueueDir, "cursors", "laek")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a cursor for the unknown subscriber: %v; want none", err)
	}
}
