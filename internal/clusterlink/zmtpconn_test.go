package clusterlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// greeting is a ZMTP 3.0 greeting with the NULL mechanism, as a client.
func greeting() []byte {
	g := make([]byte, 64)
	g[0], g[9], g[10], g[11] = 0xFF, 0x7F, 3, 0
	copy(g[12:], "NULL")
	return g
}

// command is a ZMTP command frame (short form) with body.
func command(body []byte) []byte {
	return append([]byte{0x04, byte(len(body))}, body...)
}

func ready(props ...string) []byte {
	b := append([]byte{5}, "READY"...)
	for i := 0; i+1 < len(props); i += 2 {
		b = append(b, byte(len(props[i])))
		b = append(b, props[i]...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(props[i+1])))
		b = append(b, props[i+1]...)
	}
	return b
}

// rawPeer connects a plain TCP connection to an insecure link and writes
// what a hostile peer would.
func rawPeer(t *testing.T, addr string, parts ...[]byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(addr, "tcp://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, p := range parts {
		if _, err := c.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// closedByPeer reads until the connection ends; it fails the test if the
// peer keeps it open.
func closedByPeer(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the server did not close the connection: %v", err)
	}
}

// TestHostileFrames: what zmq4 v0.17.0 would crash on (a frame header of
// 2^62 bytes, which it allocates; a READY whose metadata runs past its
// end, which it indexes unchecked) and what it would wait for forever (a
// peer that stops after its signature) are refused before zmq4 sees them:
// counted, the connection closed, and the server still serves others.
// Insecure links, so that a raw TCP peer reaches ZMTP at all.
func TestHostileFrames(t *testing.T) {
	noLeaks(t)
	router := newSide(t, Config{Insecure: true}, RoleRouter, "router-1")
	router.handshakeTimeout = 300 * time.Millisecond
	router.maxMessage = 1 << 20
	srv := startServer(t, router, LinkIngest)
	good := newSide(t, Config{Insecure: true}, RoleFrontend, "frontend-1")
	c := dialClient(t, good, LinkIngest, srv.addr)
	if err := c.exchange(t, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	count := func(reason string) float64 {
		return metric(t, router.reg, "drover_link_refused_total", "link", "ingest", "side", "server", "reason", reason)
	}

	huge := make([]byte, 9)
	huge[0] = 0x02 // long frame, last of its message
	binary.BigEndian.PutUint64(huge[1:], 1<<62)
	okReady := command(ready("Socket-Type", "DEALER", "Identity", "x"))
	closedByPeer(t, rawPeer(t, srv.addr, greeting(), okReady, huge), 5*time.Second)
	waitFor(t, 5*time.Second, "too_large counted", func() bool { return count("too_large") == 1 })

	// Frames of one message adding up past the bound (1 MiB here).
	var many []byte
	for range 5 {
		many = append(many, 0x03, 0, 0, 0, 0, 0, 0x04, 0, 0) // 256 KiB, more to come
		many = append(many, make([]byte, 256<<10)...)
	}
	closedByPeer(t, rawPeer(t, srv.addr, greeting(), okReady, many), 5*time.Second)
	waitFor(t, 5*time.Second, "a message past 64 MiB counted", func() bool { return count("too_large") == 2 })

	// A property length past the end of the READY body.
	bad := ready("Socket-Type", "DEALER")
	bad = append(bad, 200, 'I', 'd')
	closedByPeer(t, rawPeer(t, srv.addr, greeting(), command(bad)), 5*time.Second)
	waitFor(t, 5*time.Second, "malformed READY counted", func() bool { return count("protocol") == 1 })

	// Not ZeroMQ at all.
	closedByPeer(t, rawPeer(t, srv.addr, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")), 5*time.Second)
	waitFor(t, 5*time.Second, "not_zmtp counted", func() bool { return count("not_zmtp") == 1 })

	// A signature, then nothing: dropped after the handshake timeout.
	closedByPeer(t, rawPeer(t, srv.addr, greeting()[:10]), 5*time.Second)
	waitFor(t, 5*time.Second, "timeout counted", func() bool { return count("timeout") == 1 })

	if err := c.exchange(t, 5*time.Second); err != nil {
		t.Fatalf("the server stopped serving its good peer: %v", err)
	}
	if got := metric(t, router.reg, "drover_link_insecure", "role", "router"); got != 1 {
		t.Errorf("insecure gauge %v, want 1", got)
	}
}

// gatedConn records what is written; its first Write waits for the gate.
type gatedConn struct {
	net.Conn
	gate    chan struct{}
	mu      sync.Mutex
	out     bytes.Buffer
	blocked chan struct{}
	first   sync.Once
}

func (g *gatedConn) Write(p []byte) (int, error) {
	g.first.Do(func() { close(g.blocked); <-g.gate })
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.out.Write(p)
}

// TestWritesKeepMessagesWhole: zmq4 writes a message in several calls and
// may start the next message while the previous one's write is blocked
// (its Send timed out). Each message reaches the connection whole, in
// order, in one write.
func TestWritesKeepMessagesWhole(t *testing.T) {
	g := &gatedConn{gate: make(chan struct{}), blocked: make(chan struct{})}
	c := newZMTPConn(g, g, nil, nil)
	c.wstate, c.wleft = stHeader, 0 // past the greeting
	frame := func(more bool, body string) [][]byte {
		var fl byte
		if more {
			fl = 1
		}
		return [][]byte{{fl, byte(len(body))}, []byte(body)}
	}
	m1 := append(frame(true, "first-a"), frame(false, "first-b")...)
	m2 := append(frame(true, "second-a"), frame(false, "second-b")...)
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		for _, p := range m1 {
			if _, err := c.Write(p); err != nil {
				t.Error(err)
			}
		}
	}()
	<-g.blocked // m1's write is stuck: what a timed-out Send leaves behind
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		for _, p := range m2 {
			if _, err := c.Write(p); err != nil {
				t.Error(err)
			}
		}
	}()
	time.Sleep(20 * time.Millisecond) // let m2's writes try to get in
	close(g.gate)
	<-aDone
	<-bDone
	want := bytes.Join(append(m1, m2...), nil)
	if got := g.out.Bytes(); !bytes.Equal(got, want) {
		t.Fatalf("stream %q,\nwant %q", got, want)
	}
}
