package frontend

import (
	"context"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// gatherConn is a device's TCP connection that can hold its writes and send
// them in one write(2): frames that reach the frontend back to back, as
// they do when a device's window is full of frames waiting in the socket.
type gatherConn struct {
	net.Conn
	mu      sync.Mutex
	holding bool
	buf     []byte
}

func (g *gatherConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.holding {
		g.buf = append(g.buf, p...)
		return len(p), nil
	}
	return g.Conn.Write(p)
}

func (g *gatherConn) hold() {
	g.mu.Lock()
	g.holding = true
	g.mu.Unlock()
}

// flush sends what was held in one write.
func (g *gatherConn) flush(t testing.TB) {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holding = false
	if _, err := g.Conn.Write(g.buf); err != nil {
		t.Fatalf("flush: %v", err)
	}
	g.buf = nil
}

// connectGathering connects device i over a gatherConn (ws://).
func (e *env) connectGathering(t testing.TB, i int) (*websocket.Conn, *gatherConn) {
	t.Helper()
	return e.connectGatheringTLS(t, i, nil)
}

// connectGatheringTLS connects device i over a gatherConn, with TLS over it
// when tf is not nil (wss://: the TLS records of held frames go out
// together).
func (e *env) connectGatheringTLS(t testing.TB, i int, tf *tlsFiles) (*websocket.Conn, *gatherConn) {
	t.Helper()
	var g *gatherConn
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	u := e.url
	if tf != nil {
		d = *tf.tlsDialer(nil, nil)
		u = e.wssURL()
	}
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		g = &gatherConn{Conn: c}
		return g, nil
	}
	h := http.Header{}
	h.Set(HeaderDevice, deviceID(i))
	h.Set("Authorization", "Bearer "+tokenOf(i))
	ws, _, err := d.Dial(u, h)
	if err != nil {
		t.Fatalf("dial %s: %v", deviceID(i), err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws, g
}

// TestFramesBackToBack: frames that arrive together are stored once each and
// acked one per frame, in order, each in its frame's encoding, and their
// acks go out in one write per settle (maxAhead frames at most).
func TestFramesBackToBack(t *testing.T) {
	t.Run("ws", func(t *testing.T) {
		e := startWith(t, 4, nil)
		ws, g := e.connectGathering(t, 1)
		framesBackToBack(t, e, ws, g)
	})
	t.Run("wss", func(t *testing.T) {
		tf := newTLSFiles(t, "127.0.0.1")
		e := startWith(t, 4, tf.withTLS(false))
		ws, g := e.connectGatheringTLS(t, 1, tf)
		framesBackToBack(t, e, ws, g)
	})
}

func framesBackToBack(t *testing.T, e *env, ws *websocket.Conn, g *gatherConn) {
	now := time.Now()
	type frame struct {
		text bool
		seqs []uint64
		ack  uint64
	}
	frames := []frame{
		{false, seqRange(1, 5), 5},
		{false, seqRange(6, 10), 10},
		{false, seqRange(6, 10), 10}, // a resend inside the run: acked, not stored again
		{true, seqRange(11, 12), 12}, // JSON: its ack is JSON
		{false, seqRange(9, 14), 14}, // overlaps: only 13 and 14 are new
		{false, seqRange(15, 15), 15},
		{false, seqRange(16, 20), 20},
		{false, seqRange(21, 30), 30}, // the eighth: the first settle
		{false, seqRange(31, 31), 31},
		{false, seqRange(1, 31), 31}, // all seen
		{true, seqRange(32, 40), 40},
		{false, seqRange(41, 50), 50},
	}
	g.hold()
	for _, f := range frames {
		send(t, ws, f.text, readings(now, f.seqs...))
	}
	g.flush(t)
	for i, f := range frames {
		got, ce := next(t, ws, f.text)
		if ce != nil {
			t.Fatalf("frame %d: closed %d %q, want ack %d", i, ce.Code, ce.Text, f.ack)
		}
		if got != f.ack {
			t.Fatalf("frame %d: ack %d, want %d", i, got, f.ack)
		}
	}
	// The counter follows the write the device just read from.
	waitFor(t, 5*time.Second, "ack writes counted", func() bool { return e.metric(e.f.m.ackWrites) >= 2 })
	if got := e.metric(e.f.m.ackWrites); got != 2 {
		t.Errorf("acks of 12 frames sent together went out in %v writes, want 2 (8 and 4)", got)
	}
	if got, want := e.metric(e.f.m.framesDuplicate), 2.0; got != want {
		t.Errorf("frames_duplicate = %v, want %v", got, want)
	}
	// A frame alone still gets its ack at once.
	ack(t, ws, false, readings(now, 51), 51)
	e.stop(t)
	if got := readQueue(t, e.cfg).seqs("dev-1"); !slices.Equal(got, seqRange(1, 51)) {
		t.Errorf("stored %v, want 1..51 once each", got)
	}
}

// TestFramesBackToBackRefused: a frame refused inside a run of frames
// (invalid, or the queue full) closes the connection after the frames
// before it are acked; nothing after it is acked, and exactly what was
// acked is stored.
func TestFramesBackToBackRefused(t *testing.T) {
	t.Run("invalid", func(t *testing.T) {
		e := startWith(t, 4, nil)
		ws, g := e.connectGathering(t, 1)
		now := time.Now()
		g.hold()
		send(t, ws, false, readings(now, 1, 2))
		send(t, ws, false, readings(now, 3, 4))
		send(t, ws, false, readings(now, 6, 5)) // seqs must increase: 1007
		send(t, ws, false, readings(now, 7, 8))
		g.flush(t)
		for _, want := range []uint64{2, 4} {
			if got, ce := next(t, ws, false); ce != nil || got != want {
				t.Fatalf("ack %d (close %v), want %d", got, ce, want)
			}
		}
		expectClose(t, ws, websocket.CloseInvalidFramePayloadData)
		e.stop(t)
		if got := readQueue(t, e.cfg).seqs("dev-1"); !slices.Equal(got, seqRange(1, 4)) {
			t.Errorf("stored %v, want 1..4", got)
		}
	})
	t.Run("queue-full", func(t *testing.T) {
		e := startWith(t, 4, func(c *Config) { c.QueueMaxBytes = 2000 })
		ws, g := e.connectGathering(t, 1)
		now := time.Now()
		g.hold()
		for i := uint64(0); i < 30; i++ {
			send(t, ws, false, readings(now, seqRange(i*10+1, i*10+10)...))
		}
		g.flush(t)
		var acked []uint64
		for {
			got, ce := next(t, ws, false)
			if ce != nil {
				if ce.Code != websocket.CloseTryAgainLater {
					t.Fatalf("closed %d %q, want 1013", ce.Code, ce.Text)
				}
				break
			}
			if want := uint64(len(acked) + 10); got != want {
				t.Fatalf("ack %d, want %d", got, want)
			}
			acked = append(acked, seqRange(got-9, got)...)
		}
		if len(acked) == 0 || len(acked) == 300 {
			t.Fatalf("%d readings acked, want some and not all", len(acked))
		}
		e.stop(t)
		if got := readQueue(t, e.cfg).seqs("dev-1"); !slices.Equal(got, acked) {
			t.Errorf("stored %v, want exactly the acked %v", got, acked)
		}
	})
}

// TestFramesThenClose: a device that sends frames and its close together
// gets every ack before the close's answer.
func TestFramesThenClose(t *testing.T) {
	e := startWith(t, 4, nil)
	ws, g := e.connectGathering(t, 1)
	now := time.Now()
	g.hold()
	for i := uint64(0); i < 3; i++ {
		send(t, ws, false, readings(now, i+1))
	}
	if err := ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")); err != nil {
		t.Fatal(err)
	}
	g.flush(t)
	for want := uint64(1); want <= 3; want++ {
		if got, ce := next(t, ws, false); ce != nil || got != want {
			t.Fatalf("ack %d (close %v), want %d", got, ce, want)
		}
	}
	if _, ce := next(t, ws, false); ce == nil || ce.Code != websocket.CloseNormalClosure {
		t.Fatalf("after the acks: %v, want the close answered (1000)", ce)
	}
	e.stop(t)
	if got := readQueue(t, e.cfg).seqs("dev-1"); !slices.Equal(got, seqRange(1, 3)) {
		t.Errorf("stored %v, want 1..3", got)
	}
}
