package router

import (
	"context"
	"encoding/hex"
	"encoding/json"
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
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// pyzmq returns Debian's python3 with pyzmq: a test that needs it fails
// under CI=true when it is missing, and skips loudly otherwise.
func pyzmq(t testing.TB) string {
	t.Helper()
	const py = "/usr/bin/python3"
	if err := exec.Command(py, "-c", "import zmq").Run(); err != nil {
		msg := fmt.Sprintf("pyzmq missing (%s -c 'import zmq': %v): run scripts/install-pyzmq.sh", py, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		fmt.Fprintln(os.Stderr, "SKIPPED LOUDLY: "+msg)
		t.Skip("SKIPPED LOUDLY: " + msg)
	}
	return py
}

// evilEntry is a frontend queue entry of readings for a device the
// attacker picks.
func evilEntry(device string, seq uint64) []byte {
	b, err := proto.Marshal(&telemetry.Batch{Records: []*telemetry.Record{{
		DeviceId: device, ReceivedMs: 1_763_899_200_000,
		Reading: &telemetry.Reading{Seq: seq, TimeMs: 1_763_899_200_000},
	}}})
	if err != nil {
		panic(err)
	}
	return b
}

// hexFrames encodes a protocol message for attack.py.
func hexFrames(t testing.TB, m forward.Message) string {
	t.Helper()
	frames, err := m.Frames()
	if err != nil {
		t.Fatal(err)
	}
	hs := make([]string, len(frames))
	for i, f := range frames {
		hs[i] = hex.EncodeToString(f)
	}
	return strings.Join(hs, ",")
}

// TestLinksRefuseOutsiders: a router with a cluster key, a frontend and a
// durable subscriber ("lake") and a live subscriber that hold it, and two
// outsiders attacking every port at once: a libzmq peer (pyzmq) and a Go
// drover peer with another cluster key. Each tries to inject readings for
// a device of its choice on the ingest port, to subscribe to the live lane,
// and to register a durable subscriber ("evil") or pose as "lake" on the
// store lane — registration on first subscribe is on
// (FixedSubscribers=false), so only authentication stands in the way.
// Nothing of theirs is stored (the router's queue, the subscriber's
// readings), nothing leaks to them (no live message, no store batch, no
// answer at all), every refusal is counted, and the legitimate flow goes on
// untouched.
func TestLinksRefuseOutsiders(t *testing.T) {
	py := pyzmq(t)
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake"}
	cfg.FixedSubscribers = false
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes)
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	live := startLiveSub(t, rt.LiveAddr(), "router-a")
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)

	// The Go outsider: drover's own code, another key.
	wrong := clusterlink.Config{Keys: []clusterlink.Key{must(clusterlink.GenerateKey())}}
	iq, err := queue.Open(filepath.Join(dir, "intruder"), queue.Options{Name: "intruder", Sync: queue.SyncNever, MaxBytes: -1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { iq.Close() })
	for i := range 50 {
		if _, err := iq.Append(context.Background(), evilEntry("dev-00001", uint64(1_000_000+i))); err != nil {
			t.Fatal(err)
		}
	}
	icfg := testDrainerConfig("intruder", rt.Addr())
	icfg.Links = wrong
	intruder := startDrainer(t, icfg, iq)
	wrongLake := startSub(t, rt.StoreAddr(), "lake", true, wrong)
	wrongEvil := startSub(t, rt.StoreAddr(), "evil", true, wrong)
	wrongLive := startLiveSub(t, rt.LiveAddr(), "router-a", wrong)

	// The libzmq outsider, for 3 s, while the legitimate flow runs.
	batch := hexFrames(t, forward.Message{Type: forward.TypeBatch, Sender: "attacker", First: 1, Last: 1,
		Entries: [][]byte{evilEntry("dev-00002", 2_000_000)}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, filepath.Join("testdata", "attack.py"), rt.Addr(), rt.StoreAddr(), rt.LiveAddr(), "3", batch,
		hexFrames(t, forward.Message{Type: forward.TypeSubscribe, Nonce: 1, Name: "evil"}),
		hexFrames(t, forward.Message{Type: forward.TypeSubscribe, Nonce: 2, Name: "lake"}))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const n = 300
	fe.appendN(t, n, 20, rand.New(rand.NewPCG(9, 9)))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("attack.py: %v\n%s", err, stderr.String())
	}
	var got map[string]int
	if err := json.Unmarshal([]byte(stdout.String()), &got); err != nil {
		t.Fatalf("attack.py output %q: %v", stdout.String(), err)
	}
	for _, lane := range []string{"ingest", "store", "live"} {
		if got[lane] != 0 {
			t.Errorf("the libzmq outsider received %d messages from the %s port", got[lane], lane)
		}
	}

	waitFor(t, 30*time.Second, "lake to receive every legitimate reading", func() bool {
		d, _ := lake.counts()
		return d == n*recordsPerEntry
	})
	waitFor(t, 10*time.Second, "live messages for the legitimate livefeed", func() bool { return live.got.Load() > 0 })
	lake.mu.Lock()
	injected := []string{"dev-00002/2000000"}
	for i := range 50 {
		injected = append(injected, fmt.Sprintf("dev-00001/%d", 1_000_000+i))
	}
	for _, key := range injected {
		if lake.readings[key] > 0 {
			t.Errorf("the durable subscriber received an injected reading %s", key)
		}
	}
	lake.mu.Unlock()
	for name, s := range map[string]*fakeSub{"lake": wrongLake, "evil": wrongEvil} {
		if d, _ := s.counts(); d != 0 || s.pongs.Load() != 0 {
			t.Errorf("the wrong-key subscriber %q got %d readings and %d pongs", name, d, s.pongs.Load())
		}
	}
	if wrongLive.got.Load() != 0 || wrongLive.bad.Load() != 0 {
		t.Errorf("the wrong-key live subscriber received %d messages", wrongLive.got.Load()+wrongLive.bad.Load())
	}
	if n, _ := iq.Depth(); n != 50 || metric(t, intruder.reg, "drover_forward_acked_batches_total") != 0 {
		t.Errorf("the intruder's batches were acked: %d of 50 left in its queue", n)
	}
	if rt.sub("evil") != nil {
		t.Errorf("an outsider registered a durable subscriber")
	}
	for _, name := range []string{"drover_router_subscribers_registered_total", "drover_router_bad_messages_total"} {
		if got := metric(t, rt.reg, name); got != 0 {
			t.Errorf("%s = %v: an outsider reached the protocol", name, got)
		}
	}
	for _, link := range []string{"ingest", "store", "live"} {
		for _, reason := range []string{"not_tls", "peer_refused"} {
			waitFor(t, 10*time.Second, link+" refusals ("+reason+") counted", func() bool {
				return metric(t, rt.reg, "drover_link_refused_total", "link", link, "side", "server", "reason", reason) > 0
			})
		}
	}

	// What the router stored: the frontend's entries and nothing else
	// (stored entries leave its queue once every subscriber has them, so
	// count them, and the senders it keeps sequences for).
	if got := metric(t, rt.reg, "drover_router_entries_stored_total"); got != n {
		t.Errorf("the router stored %v entries, want the frontend's %d", got, n)
	}
	if got := metric(t, rt.reg, "drover_router_dedup_senders"); got != 1 {
		t.Errorf("the router knows %v senders, want only the frontend", got)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
