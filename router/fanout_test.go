package router

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// testRegistryFile writes testRegistry's devices to a registry file, for
// -registry.
func testRegistryFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "devices.json")
	if err := registry.Write(path, testDevices()); err != nil {
		t.Fatal(err)
	}
	return path
}

func testDevices() []registry.Device {
	var devs []registry.Device
	for k := range 500 {
		devs = append(devs, registry.Device{
			ID: fmt.Sprintf("dev-%05d", k), TokenSHA256: registry.HashToken("t"),
			Fleet: fmt.Sprintf("fleet-%d", k%3), Class: "truck", Region: fmt.Sprintf("region-%d", k%5),
		})
	}
	return devs
}

// testRegistry knows devices dev-00000..dev-00499 (makeEntry uses
// dev-00000..dev-00999: half of the records are enrichment misses).
func testRegistry(t testing.TB) *registry.Store {
	t.Helper()
	reg, err := registry.New(testDevices())
	if err != nil {
		t.Fatal(err)
	}
	return registry.Static(reg)
}

// checkEnriched fails the test unless rec carries its device's enrichment.
func checkEnriched(t testing.TB, er *telemetry.EnrichedRecord) {
	t.Helper()
	var k int
	if _, err := fmt.Sscanf(er.GetRecord().GetDeviceId(), "dev-%05d", &k); err != nil {
		t.Fatalf("record of device %q", er.GetRecord().GetDeviceId())
	}
	want := &telemetry.Enrichment{}
	if k < 500 {
		want = &telemetry.Enrichment{Fleet: fmt.Sprintf("fleet-%d", k%3), VehicleClass: "truck", Region: fmt.Sprintf("region-%d", k%5)}
	}
	if er.Enrichment == nil || !proto.Equal(er.Enrichment, want) {
		t.Errorf("device %s: enrichment %v, want %v", er.GetRecord().GetDeviceId(), er.Enrichment, want)
	}
}

// fakeSub is a durable subscriber written against the store-lane protocol
// only: a raw DEALER that subscribes every 50 ms, decodes what it receives
// and acks it (while acking is set), storing nothing.
type fakeSub struct {
	t      testing.TB
	name   string
	sock   zmq4.Socket
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sendMu sync.Mutex
	acking atomic.Bool
	pongs  atomic.Int64
	light  atomic.Bool // count batches only, decode nothing (benchmarks)
	// seqOff counts PublishBatches whose seq is not their store-lane
	// sequence (the log's: they are the same since issue 20).
	seqOff int

	mu       sync.Mutex
	readings map[string]int // device/seq → times received
	order    []uint64       // PublishBatch.Seq in order of first receipt
	seen     map[uint64]bool
	batches  int
	// oversized counts batches of more than one entry whose entries
	// exceed maxBatch (when set): the store lane's run bound.
	maxBatch, oversized int
}

func startSub(t testing.TB, endpoint, name string, ack bool, links ...clusterlink.Config) *fakeSub {
	t.Helper()
	var rnd [4]byte
	_, _ = crand.Read(rnd[:])
	ctx, cancel := context.WithCancel(context.Background())
	s := &fakeSub{t: t, name: name, cancel: cancel, readings: map[string]int{}, seen: map[uint64]bool{},
		sock: zmq4.NewDealer(ctx, zmq4.WithID(zmq4.SocketIdentity(name+"-"+hex.EncodeToString(rnd[:]))),
			zmq4.WithTimeout(time.Second), zmq4.WithDialerMaxRetries(-1), zmq4.WithDialerRetry(20*time.Millisecond),
			zmq4.WithAutomaticReconnect(true)),
	}
	s.acking.Store(ack)
	ep := linkEndpoint(t, clusterlink.RoleStorageWriter, clusterlink.LinkStore, endpoint, links...)
	if len(links) > 0 {
		// Maybe another key: zmq4 retries a refused handshake until the
		// socket closes.
		s.wg.Go(func() { _ = s.sock.Dial(ep) })
	} else if err := s.sock.Dial(ep); err != nil {
		t.Fatalf("subscriber %s: dial %s: %v", name, endpoint, err)
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for n := uint64(1); ; n++ {
			s.send(forward.Message{Type: forward.TypeSubscribe, Nonce: n, Name: name})
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	go func() {
		defer s.wg.Done()
		for {
			msg, err := s.sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			m, err := forward.Decode(msg.Frames)
			if err != nil {
				t.Errorf("subscriber %s: decode: %v", name, err)
				continue
			}
			switch m.Type {
			case forward.TypePong:
				s.pongs.Add(1)
			case forward.TypeBatch:
				s.onBatch(m)
				if s.acking.Load() {
					s.send(forward.Message{Type: forward.TypeAck, First: m.First, Last: m.Last})
				}
			default:
				t.Errorf("subscriber %s: unexpected %s", name, m.Type)
			}
		}
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *fakeSub) send(m forward.Message) {
	frames, err := m.Frames()
	if err != nil {
		s.t.Errorf("subscriber %s: encode: %v", s.name, err)
		return
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	_ = s.sock.SendMulti(zmq4.NewMsgFrom(frames...))
}

func (s *fakeSub) onBatch(m forward.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches++
	if n := entryBytes(m.Entries); s.maxBatch > 0 && len(m.Entries) > 1 && n > s.maxBatch {
		s.oversized++
	}
	if s.light.Load() {
		return
	}
	for i, e := range m.Entries {
		var pb telemetry.PublishBatch
		if err := proto.Unmarshal(e, &pb); err != nil {
			s.t.Errorf("subscriber %s: entry is not a PublishBatch: %v", s.name, err)
			continue
		}
		if pb.Seq != m.First+uint64(i) {
			s.seqOff++
		}
		if pb.Router != m.Sender || pb.Seq == 0 {
			s.t.Errorf("subscriber %s: PublishBatch router %q seq %d in a batch from %q", s.name, pb.Router, pb.Seq, m.Sender)
		}
		if !s.seen[pb.Seq] {
			s.seen[pb.Seq] = true
			s.order = append(s.order, pb.Seq)
		}
		for _, er := range pb.Records {
			checkEnriched(s.t, er)
			s.readings[fmt.Sprintf("%s/%d", er.Record.DeviceId, er.Record.Reading.GetSeq())]++
		}
	}
}

func entryBytes(es [][]byte) int {
	n := 0
	for _, e := range es {
		n += len(e)
	}
	return n
}

// counts returns the distinct readings received and the duplicates.
func (s *fakeSub) counts() (distinct, dups int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.readings {
		distinct++
		dups += n - 1
	}
	return distinct, dups
}

func (s *fakeSub) stop() {
	s.cancel()
	_ = zmqsock.Close(s.sock)
	s.wg.Wait()
}

// withFastLanes shortens the store lane's timers.
func withFastLanes(r *Router) {
	r.timing.downAfter = 300 * time.Millisecond
	r.timing.ackTimeout = time.Second
	r.timing.tick = 20 * time.Millisecond
}

func (rr *running) sub(name string) *subscriber {
	rr.subsMu.Lock()
	defer rr.subsMu.Unlock()
	return rr.subs[name]
}

func (rr *running) mainDepth() int64 { n, _ := rr.q.Depth(); return n }

func (rr *running) subDepth(name string) int64 {
	s := rr.sub(name)
	if s == nil {
		return -1
	}
	n, _ := s.cur.Lag() // what the subscriber has not acked
	return n
}

// liveSub is a zmq4 SUB on the live lane counting what decodes.
type liveSub struct {
	sock   zmq4.Socket
	cancel context.CancelFunc
	done   chan struct{}
	got    atomic.Int64
	bad    atomic.Int64
}

func startLiveSub(t testing.TB, endpoint, router string, links ...clusterlink.Config) *liveSub {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &liveSub{cancel: cancel, done: make(chan struct{}),
		sock: zmq4.NewSub(ctx, zmq4.WithDialerMaxRetries(-1), zmq4.WithAutomaticReconnect(true), zmq4.WithDialerRetry(20*time.Millisecond))}
	if err := l.sock.SetOption(zmq4.OptionSubscribe, LiveTopic); err != nil {
		t.Fatal(err)
	}
	ep := linkEndpoint(t, clusterlink.RoleLivefeed, clusterlink.LinkLive, endpoint, links...)
	dialed := make(chan struct{})
	if len(links) > 0 {
		// Maybe another key: zmq4 retries a refused handshake until the
		// socket closes.
		go func() { defer close(dialed); _ = l.sock.Dial(ep) }()
	} else {
		if err := l.sock.Dial(ep); err != nil {
			t.Fatal(err)
		}
		close(dialed)
	}
	go func() {
		defer close(l.done)
		for {
			msg, err := l.sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			var pb telemetry.PublishBatch
			if len(msg.Frames) != 2 || string(msg.Frames[0]) != LiveTopic || proto.Unmarshal(msg.Frames[1], &pb) != nil || pb.Router != router {
				l.bad.Add(1)
				continue
			}
			for _, er := range pb.Records {
				checkEnriched(t, er)
			}
			l.got.Add(1)
		}
	}()
	t.Cleanup(func() { l.cancel(); _ = zmqsock.Close(l.sock); <-l.done; <-dialed })
	return l
}

// TestFanout: frontend → router → two durable subscribers and the live
// lane; every record arrives at each subscriber enriched, in order, and the
// router's queues empty.
func TestFanout(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake", "influx"}
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes)
	live := startLiveSub(t, rt.LiveAddr(), "router-a")
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	influx := startSub(t, rt.StoreAddr(), "influx", true)
	waitFor(t, 10*time.Second, "subscribers connected", func() bool {
		return metric(t, rt.reg, "drover_router_subscriber_connected") == 2
	})
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)

	const n = 2000
	fe.appendN(t, n, 20, rand.New(rand.NewPCG(3, 3)))
	for _, s := range []*fakeSub{lake, influx} {
		waitFor(t, 30*time.Second, s.name+" to receive every reading", func() bool {
			d, _ := s.counts()
			return d == n*recordsPerEntry
		})
	}
	waitFor(t, 10*time.Second, "router queues to empty", func() bool {
		return fe.depth() == 0 && rt.mainDepth() == 0 && rt.subDepth("lake") == 0 && rt.subDepth("influx") == 0
	})
	for _, s := range []*fakeSub{lake, influx} {
		s.mu.Lock()
		if !slices.IsSorted(s.order) {
			t.Errorf("%s received batches out of order", s.name)
		}
		batches := s.batches // resends may still arrive: read it under the lock
		seqOff := s.seqOff
		s.mu.Unlock()
		if seqOff > 0 {
			t.Errorf("%s: %d PublishBatches whose seq is not their sequence in the log (router, seq dedups by it)", s.name, seqOff)
		}
		_, dups := s.counts()
		t.Logf("%s: %d batches, %d duplicate readings", s.name, batches, dups)
	}
	waitFor(t, 10*time.Second, "live messages", func() bool { return live.got.Load() > 0 })
	if live.bad.Load() > 0 {
		t.Errorf("%d live messages did not decode", live.bad.Load())
	}
	if got, want := metric(t, rt.reg, "drover_router_enrichment_misses_total"), float64(n*recordsPerEntry/2); got != want {
		t.Errorf("enrichment misses = %v, want %v", got, want)
	}
	if got := metric(t, rt.reg, "drover_router_fanout_records_total"); got != n*recordsPerEntry {
		t.Errorf("fan-out records = %v, want %d", got, n*recordsPerEntry)
	}
	t.Logf("live: %d received, %v published, %v dropped", live.got.Load(),
		metric(t, rt.reg, "drover_router_live_published_total"), metric(t, rt.reg, "drover_router_live_dropped_total"))
}

// TestStalledSubscriber: a subscriber that stops acking and one that never
// connects stop neither ingest, nor the other subscriber, nor the live
// lane; their queues grow; past the retention they are dropped, counted.
func TestStalledSubscriber(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake", "influx", "ghost"}
	cfg.SubscriberRetention = 1500 * time.Millisecond
	cfg.Registry = testRegistryFile(t) // the router opens and runs its own Store
	rt := startRouter(t, cfg, withFastLanes)
	live := startLiveSub(t, rt.LiveAddr(), "router-a")
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	influx := startSub(t, rt.StoreAddr(), "influx", false) // receives, never acks
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)

	const n = 1000
	fe.appendN(t, n, 20, rand.New(rand.NewPCG(4, 4)))
	waitFor(t, 30*time.Second, "frontend queue to empty (ingest goes on)", func() bool { return fe.depth() == 0 })
	waitFor(t, 30*time.Second, "lake to receive every reading", func() bool {
		d, _ := lake.counts()
		return d == n*recordsPerEntry
	})
	waitFor(t, 10*time.Second, "live messages", func() bool { return live.got.Load() > 0 })
	if got := metric(t, rt.reg, "drover_registry_devices"); got != 500 {
		t.Errorf("drover_registry_devices = %v: the router's own registry Store is not registered", got)
	}
	if d := rt.subDepth("influx"); d <= 0 {
		t.Errorf("influx cursor lag %d: want it holding what was not acked", d)
	}
	if d, _ := influx.counts(); d == 0 {
		t.Errorf("influx received nothing")
	}
	waitFor(t, 10*time.Second, "ghost dropped after the retention", func() bool {
		return metric(t, rt.reg, "drover_router_subscribers_dropped_total", "subscriber", "ghost") == 1
	})
	if _, err := os.Stat(filepath.Join(cfg.QueueDir, "cursors", "ghost")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ghost's cursor file: %v; want it removed", err)
	}
	if rt.sub("influx") == nil || rt.sub("lake") == nil {
		t.Fatalf("a subscriber that subscribes was dropped")
	}
	waitFor(t, 10*time.Second, "influx's batches resent after the ack timeout", func() bool {
		return metric(t, rt.reg, "drover_router_subscriber_resent_batches_total", "subscriber", "influx", "reason", "timeout") > 0
	})
	// influx goes away for good: dropped too; lake stays.
	influx.stop()
	waitFor(t, 10*time.Second, "influx dropped after the retention", func() bool {
		return metric(t, rt.reg, "drover_router_subscribers_dropped_total", "subscriber", "influx") == 1
	})
	if rt.sub("lake") == nil {
		t.Fatal("lake dropped")
	}
	names, err := readSubsFile(filepath.Join(cfg.QueueDir, "subs", subsFile))
	if err != nil || !slices.Equal(names, []string{"lake"}) {
		t.Errorf("persisted subscribers %v, %v; want [lake]", names, err)
	}
}

// TestFanoutRestart: the router stops (abruptly) in the middle and starts
// again on the same endpoints; the subscribers, one of them registered
// dynamically, resume and receive every reading (duplicates allowed).
func TestFanoutRestart(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Subscribers = []string{"lake"}
	cfg.FixedSubscribers = false // holders of the cluster key may register
	cfg.RegistryStore = testRegistry(t)
	rt := startRouter(t, cfg, withFastLanes)
	cfg.Listen, cfg.StoreListen, cfg.LivePub = rt.Addr(), rt.StoreAddr(), rt.LiveAddr()
	lake := startSub(t, rt.StoreAddr(), "lake", true)
	dyn := startSub(t, rt.StoreAddr(), "dyn", true) // not in -subscribers
	waitFor(t, 10*time.Second, "subscribers connected", func() bool {
		return metric(t, rt.reg, "drover_router_subscriber_connected") == 2
	})
	if got := metric(t, rt.reg, "drover_router_subscribers_registered_total"); got != 1 {
		t.Errorf("registered on subscribe: %v, want 1", got)
	}
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)

	const n = 3000
	r := rand.New(rand.NewPCG(5, 5))
	fe.appendN(t, n/2, 20, r)
	waitFor(t, 20*time.Second, "some fan-out", func() bool {
		return metric(t, rt.reg, "drover_router_subscriber_acked_batches_total", "subscriber", "dyn") >= 5
	})
	appending := make(chan struct{})
	go func() { defer close(appending); fe.appendN(t, n/2, 20, r) }()
	rt.abrupt = true
	rt.stop(t)
	rt2 := startRouter(t, cfg, withFastLanes)
	if rt2.sub("dyn") == nil {
		t.Errorf("the dynamically registered subscriber was not kept across the restart")
	}
	<-appending
	for _, s := range []*fakeSub{lake, dyn} {
		waitFor(t, 40*time.Second, s.name+" to receive every reading", func() bool {
			d, _ := s.counts()
			return d == n*recordsPerEntry
		})
	}
	waitFor(t, 10*time.Second, "router queues to empty", func() bool {
		return fe.depth() == 0 && rt2.mainDepth() == 0 && rt2.subDepth("lake") == 0 && rt2.subDepth("dyn") == 0
	})
	for _, s := range []*fakeSub{lake, dyn} {
		_, dups := s.counts()
		t.Logf("%s: %d duplicate readings across the restart (at least once)", s.name, dups)
	}
}
