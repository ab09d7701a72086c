package router

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/queue"
)

// TestDrainToRouter: entries appended to a frontend queue while a drainer
// runs all arrive in the router's queue exactly once, with their content,
// and the frontend queue empties.
func TestDrainToRouter(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	rt := startRouter(t, testConfig(filepath.Join(dir, "router"), "router-a"))
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	d := startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)

	const n = 3000
	r := rand.New(rand.NewPCG(1, 1))
	var wg sync.WaitGroup
	for range 4 { // concurrent appenders make group commits of many sizes
		wg.Add(1)
		r := rand.New(rand.NewPCG(r.Uint64(), 0))
		go func() { defer wg.Done(); fe.appendN(t, n/4, 20, r) }()
	}
	wg.Wait()
	waitFor(t, 20*time.Second, "frontend queue to empty", func() bool { return fe.depth() == 0 })
	if up, total := d.Routers(); up != 1 || total != 1 {
		t.Errorf("Routers() = %d, %d; want 1, 1", up, total)
	}
	if got := metric(t, d.reg, "drover_forward_acked_entries_total"); got < n {
		t.Errorf("drover_forward_acked_entries_total = %v, want >= %d", got, n)
	}
	if got := metric(t, rt.reg, "drover_router_records_received_total"); got < n*recordsPerEntry {
		t.Errorf("drover_router_records_received_total = %v, want >= %d", got, n*recordsPerEntry)
	}
	d.stop(t)
	rt.stop(t)

	s := readStored(t, fe, "frontend-1", rt.cfg.QueueDir)
	if m := s.missing(fe); len(m) > 0 {
		t.Fatalf("%d sequences lost, first %v", len(m), m[:min(len(m), 10)])
	}
	if dups := s.dups(); len(dups) > 0 {
		t.Fatalf("%d sequences stored twice, first %v", len(dups), dups[:min(len(dups), 10)])
	}
	if len(s.count) != n {
		t.Fatalf("router holds %d sequences, want %d", len(s.count), n)
	}
}

// TestRouterRestart stops the router in the middle of a drain and starts a
// new one on the same directory and endpoint: nothing is lost, and the
// resent entries it had stored already are not stored again.
func TestRouterRestart(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	rt := startRouter(t, cfg)
	cfg.Listen = rt.Addr() // the same port again after the restart
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	d := startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)

	r := rand.New(rand.NewPCG(2, 2))
	fe.appendN(t, 2000, 20, r)
	waitFor(t, 20*time.Second, "the router to store some entries", func() bool {
		return metric(t, rt.reg, "drover_router_entries_stored_total") >= 300
	})
	appending := make(chan struct{})
	go func() { defer close(appending); fe.appendN(t, 1000, 20, r) }()
	rt.abrupt = true // lose the acks of what is in flight, as in a crash
	rt.stop(t)
	rt2 := startRouter(t, cfg)
	<-appending
	waitFor(t, 20*time.Second, "frontend queue to empty", func() bool { return fe.depth() == 0 })
	d.stop(t)
	rt2.stop(t)

	s := readStored(t, fe, "frontend-1", cfg.QueueDir)
	if m := s.missing(fe); len(m) > 0 {
		t.Fatalf("%d sequences lost, first %v", len(m), m[:min(len(m), 10)])
	}
	if dups := s.dups(); len(dups) > 0 {
		t.Fatalf("%d sequences stored twice across the restart, first %v", len(dups), dups[:min(len(dups), 10)])
	}
	t.Logf("restart: %v entries resent and recognised by the new router", metric(t, rt2.reg, "drover_router_duplicate_entries_total"))
}

// peer is a raw DEALER speaking the protocol, for exact scenarios.
type peer struct {
	t    testing.TB
	sock zmq4.Socket
	in   chan forward.Message
	done chan struct{}
}

func dialPeer(t testing.TB, endpoint, id string) *peer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	// A send is bounded like expect's wait (10 s), not by a second: a
	// 1.3 MB batch (TestLargeBatchSplits) takes a few milliseconds here but
	// missed a one-second bound once on a loaded CI machine, where the whole
	// test ran 20 times slower than alone.
	p := &peer{t: t, sock: zmq4.NewDealer(ctx, zmq4.WithID(zmq4.SocketIdentity(id)), zmq4.WithTimeout(10*time.Second)),
		in: make(chan forward.Message, 100), done: make(chan struct{})}
	if err := p.sock.Dial(linkEndpoint(t, clusterlink.RoleFrontend, clusterlink.LinkIngest, endpoint)); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		for {
			msg, err := p.sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			m, err := forward.Decode(msg.Frames)
			if err != nil {
				t.Errorf("peer: bad message: %v", err)
				continue
			}
			select {
			case p.in <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		_ = zmqsock.Close(p.sock)
		<-p.done
	})
	return p
}

func (p *peer) send(m forward.Message) {
	p.t.Helper()
	frames, err := m.Frames()
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.sock.SendMulti(zmq4.NewMsgFrom(frames...)); err != nil {
		p.t.Fatal(err)
	}
}

func (p *peer) sendBatch(f *frontend, sender string, first, last uint64) {
	p.t.Helper()
	f.mu.Lock()
	var ents [][]byte
	for s := first; s <= last; s++ {
		ents = append(ents, makeEntry(f.seqs[s]))
	}
	f.mu.Unlock()
	p.send(forward.Message{Type: forward.TypeBatch, Sender: sender, First: first, Last: last, Entries: ents})
}

func (p *peer) expect(typ forward.Type, first, last uint64) forward.Message {
	p.t.Helper()
	select {
	case m := <-p.in:
		if m.Type != typ || m.First != first || m.Last != last {
			p.t.Fatalf("got %s %d..%d (%s), want %s %d..%d", m.Type, m.First, m.Last, m.Reason, typ, first, last)
		}
		return m
	case <-time.After(10 * time.Second):
		p.t.Fatalf("no %s %d..%d", typ, first, last)
	}
	return forward.Message{}
}

// fakeFrontend registers sequences 1..n as entries 0..n-1 without a queue.
func fakeFrontend(n int) *frontend {
	f := &frontend{seqs: map[uint64]int{}}
	for i := range n {
		f.seqs[uint64(i+1)] = i
	}
	f.n = n
	return f
}

// TestDedupAfterRestart sends batches that overlap, are regrouped, and are
// resent after a restart, with and without the dedup journal (without it,
// the router rebuilds what it knows from its queue).
func TestDedupAfterRestart(t *testing.T) {
	for _, journal := range []bool{true, false} {
		name := "journal"
		if !journal {
			name = "queue-scan"
		}
		t.Run(name, func(t *testing.T) {
			noLeaks(t)
			dir := t.TempDir()
			cfg := testConfig(dir, "router-a")
			f := fakeFrontend(40)
			rt := startRouter(t, cfg)
			p := dialPeer(t, rt.Addr(), "peer-1")
			p.sendBatch(f, "fe", 1, 10)
			p.expect(forward.TypeAck, 1, 10)
			p.sendBatch(f, "fe", 5, 15) // overlaps: 11..15 are new
			p.expect(forward.TypeAck, 5, 15)
			p.sendBatch(f, "fe", 20, 22) // a gap: 16..19 not sent yet
			p.expect(forward.TypeAck, 20, 22)
			p.sendBatch(f, "other", 1, 3) // another sender's sequences are its own
			p.expect(forward.TypeAck, 1, 3)
			if got := metric(t, rt.reg, "drover_router_duplicate_entries_total"); got != 6 {
				t.Errorf("duplicates before restart = %v, want 6", got)
			}
			rt.stop(t)
			if !journal {
				if err := os.Remove(filepath.Join(dir, journalName)); err != nil {
					t.Fatal(err)
				}
			}

			cfg.Listen = rt.Addr()
			rt2 := startRouter(t, cfg)
			p2 := dialPeer(t, rt2.Addr(), "peer-2")
			p2.sendBatch(f, "fe", 1, 25) // new: 16..19 and 23..25
			p2.expect(forward.TypeAck, 1, 25)
			p2.sendBatch(f, "fe", 12, 12)
			p2.expect(forward.TypeAck, 12, 12)
			p2.sendBatch(f, "other", 2, 4)
			p2.expect(forward.TypeAck, 2, 4)
			if got := metric(t, rt2.reg, "drover_router_duplicate_entries_total"); got != 18+1+2 {
				t.Errorf("duplicates after restart = %v, want 21", got)
			}
			if got := metric(t, rt2.reg, "drover_router_entries_stored_total"); got != 7+1 {
				t.Errorf("entries stored after restart = %v, want 8", got)
			}
			rt2.stop(t)

			// Each run the dedup split off is its own entry, with exact ranges.
			fe := readStored(t, f, "fe", dir)
			for s := uint64(1); s <= 25; s++ {
				if fe.count[s] != 1 {
					t.Errorf("sequence %d of fe stored %d times", s, fe.count[s])
				}
			}
			if len(fe.count) != 25 {
				t.Errorf("fe has %d sequences stored, want 25", len(fe.count))
			}
			for s := uint64(1); s <= 4; s++ {
				if n := fe.others["other"][s]; n != 1 {
					t.Errorf("sequence %d of other stored %d times", s, n)
				}
			}
		})
	}
}

// TestConcurrentDuplicates sends the same batch several times at once: the
// copies that arrive while the first is being appended wait for it; the
// batch is stored once and every copy is acked.
func TestConcurrentDuplicates(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	rt := startRouter(t, testConfig(dir, "router-a"))
	f := fakeFrontend(50)
	p := dialPeer(t, rt.Addr(), "peer-1")
	for range 5 {
		p.sendBatch(f, "fe", 1, 50)
	}
	for range 5 {
		p.expect(forward.TypeAck, 1, 50)
	}
	if got := metric(t, rt.reg, "drover_router_duplicate_entries_total"); got != 4*50 {
		t.Errorf("duplicates = %v, want 200", got)
	}
	rt.stop(t)
	s := readStored(t, f, "fe", dir)
	if len(s.count) != 50 || len(s.dups()) != 0 {
		t.Errorf("stored %d sequences with %d duplicates, want 50 once each", len(s.count), len(s.dups()))
	}
}

// TestRejectsMalformed: a batch whose entry is not a Batch is rejected
// with a reason; a message of an unknown version is dropped and counted.
func TestRejectsMalformed(t *testing.T) {
	noLeaks(t)
	rt := startRouter(t, testConfig(t.TempDir(), "router-a"))
	p := dialPeer(t, rt.Addr(), "peer-1")
	p.send(forward.Message{Type: forward.TypeBatch, Sender: "fe", First: 1, Last: 2, Entries: [][]byte{makeEntry(0), {0x1a, 0x7f, 1}}})
	if m := p.expect(forward.TypeReject, 1, 2); m.Reason == "" {
		t.Error("reject without a reason")
	}
	if err := p.sock.Send(zmq4.NewMsg([]byte{forward.Version + 1, byte(forward.TypePing), 0, 0, 0, 0, 0, 0, 0, 0})); err != nil {
		t.Fatal(err)
	}
	p.send(forward.Message{Type: forward.TypePing, Nonce: 7})
	if m := <-p.in; m.Type != forward.TypePong || m.Nonce != 7 || m.Router != "router-a" {
		t.Errorf("ping answered with %+v", m)
	}
	waitFor(t, 5*time.Second, "the bad version to be counted", func() bool {
		return metric(t, rt.reg, "drover_router_bad_messages_total", "reason", "version") == 1
	})
	if got := metric(t, rt.reg, "drover_router_rejected_batches_total", "reason", "malformed"); got != 1 {
		t.Errorf("rejected malformed = %v, want 1", got)
	}
}

// TestFailover runs two routers and stops the one the drainer prefers in
// the middle of a drain: the drainer fails over and everything arrives.
// Sequences in both queues can only be batches in flight at the stop.
func TestFailover(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	ra := startRouter(t, testConfig(filepath.Join(dir, "a"), "router-a"))
	rb := startRouter(t, testConfig(filepath.Join(dir, "b"), "router-b"))
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	dcfg := testDrainerConfig("frontend-1", ra.Addr(), rb.Addr())
	d := startDrainer(t, dcfg, fe.q)
	waitFor(t, 10*time.Second, "both routers up", func() bool { up, _ := d.Routers(); return up == 2 })

	r := rand.New(rand.NewPCG(3, 3))
	fe.appendN(t, 2000, 20, r)
	var first, second *running
	waitFor(t, 20*time.Second, "one router to store entries", func() bool {
		a := metric(t, ra.reg, "drover_router_entries_stored_total")
		b := metric(t, rb.reg, "drover_router_entries_stored_total")
		switch {
		case a >= 300:
			first, second = ra, rb
		case b >= 300:
			first, second = rb, ra
		}
		return first != nil
	})
	// Sticky: all to the preferred router, unless it was seen down or slow
	// (a loaded machine misses the tests' short heartbeats).
	if got := metric(t, second.reg, "drover_router_entries_stored_total"); got != 0 &&
		metric(t, d.reg, "drover_forward_router_down_total")+metric(t, d.reg, "drover_forward_resent_batches_total") == 0 {
		t.Errorf("the drainer sent to both routers while both were up (%v entries to the second): not sticky", got)
	}
	appending := make(chan struct{})
	go func() { defer close(appending); fe.appendN(t, 1000, 20, r) }()
	first.abrupt = true // lose the acks of what is in flight, as in a crash
	first.stop(t)
	<-appending
	waitFor(t, 20*time.Second, "frontend queue to empty", func() bool { return fe.depth() == 0 })
	if up, _ := d.Routers(); up != 1 {
		t.Errorf("Routers() up = %d after one stopped, want 1", up)
	}
	if got := metric(t, second.reg, "drover_router_entries_stored_total"); got == 0 {
		t.Error("nothing went to the second router")
	}
	d.stop(t)
	second.stop(t)

	s := readStored(t, fe, "frontend-1", first.cfg.QueueDir, second.cfg.QueueDir)
	if m := s.missing(fe); len(m) > 0 {
		t.Fatalf("%d sequences lost, first %v", len(m), m[:min(len(m), 10)])
	}
	for _, in := range s.byDir {
		for seq := range in {
			if s.count[seq] > 2 {
				t.Fatalf("sequence %d stored %d times", seq, s.count[seq])
			}
		}
	}
	// A duplicate across routers is a batch the first router stored but
	// whose ack the drainer did not get before the stop: at most what was
	// in flight, MaxInflight queue batches of at most one record (20
	// entries) beyond MaxBatchBytes each.
	maxEntries := len(makeEntry(0)) + 16<<10
	bound := dcfg.MaxInflight * (maxEntries/len(makeEntry(0)) + 20)
	if dups := s.dups(); len(dups) > bound {
		t.Fatalf("%d sequences in both routers, more than could be in flight (%d)", len(dups), bound)
	} else {
		t.Logf("failover: %d sequences in both routers (bound %d)", len(dups), bound)
	}
}

// TestBusyBackpressure fills the router's queue: the router answers busy,
// the drainer backs off and resends, and everything arrives once the test
// drains the router's queue.
func TestBusyBackpressure(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.QueueMaxBytes = 48 << 10
	rt := startRouter(t, cfg)
	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	d := startDrainer(t, testDrainerConfig("frontend-1", rt.Addr()), fe.q)
	fe.appendN(t, 400, 10, rand.New(rand.NewPCG(4, 4)))

	waitFor(t, 10*time.Second, "the router to refuse (busy)", func() bool {
		return metric(t, rt.reg, "drover_router_busy_refusals_total", "reason", "queue_full") > 0
	})
	if fe.depth() == 0 {
		t.Fatal("the frontend queue emptied although the router was full")
	}
	// Be the router's consumer: take what it stored, remove it.
	got := map[uint64]int{}
	seen := map[uint64]bool{}
	waitFor(t, 30*time.Second, "every entry to reach the router", func() bool {
		for {
			b, err := rt.q.TryRead(1 << 20)
			if err != nil {
				t.Fatal(err)
			}
			if len(b.Entries) == 0 {
				break
			}
			for _, e := range b.Entries {
				checkStoredEntry(t, fe, "frontend-1", e.Data, got, seen)
			}
			rt.q.Ack(b)
		}
		return len(got) == 400 && fe.depth() == 0
	})
	for seq, n := range got {
		if n != 1 {
			t.Errorf("sequence %d stored %d times", seq, n)
		}
	}
	if n := metric(t, d.reg, "drover_forward_resent_batches_total", "reason", "busy"); n == 0 {
		t.Error("the drainer resent nothing for busy")
	}
}

// TestNoRouterWaits starts the drainer before any router exists: it sends
// nothing, does not spin, and delivers by itself once the router comes.
func TestNoRouterWaits(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	// Find a free port, then leave it free for the router to come.
	probe := startRouter(t, testConfig(filepath.Join(dir, "probe"), "probe"))
	endpoint := probe.Addr()
	probe.stop(t)

	fe := openFrontend(t, filepath.Join(dir, "frontend"), queue.SyncAlways)
	fe.appendN(t, 100, 10, rand.New(rand.NewPCG(5, 5)))
	d := startDrainer(t, testDrainerConfig("frontend-1", endpoint), fe.q)
	time.Sleep(500 * time.Millisecond) // a window in which nothing must happen
	if up, total := d.Routers(); up != 0 || total != 1 {
		t.Errorf("Routers() = %d, %d with no router; want 0, 1", up, total)
	}
	if n := metric(t, d.reg, "drover_forward_sent_batches_total"); n != 0 {
		t.Errorf("%v batches sent with no router up", n)
	}
	if n := metric(t, d.reg, "drover_forward_waiting_batches"); n == 0 {
		t.Error("no batch waiting for a router")
	}
	cfg := testConfig(filepath.Join(dir, "router"), "router-a")
	cfg.Listen = endpoint
	rt := startRouter(t, cfg)
	waitFor(t, 10*time.Second, "frontend queue to empty", func() bool { return fe.depth() == 0 })
	d.stop(t)
	rt.stop(t)
	s := readStored(t, fe, "frontend-1", cfg.QueueDir)
	if len(s.count) != 100 || len(s.dups()) != 0 {
		t.Errorf("router holds %d sequences, %d twice; want 100 once", len(s.count), len(s.dups()))
	}
}

// TestLargeBatchSplits: a batch larger than a router queue record is stored
// as several entries, each with its exact sequence range.
func TestLargeBatchSplits(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	rt := startRouter(t, testConfig(dir, "router-a"))
	const n = 1500 // ~1.3 MB of entries: more than one 1 MiB record
	f := fakeFrontend(n)
	p := dialPeer(t, rt.Addr(), "peer-1")
	p.sendBatch(f, "fe", 1, n)
	p.expect(forward.TypeAck, 1, n)
	if got := metric(t, rt.reg, "drover_queue_records_total"); got < 2 {
		t.Errorf("stored in %v queue records, want at least 2", got)
	}
	rt.stop(t)
	s := readStored(t, f, "fe", dir)
	if len(s.count) != n || len(s.dups()) != 0 {
		t.Errorf("stored %d sequences, %d twice; want %d once", len(s.count), len(s.dups()), n)
	}
}
