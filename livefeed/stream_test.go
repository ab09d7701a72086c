package livefeed

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/telemetry"
)

// streamGauges returns the shared streams and the clients in them.
func streamGauges(rf *running) (streams, clients int) {
	return int(testutil.ToFloat64(rf.m.streams)), int(testutil.ToFloat64(rf.m.streamClients))
}

// untilStreamed publishes ticks of vehicle id (a client joins its stream
// when its writer is next woken with nothing left of its own) until the
// feed has want clients in streams, and returns the next tick's seq.
func untilStreamed(t *testing.T, rf *running, pub *publisher, id, fleet string, t0 int64, seq uint64, want int) uint64 {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%d clients in shared streams", want), func() bool {
		seq++
		pub.publish(rec(id, fleet, seq, t0+int64(seq), -25, 15))
		time.Sleep(5 * time.Millisecond)
		_, n := streamGauges(rf)
		return n == want
	})
	return seq + 1
}

// TestStreamSharesOneMessage: clients with the same filter that keep up are
// fed one shared stream, each update message built once and written to
// each of them, alerts included; a client with a filter of its own stays
// on its own path and gets only its vehicles.
func TestStreamSharesOneMessage(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	lane := newAlertLane(t)
	rf := startFeed(t, func(c *Config) {
		c.MaxRate = 1000 // the rate limit is not this test's subject
		c.Alerts = []string{lane.ep}
	}, pub)
	t0 := time.Now().UnixMilli()
	pub.publish(rec("in-1", "acme", 1, t0, -25, 15), rec("in-2", "acme", 1, t0, -25, 16), rec("out-1", "acme", 1, t0, 40, -70))
	rf.waitVehicles(t, 3)

	box := &BBox{West: 10, South: -30, East: 20, North: -20}
	a, b := dial(t, rf, devToken), dial(t, rf, devToken)
	own := dial(t, rf, devToken)
	a.subscribe(subscribeMsg{BBox: box})
	b.subscribe(subscribeMsg{BBox: box})
	own.subscribe(subscribeMsg{Devices: []string{"in-1", "out-1"}})
	seq := untilStreamed(t, rf, pub, "in-1", "acme", t0, 1, 2)
	if s, n := streamGauges(rf); s != 1 || n != 2 {
		t.Fatalf("%d streams with %d clients, want the two clients of the same box in one", s, n)
	}
	// last reads messages until every one of ids has come at seq or later
	// (a vehicle the rate limit held comes in a message of its own).
	last := func(c *testClient, seq uint64, ids ...string) []message {
		var msgs []message
		left := slices.Clone(ids)
		deadline := time.Now().Add(10 * time.Second)
		for len(left) > 0 {
			m := c.next(time.Until(deadline))
			msgs = append(msgs, m)
			for _, v := range m.Vehicles {
				if v.Seq >= seq {
					left = slices.DeleteFunc(left, func(id string) bool { return id == v.ID })
				}
			}
		}
		return msgs
	}
	// A client that joins may get the last tick again (the stream took it
	// after the join; docs/design.md): one more update of in-1, read by
	// every client, comes after anything of the join. Then count what
	// three batches take.
	pub.publish(rec("in-1", "acme", seq, t0+int64(seq), -25, 15))
	for _, c := range []*testClient{a, b, own} {
		last(c, seq, "in-1")
	}
	seq++
	built := testutil.ToFloat64(rf.m.streamMessages)
	var gotA, gotB, gotOwn []message
	for k := range uint64(3) {
		s := seq + k
		pub.publish(rec("in-1", "acme", s, t0+int64(s), -25, 15), rec("in-2", "acme", s, t0+int64(s), -25, 16),
			rec("out-1", "acme", s, t0+int64(s), 40, -70))
		gotA = append(gotA, last(a, s, "in-1", "in-2")...)
		gotB = append(gotB, last(b, s, "in-1", "in-2")...)
		gotOwn = append(gotOwn, last(own, s, "in-1", "out-1")...)
	}
	builtN := int(testutil.ToFloat64(rf.m.streamMessages) - built)
	if builtN == 0 || builtN != len(gotA) || builtN != len(gotB) {
		t.Errorf("the stream built %d messages; the members read %d and %d: want each built once and read by both",
			builtN, len(gotA), len(gotB))
		for _, m := range append(gotA, gotB...) {
			t.Logf("%s %v %v", m.Type, m.Vehicles, m.Removed)
		}
	}
	for _, got := range [][]message{gotA, gotB} {
		for _, m := range got {
			if slices.Contains(m.ids(), "out-1") {
				t.Errorf("a member of the box's stream got out-1, outside the box")
			}
		}
	}
	for _, m := range gotOwn {
		if slices.Contains(m.ids(), "in-2") {
			t.Errorf("the client following in-1 and out-1 got in-2")
		}
	}
	if s, n := streamGauges(rf); s != 1 || n != 2 {
		t.Errorf("after the updates: %d streams with %d clients, want 1 with 2", s, n)
	}

	// An alert of a vehicle in the box reaches both members.
	waitFor(t, 10*time.Second, "the alert lane subscriber", func() bool { _, n := lane.p.Subscribers(); return n == 1 })
	waitFor(t, 10*time.Second, "an alert through", func() bool {
		lane.publish(t, "instant", "al_probe", "out-1", "acme", 40, -70)
		time.Sleep(20 * time.Millisecond)
		return testutil.ToFloat64(rf.m.alertsReceived) > 0
	})
	lane.publish(t, "raised", "al_in", "in-2", "acme", -25, 16)
	alertsUntil(t, a, "al_in")
	alertsUntil(t, b, "al_in")
	if _, n := streamGauges(rf); n != 2 {
		t.Errorf("%d clients in the stream after the alert, want 2", n)
	}

	// A member that subscribes again leaves the stream: its snapshot, then
	// only its new filter's vehicles; the other member stays.
	snap := a.subscribe(subscribeMsg{Devices: []string{"in-2"}})
	if ids := snap.ids(); !slices.Equal(ids, []string{"in-2"}) {
		t.Errorf("snapshot after subscribing again: %v, want [in-2]", ids)
	}
	if n := testutil.ToFloat64(rf.m.streamLeaves.WithLabelValues(leaveResubscribe)); n != 1 {
		t.Errorf("%v clients left a stream to subscribe again, want 1", n)
	}
	if s, n := streamGauges(rf); s != 1 || n != 1 {
		t.Errorf("after a member subscribed again: %d streams with %d clients, want 1 with 1", s, n)
	}
	s := seq + 3
	pub.publish(rec("in-1", "acme", s, t0+int64(s), -25, 15), rec("in-2", "acme", s, t0+int64(s), -25, 16))
	for _, m := range last(a, s, "in-2") {
		if slices.Contains(m.ids(), "in-1") {
			t.Errorf("the client now following in-2 only got in-1: %v", m.ids())
		}
	}
	last(b, s, "in-1", "in-2")
}

// TestStreamMemberBehindLeavesAndRejoins: a member that stops reading never
// holds back the stream's other member; once it is maxSharedBehind behind
// it leaves the stream and is fed on its own: its vehicles' latest states
// (the messages it missed conflated), the removal of one that left its
// filter meanwhile, every vehicle in order; caught up, it joins the stream
// again.
func TestStreamMemberBehindLeavesAndRejoins(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, func(c *Config) {
		c.MaxRate = 1000
		c.sharedBehind = 32 << 10
		c.SlowBacklog = 1 << 20 // the stream, not the slow-client rule, is this test's subject
		c.SlowTimeout = time.Minute
		c.WriteTimeout = time.Minute
	}, pub)
	const vehicles = 200
	t0 := time.Now().UnixMilli()
	round := func(r uint64, moved bool) {
		recs := make([]*telemetry.EnrichedRecord, 0, vehicles)
		for i := range vehicles {
			lat := -25.0
			if i == 1 && moved {
				lat = 40 // v001 leaves the box
			}
			recs = append(recs, rec(fmt.Sprintf("v%03d", i), "f", r, t0+int64(r), lat, 15+float64(i)/1000))
		}
		pub.publish(recs...)
	}
	round(1, false)
	rf.waitVehicles(t, vehicles)
	box := &BBox{West: 10, South: -30, East: 20, North: -20}

	fast := dial(t, rf, devToken)
	fast.subscribe(subscribeMsg{BBox: box})
	// The slow client reads only while let. (A receive buffer shrunk with
	// SO_RCVBUF would fill sooner, but then the kernel's zero-window
	// probes, backed off over the pause, hold the data for seconds after
	// it reads again.)
	slowWS, _, err := dialRaw(rf, devToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	slow := newPausedReader(t, slowWS)
	if err := slowWS.WriteJSON(subscribeMsg{Type: "subscribe", ID: "slow", BBox: box}); err != nil {
		t.Fatal(err)
	}
	slow.until(t, func(m message) bool { return m.Type == "snapshot" })
	r := untilStreamed(t, rf, pub, "v000", "f", t0, 1, 2)

	// The slow client stops reading; the stream goes on. Until the kernel's
	// buffers are full it may fall behind and catch up again; then it is
	// out for good (five rounds in a row).
	slow.pause()
	out := func() bool {
		_, n := streamGauges(rf)
		return testutil.ToFloat64(rf.m.streamLeaves.WithLabelValues(leaveBehind)) > 0 && n == 1
	}
	deadline := time.Now().Add(30 * time.Second)
	for streak := 0; streak < 5; r++ {
		if time.Now().After(deadline) {
			t.Fatal("the slow member did not stay out of the stream within 30 s")
		}
		round(r, false)
		fast.until(10*time.Second, func(v vjson) bool { return v.ID == fmt.Sprintf("v%03d", vehicles-1) && v.Seq == r })
		if streak++; !out() {
			streak = 0
		}
	}
	// Meanwhile v001 leaves the box.
	round(r, true)
	fast.until(10*time.Second, func(v vjson) bool { return v.ID == fmt.Sprintf("v%03d", vehicles-1) && v.Seq == r })
	joins := testutil.ToFloat64(rf.m.streamJoins)

	// It reads again: everything in order, v001 removed, the latest state
	// of every other vehicle; then it is back in the stream.
	slow.resume()
	final := r
	slow.until(t, func(message) bool {
		return slow.removed["v001"] && slow.seqs[fmt.Sprintf("v%03d", vehicles-1)] == final
	})
	waitFor(t, 10*time.Second, "the slow client back in the stream", func() bool {
		r++
		pub.publish(rec("v000", "f", r, t0+int64(r), -25, 15))
		time.Sleep(5 * time.Millisecond)
		_, n := streamGauges(rf)
		return n == 2 && testutil.ToFloat64(rf.m.streamJoins) > joins
	})
	r++
	round(r, true)
	last := r
	slow.until(t, func(message) bool { return slow.seqs[fmt.Sprintf("v%03d", vehicles-1)] == last })
	for i := range vehicles {
		id := fmt.Sprintf("v%03d", i)
		if got := slow.seqs[id]; i != 1 && got != last {
			t.Errorf("%s: last seq %d, want %d", id, got, last)
		}
	}
	if slow.bad != "" {
		t.Error(slow.bad)
	}
	if n := testutil.ToFloat64(rf.m.slowDisconnects); n != 0 {
		t.Errorf("%v clients disconnected as slow", n)
	}
}

// pausedReader reads a client's messages unless paused, and checks that
// each vehicle comes in order and that a removed one does not come back.
type pausedReader struct {
	ws   *websocket.Conn
	msgs chan message
	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	gate chan struct{} // nil: reading; else closed on resume

	// Owned by until.
	seqs    map[string]uint64 // by vehicle, the last seq read
	removed map[string]bool
	bad     string
}

func newPausedReader(t *testing.T, ws *websocket.Conn) *pausedReader {
	p := &pausedReader{ws: ws, msgs: make(chan message, 100000), stop: make(chan struct{}), done: make(chan struct{}),
		seqs: map[string]uint64{}, removed: map[string]bool{}}
	go p.loop()
	t.Cleanup(func() { close(p.stop); _ = ws.Close(); <-p.done })
	return p
}

func (p *pausedReader) loop() {
	defer close(p.done)
	for {
		p.mu.Lock()
		g := p.gate
		p.mu.Unlock()
		if g != nil {
			select {
			case <-g:
			case <-p.stop:
				return
			}
		}
		_, data, err := p.ws.ReadMessage()
		if err != nil {
			return
		}
		var m message
		if err := json.Unmarshal(data, &m); err != nil {
			return
		}
		select {
		case p.msgs <- m:
		case <-p.stop:
			return
		}
	}
}

func (p *pausedReader) pause() {
	p.mu.Lock()
	p.gate = make(chan struct{})
	p.mu.Unlock()
}

func (p *pausedReader) resume() {
	p.mu.Lock()
	close(p.gate)
	p.gate = nil
	p.mu.Unlock()
}

// until takes read messages until stop says so, checking their order.
func (p *pausedReader) until(t *testing.T, stop func(message) bool) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case m := <-p.msgs:
			for _, v := range m.Vehicles {
				if v.Seq < p.seqs[v.ID] && p.bad == "" {
					p.bad = fmt.Sprintf("%s: seq %d after %d", v.ID, v.Seq, p.seqs[v.ID])
				}
				if m.Type == "update" && p.removed[v.ID] && p.bad == "" {
					p.bad = fmt.Sprintf("%s: updated after its removal (it stayed outside the box)", v.ID)
				}
				p.seqs[v.ID] = v.Seq
			}
			for _, id := range m.Removed {
				p.removed[id] = true
			}
			if stop(m) {
				return
			}
		case <-deadline:
			t.Fatalf("the slow client did not get what it should within 20 s (last seqs %v)", p.seqs)
		case <-p.done:
			t.Fatal("the slow client's connection ended")
		}
	}
}

// TestCompressionNegotiated: with Config.Compression a client that offers
// permessage-deflate gets its updates compressed, on a shared stream (where
// the message is compressed once for every member) and on its own path
// alike, and reads them intact; without it, the same client gets them
// uncompressed.
func TestCompressionNegotiated(t *testing.T) {
	noLeaks(t)
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("compression=%v", on), func(t *testing.T) {
			pub := newPublisher(t, "r0")
			rf := startFeed(t, func(c *Config) {
				c.MaxRate = 1000
				c.Compression = on
			}, pub)
			t0 := time.Now().UnixMilli()
			batch := func(seq uint64) {
				recs := make([]*telemetry.EnrichedRecord, 0, 50)
				for i := range 50 {
					recs = append(recs, rec(fmt.Sprintf("v%02d", i), "f", seq, t0+int64(seq), -25, 15+float64(i)/100))
				}
				pub.publish(recs...)
			}
			batch(1)
			rf.waitVehicles(t, 50)
			type counted struct {
				c    *testClient
				wire *atomic.Int64
			}
			var clients []counted
			for _, sub := range []subscribeMsg{{}, {}, {Fleets: []string{"f"}}} {
				var wire atomic.Int64
				d := &websocket.Dialer{HandshakeTimeout: 5 * time.Second, EnableCompression: true,
					NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
						c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
						if err != nil {
							return nil, err
						}
						return countingConn{Conn: c, n: &wire}, nil
					}}
				ws, _, err := dialRaw(rf, devToken, d)
				if err != nil {
					t.Fatal(err)
				}
				c := startClient(t, ws)
				c.subscribe(sub)
				clients = append(clients, counted{c, &wire})
			}
			seq := untilStreamed(t, rf, pub, "v00", "f", t0, 1, 2)
			for _, c := range clients {
				c.c.until(10*time.Second, func(v vjson) bool { return v.ID == "v00" && v.Seq == seq-1 })
			}
			for i, c := range clients {
				before := c.wire.Load()
				batch(seq)
				got := map[string]bool{}
				payload := 0
				for len(got) < 50 {
					m := c.c.next(10 * time.Second)
					b, _ := json.Marshal(m.Vehicles)
					payload += len(b)
					for _, v := range m.Vehicles {
						if v.Seq == seq {
							got[v.ID] = true
						}
					}
				}
				wire := int(c.wire.Load() - before)
				t.Logf("client %d: %d bytes on the wire for ~%d of JSON", i, wire, payload)
				if on && wire*2 > payload {
					t.Errorf("client %d: %d bytes on the wire for ~%d of JSON: not compressed", i, wire, payload)
				}
				if !on && wire < payload*3/4 {
					t.Errorf("client %d: %d bytes on the wire for ~%d of JSON, compression off", i, wire, payload)
				}
				for j, o := range clients {
					if j == i {
						continue
					}
					o.c.until(10*time.Second, func(v vjson) bool { return v.ID == "v49" && v.Seq == seq })
				}
				seq++
			}
		})
	}
}

// TestStreamRoundWaitsOnlyForMembersKeepingUp: after handing out a message
// the stream waits for the members that had nothing of its waiting (they
// keep up) to write it, not for those already behind, and never past the
// last of them; the publisher's own hold keeps the round open until every
// member has been given the message.
func TestStreamRoundWaitsOnlyForMembersKeepingUp(t *testing.T) {
	written := func(m *sharedMsg) bool {
		select {
		case <-m.written:
			return true
		default:
			return false
		}
	}
	m := &sharedMsg{written: make(chan struct{})}
	m.pending.Store(1) // the publisher's hold
	keeping1 := sharedRef{m: m, counted: true}
	keeping2 := sharedRef{m: m, counted: true}
	behind := sharedRef{m: m} // had earlier messages waiting when it got m
	m.pending.Add(2)
	// A member writes it before the publisher has given it to the others:
	// the round stays open.
	keeping1.release()
	m.done()
	if written(m) {
		t.Fatal("round closed while a member keeping up has not written the message")
	}
	behind.release()
	if written(m) {
		t.Fatal("a member that is behind closed the round")
	}
	keeping2.release()
	if !written(m) {
		t.Fatal("round still open after every member keeping up wrote the message")
	}
	// A member that leaves the stream drops what it holds: releaseAll.
	m2 := &sharedMsg{written: make(chan struct{})}
	m2.pending.Store(2)
	releaseAll([]sharedRef{{m: m2, counted: true}, {m: m2}})
	m2.done()
	if !written(m2) {
		t.Fatal("a dropped queue did not release its message")
	}
}
