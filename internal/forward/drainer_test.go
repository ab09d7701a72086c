package forward

import (
	"context"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/queue"
)

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// noLeaks fails the test if goroutines of this package or zmq4 outlive it.
// Call it first, so that its cleanup runs last.
func noLeaks(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			var leaked []string
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "go-zeromq/zmq4") || strings.Contains(g, "drover/queue.") ||
					(strings.Contains(g, "drover/internal/forward.") && !strings.Contains(g, "testing.tRunner")) ||
					strings.Contains(g, "drover/internal/clusterlink.") {
					leaked = append(leaked, g)
				}
			}
			if len(leaked) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines leaked:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

func counter(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				ok := false
				for _, lp := range m.GetLabel() {
					ok = ok || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
				}
				if !ok {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// fakeRouter is a ROUTER socket that answers pings and hands batches to
// the test, which answers them (or not) as the scenario needs.
type fakeRouter struct {
	t        testing.TB
	sock     zmq4.Socket
	addr     string
	batches  chan fakeBatch
	silent   atomic.Bool // stop answering pings
	incarnat atomic.Uint64
	done     chan struct{}
}

type fakeBatch struct {
	peer []byte
	Message
}

func startFakeRouter(t testing.TB) *fakeRouter {
	t.Helper()
	f, err := startFakeRouterAt(t, "tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// startFakeRouterAt starts a fake router bound to listen; an error is a
// failed bind (the caller may try another port).
func startFakeRouterAt(t testing.TB, listen string) (*fakeRouter, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeRouter{t: t, sock: zmq4.NewRouter(ctx, zmq4.WithID(zmq4.SocketIdentity("fake"))), batches: make(chan fakeBatch, 100), done: make(chan struct{})}
	f.incarnat.Store(1)
	sec, err := clusterlink.New(testLinks, clusterlink.RoleRouter, "fake", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := sec.Endpoint(clusterlink.LinkIngest, listen)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.sock.Listen(ep); err != nil {
		cancel()
		_ = zmqsock.Close(f.sock)
		sec.Close()
		return nil, err
	}
	f.addr = "tcp://" + f.sock.Addr().String()
	go func() {
		defer close(f.done)
		for {
			msg, err := f.sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			m, err := Decode(msg.Frames[1:])
			if err != nil {
				t.Errorf("fake router: %v", err)
				continue
			}
			switch m.Type {
			case TypePing:
				if !f.silent.Load() {
					f.reply(msg.Frames[0], Message{Type: TypePong, Nonce: m.Nonce, Incarnation: f.incarnat.Load(), Router: "fake"})
				}
			case TypeBatch:
				select {
				case f.batches <- fakeBatch{peer: msg.Frames[0], Message: m}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = zmqsock.Close(f.sock)
		<-f.done
		sec.Close()
	})
	return f, nil
}

func (f *fakeRouter) reply(peer []byte, m Message) {
	frames, err := m.Frames()
	if err != nil {
		f.t.Fatal(err)
	}
	if err := f.sock.Send(zmq4.NewMsgFrom(append([][]byte{peer}, frames...)...)); err != nil {
		// A drainer connection closing under the reply (tests stop
		// drainers and sockets while replies are under way): the drainer
		// resends what it did not hear about, which is what is tested.
		f.t.Logf("fake router reply: %v", err)
	}
}

func (f *fakeRouter) next(timeout time.Duration) fakeBatch {
	f.t.Helper()
	select {
	case b := <-f.batches:
		return b
	case <-time.After(timeout):
		f.t.Fatalf("no batch within %s", timeout)
	}
	return fakeBatch{}
}

func (f *fakeRouter) none(within time.Duration) {
	f.t.Helper()
	select {
	case b := <-f.batches:
		f.t.Fatalf("unexpected batch %d..%d", b.First, b.Last)
	case <-time.After(within):
	}
}

func openQueue(t testing.TB, dir string) *queue.Queue {
	t.Helper()
	q, err := queue.Open(dir, queue.Options{Sync: queue.SyncNever}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Closed after the drainer has stopped (cleanups run last-in first-out).
	t.Cleanup(func() { q.Close() })
	return q
}

func appendEntries(t testing.TB, q *queue.Queue, payloads ...string) uint64 {
	t.Helper()
	ents := make([][]byte, len(payloads))
	for i, p := range payloads {
		ents[i] = []byte(p)
	}
	seq, err := q.Append(context.Background(), ents...)
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

func runDrainer(t testing.TB, cfg DrainerConfig, q *queue.Queue) (*Drainer, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	d, err := NewDrainer(cfg, q, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return d, reg
}

func fastConfig(routers ...string) DrainerConfig {
	return DrainerConfig{Sender: "fe-1", Routers: routers, AckTimeout: 300 * time.Millisecond,
		Heartbeat: 20 * time.Millisecond, DownAfter: 200 * time.Millisecond, Links: testLinks}
}

// testLinks is the cluster key of every test of the package: the drainer
// and the fake routers talk mutual TLS, as in production.
var testLinks = func() clusterlink.Config {
	k, err := clusterlink.GenerateKey()
	if err != nil {
		panic(err)
	}
	return clusterlink.Config{Keys: []clusterlink.Key{k}}
}()

// TestDrainerSplitsGaps: a queue batch whose sequences jump (the queue
// reserves sequences ahead, so they jump across its restarts) goes as one
// protocol batch per run of consecutive sequences, and is removed from the
// queue only when every run is acked.
func TestDrainerSplitsGaps(t *testing.T) {
	noLeaks(t)
	dir := filepath.Join(t.TempDir(), "q")
	q := openQueue(t, dir)
	a := appendEntries(t, q, "a1", "a2", "a3")
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = openQueue(t, dir)
	b := appendEntries(t, q, "b1", "b2")
	if b <= a+3 {
		t.Fatalf("no gap in sequences (%d then %d): the test needs one", a, b)
	}
	fr := startFakeRouter(t)
	runDrainer(t, fastConfig(fr.addr), q)

	first := fr.next(5 * time.Second)
	second := fr.next(5 * time.Second)
	if first.First != a || first.Last != a+2 || string(first.Entries[2]) != "a3" ||
		second.First != b || second.Last != b+1 || string(second.Entries[0]) != "b1" || second.Sender != "fe-1" {
		t.Fatalf("batches %d..%d and %d..%d, want %d..%d and %d..%d", first.First, first.Last, second.First, second.Last, a, a+2, b, b+1)
	}
	fr.reply(first.peer, Message{Type: TypeAck, First: first.First, Last: first.Last})
	fr.none(100 * time.Millisecond)
	if n, _ := q.Depth(); n != 5 {
		t.Errorf("depth %d after one run of two was acked, want 5 (the batch stays whole)", n)
	}
	fr.reply(second.peer, Message{Type: TypeAck, First: second.First, Last: second.Last})
	waitFor(t, 5*time.Second, "the queue to empty", func() bool { n, _ := q.Depth(); return n == 0 })
}

// TestDrainerNoAckNoRemoval: without an ack nothing leaves the queue; the
// batch is resent at every timeout, and an ack for an earlier copy (late)
// completes it.
func TestDrainerNoAckNoRemoval(t *testing.T) {
	noLeaks(t)
	q := openQueue(t, t.TempDir())
	seq := appendEntries(t, q, "x", "y")
	fr := startFakeRouter(t)
	_, reg := runDrainer(t, fastConfig(fr.addr), q)

	b1 := fr.next(5 * time.Second)
	b2 := fr.next(5 * time.Second) // resent after AckTimeout
	if b2.First != b1.First || b2.Last != b1.Last || b1.First != seq {
		t.Fatalf("resent %d..%d after %d..%d", b2.First, b2.Last, b1.First, b1.Last)
	}
	if n, _ := q.Depth(); n != 2 {
		t.Fatalf("depth %d without any ack, want 2", n)
	}
	if got := counter(t, reg, "drover_forward_resent_batches_total", "reason", "timeout"); got < 1 {
		t.Errorf("resent{timeout} = %v", got)
	}
	fr.reply(b1.peer, Message{Type: TypeAck, First: b1.First, Last: b1.Last})
	waitFor(t, 5*time.Second, "the queue to empty", func() bool { n, _ := q.Depth(); return n == 0 })
}

// TestDrainerAckCovers: one ack covering several batches (a router may ack
// what another grouping of the same sequences stored) acks them all.
func TestDrainerAckCovers(t *testing.T) {
	noLeaks(t)
	q := openQueue(t, t.TempDir())
	for _, p := range []string{"a", "b", "c"} {
		appendEntries(t, q, p) // one record each
	}
	fr := startFakeRouter(t)
	cfg := fastConfig(fr.addr)
	cfg.MaxBatchBytes = 1 // one record per batch
	cfg.AckTimeout = 5 * time.Second
	_, reg := runDrainer(t, cfg, q)
	var peer []byte
	var base uint64 // the queue's first sequence (a new queue's is random)
	for i := range uint64(3) {
		b := fr.next(5 * time.Second)
		if i == 0 {
			base = b.First
		}
		if want := base + i; b.First != want || b.Last != want {
			t.Fatalf("batch %d..%d, want %d..%d", b.First, b.Last, want, want)
		}
		peer = b.peer
	}
	fr.reply(peer, Message{Type: TypeAck, First: base, Last: base + 2})
	waitFor(t, 5*time.Second, "the queue to empty", func() bool { n, _ := q.Depth(); return n == 0 })
	if got := counter(t, reg, "drover_forward_acked_entries_total"); got != 3 {
		t.Errorf("acked entries = %v, want 3", got)
	}
}

// TestDrainerFailsOverOnSilence: a router that stops answering heartbeats
// is down; what it had not acked goes to the other router.
func TestDrainerFailsOverOnSilence(t *testing.T) {
	noLeaks(t)
	q := openQueue(t, t.TempDir())
	r1, r2 := startFakeRouter(t), startFakeRouter(t)
	cfg := fastConfig(r1.addr, r2.addr)
	cfg.AckTimeout = time.Minute // only the heartbeat may trigger the resend
	d, reg := runDrainer(t, cfg, q)
	waitFor(t, 5*time.Second, "both routers up", func() bool { up, _ := d.Routers(); return up == 2 })
	appendEntries(t, q, "only")
	var got fakeBatch
	var first, other *fakeRouter
	select {
	case got = <-r1.batches:
		first, other = r1, r2
	case got = <-r2.batches:
		first, other = r2, r1
	case <-time.After(5 * time.Second):
		t.Fatal("no batch")
	}
	first.silent.Store(true)
	again := other.next(5 * time.Second)
	if again.First != got.First || again.Last != got.Last {
		t.Fatalf("failover sent %d..%d, want %d..%d", again.First, again.Last, got.First, got.Last)
	}
	waitFor(t, 5*time.Second, "one router down", func() bool { up, _ := d.Routers(); return up == 1 })
	other.reply(again.peer, Message{Type: TypeAck, First: again.First, Last: again.Last})
	waitFor(t, 5*time.Second, "the queue to empty", func() bool { n, _ := q.Depth(); return n == 0 })
	if got := counter(t, reg, "drover_forward_resent_batches_total", "reason", "router_down"); got < 1 {
		t.Errorf("resent{router_down} = %v", got)
	}
}

// TestDrainerBusyBacksOff: a busy answer gives the batch back and the
// drainer waits before it sends to that router again.
func TestDrainerBusyBacksOff(t *testing.T) {
	noLeaks(t)
	q := openQueue(t, t.TempDir())
	appendEntries(t, q, "p")
	fr := startFakeRouter(t)
	cfg := fastConfig(fr.addr)
	cfg.AckTimeout = time.Minute
	_, reg := runDrainer(t, cfg, q)
	var sentAt []time.Time
	for range 4 {
		b := fr.next(5 * time.Second)
		sentAt = append(sentAt, time.Now())
		fr.reply(b.peer, Message{Type: TypeBusy, First: b.First, Last: b.Last, Reason: "queue full"})
	}
	// Backoff doubles from 50 ms with jitter of half: the third wait is at
	// least 100 ms.
	if w := sentAt[3].Sub(sentAt[2]); w < 100*time.Millisecond {
		t.Errorf("resent %s after the third busy answer; want a growing backoff", w)
	}
	b := fr.next(5 * time.Second)
	fr.reply(b.peer, Message{Type: TypeAck, First: b.First, Last: b.Last})
	waitFor(t, 5*time.Second, "the queue to empty", func() bool { n, _ := q.Depth(); return n == 0 })
	if got := counter(t, reg, "drover_forward_resent_batches_total", "reason", "busy"); got != 4 {
		t.Errorf("resent{busy} = %v, want 4", got)
	}
}

func TestDrainerConfigValidate(t *testing.T) {
	ok := DrainerConfig{Sender: "fe", Routers: []string{"tcp://127.0.0.1:5555"}, Links: testLinks}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for name, mut := range map[string]func(*DrainerConfig){
		"sender":    func(c *DrainerConfig) { c.Sender = "" },
		"routers":   func(c *DrainerConfig) { c.Routers = nil },
		"duplicate": func(c *DrainerConfig) { c.Routers = []string{"tcp://a:1", "tcp://a:1"} },
		"bind":      func(c *DrainerConfig) { c.Routers = []string{"tcp://*:1"} },
		"inflight":  func(c *DrainerConfig) { c.MaxInflight = -1 },
		"down":      func(c *DrainerConfig) { c.Heartbeat, c.DownAfter = time.Second, time.Second },
		"links":     func(c *DrainerConfig) { c.Links = clusterlink.Config{} },
	} {
		c := ok
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: Validate accepted %+v", name, c)
		}
	}
	if _, err := NewDrainer(ok, nil, nil, nil); err == nil {
		t.Error("NewDrainer accepted a nil queue")
	}
}

// TestDrainerTimeoutFailsOver: a router that answers pings but does not ack
// (its disk hangs) is backed off after an ack timeout, and the batch goes
// to another router.
func TestDrainerTimeoutFailsOver(t *testing.T) {
	noLeaks(t)
	q := openQueue(t, t.TempDir())
	r1, r2 := startFakeRouter(t), startFakeRouter(t)
	cfg := fastConfig(r1.addr, r2.addr)
	cfg.AckTimeout = 100 * time.Millisecond
	d, _ := runDrainer(t, cfg, q)
	waitFor(t, 5*time.Second, "both routers up", func() bool { up, _ := d.Routers(); return up == 2 })
	appendEntries(t, q, "z")
	var got fakeBatch
	var other *fakeRouter
	select {
	case got = <-r1.batches:
		other = r2
	case got = <-r2.batches:
		other = r1
	case <-time.After(5 * time.Second):
		t.Fatal("no batch")
	}
	again := other.next(5 * time.Second)
	if again.First != got.First || again.Last != got.Last {
		t.Fatalf("resent %d..%d, want %d..%d", again.First, again.Last, got.First, got.Last)
	}
	other.reply(again.peer, Message{Type: TypeAck, First: again.First, Last: again.Last})
	waitFor(t, 5*time.Second, "the queue to empty", func() bool { n, _ := q.Depth(); return n == 0 })
	if up, _ := d.Routers(); up != 2 {
		t.Errorf("%d routers up; a slow router is backed off, not down", up)
	}
}

// TestDrainerLinger: after a small batch the drainer waits Linger before it
// reads again, so what arrives meanwhile goes in one batch; batches at least
// half of MaxBatchBytes (a backlog) never wait.
func TestDrainerLinger(t *testing.T) {
	noLeaks(t)
	t.Run("small batches gather", func(t *testing.T) {
		q := openQueue(t, t.TempDir())
		fr := startFakeRouter(t)
		cfg := fastConfig(fr.addr)
		cfg.AckTimeout = time.Minute
		cfg.Linger = time.Hour // the test ends (cancelling it) long before
		runDrainer(t, cfg, q)
		first := appendEntries(t, q, "a")
		b := fr.next(5 * time.Second)
		if b.First != first || b.Last != first {
			t.Fatalf("first batch %d..%d, want %d..%d", b.First, b.Last, first, first)
		}
		fr.reply(b.peer, Message{Type: TypeAck, First: b.First, Last: b.Last})
		appendEntries(t, q, "b")
		appendEntries(t, q, "c")
		fr.none(200 * time.Millisecond) // lingering: b and c wait
	})
	t.Run("full batches do not wait", func(t *testing.T) {
		q := openQueue(t, t.TempDir())
		base := appendEntries(t, q, "xxxx")
		appendEntries(t, q, "yyyy")
		appendEntries(t, q, "zzzz")
		fr := startFakeRouter(t)
		cfg := fastConfig(fr.addr)
		cfg.AckTimeout = time.Minute
		cfg.MaxBatchBytes = 4 // each record fills a batch
		cfg.Linger = time.Hour
		runDrainer(t, cfg, q)
		for i := range uint64(3) {
			b := fr.next(5 * time.Second)
			if b.First != base+i || b.Last != base+i {
				t.Fatalf("batch %d..%d, want %d", b.First, b.Last, base+i)
			}
			fr.reply(b.peer, Message{Type: TypeAck, First: b.First, Last: b.Last})
		}
		waitFor(t, 5*time.Second, "the queue to empty", func() bool { n, _ := q.Depth(); return n == 0 })
	})
}
