package frontend

import (
	"errors"
	"net"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestLameDuckSpreadsCloses stops a frontend holding 20 devices, each with
// a frame read and not yet acked, with a 2 s lame duck: the listener is closed at once
// (a new device is refused and goes elsewhere), every frame in flight is
// stored and acked, and the devices are closed with 1012 one after
// another over the window, not all at once.
func TestLameDuckSpreadsCloses(t *testing.T) {
	const n = 20
	const window = 2 * time.Second
	e := startWith(t, n, func(c *Config) { c.LameDuck = window })
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = e.connect(t, i, false)
		ack(t, conns[i], false, readings(time.Now(), 1), 1)
	}
	var (
		mu     sync.Mutex
		closes []time.Duration
		wg     sync.WaitGroup
	)
	begin := time.Now()
	for i, ws := range conns {
		// A frame in flight as the stop begins.
		send(t, ws, false, readings(time.Now(), 2))
		wg.Go(func() {
			seq, ce := next(t, ws, false)
			if ce != nil || seq != 2 {
				t.Errorf("device %d: frame in flight got %d %v, want its ack (2) before the close", i, seq, ce)
				return
			}
			text := expectClose(t, ws, CloseServiceRestart)
			if text != reasonTextLameDuck {
				t.Errorf("device %d: close text %q", i, text)
			}
			mu.Lock()
			closes = append(closes, time.Since(begin))
			mu.Unlock()
		})
	}
	// Stop once the frontend has read every frame (they may still be in
	// their group commit): each must be stored and acked before its close.
	waitFor(t, 10*time.Second, "every frame read", func() bool { return e.metric(e.f.m.framesReceived) == 2*n })
	e.cancel()
	// Not accepting from the start of the stop.
	waitFor(t, 5*time.Second, "the listener closed", func() bool {
		c, err := net.DialTimeout("tcp", e.f.Addr().String(), time.Second)
		if err == nil {
			c.Close()
			return false
		}
		return errors.Is(err, syscall.ECONNREFUSED)
	})
	if e.f.Ready() == nil {
		t.Error("ready during the lame duck")
	}
	wg.Wait()
	took, err := e.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	if len(closes) != n {
		t.Fatalf("%d of %d devices closed with 1012", len(closes), n)
	}
	slices.Sort(closes)
	// The i-th close is due at i × window/n: the last at 1.9 s. The
	// spread cannot be shorter than that (a lower bound, not a timing).
	if span := closes[n-1] - closes[0]; span < window*8/10 {
		t.Fatalf("closes spread over %v, want about %v: %v", span, window*(n-1)/n, closes)
	}
	if took > window+10*time.Second {
		t.Errorf("stop took %v", took)
	}
	if got := e.gathered(t, "drover_frontend_connections_closed_total", "code", "1012"); got != n {
		t.Errorf("connections_closed_total{code=1012} %v, want %d", got, n)
	}
	s := readQueue(t, e.cfg)
	for i := range n {
		if got := s.seqs(deviceID(i)); !slices.Equal(got, []uint64{1, 2}) {
			t.Errorf("device %d: stored %v, want [1 2]", i, got)
		}
	}
}

// TestLameDuckWithFewDevicesIsShort checks that a stop with few devices
// does not wait out the window: the gap between two closes is at most a
// second.
func TestLameDuckWithFewDevicesIsShort(t *testing.T) {
	e := startWith(t, 2, func(c *Config) { c.LameDuck = time.Minute })
	a, b := e.connect(t, 0, false), e.connect(t, 1, false)
	// The client has its 101 before the server tracks the connection: one
	// not yet tracked when the stop begins is not the lame duck's (it gets
	// the 1001 of the stop's last step), which is not what this checks.
	waitFor(t, 10*time.Second, "both connections tracked", func() bool {
		return e.metric(e.f.m.connections) == 2
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		expectClose(t, a, CloseServiceRestart)
		expectClose(t, b, CloseServiceRestart)
	}()
	e.cancel()
	<-done
	took, err := e.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	if took > 10*time.Second {
		t.Fatalf("a stop with 2 devices and a 1 min lame duck took %v, want about 1 s", took)
	}
}

// TestDroppedConnectionsLeaveNothing drops 300 device connections at once,
// without close frames (a client process killed): the frontend notices
// each, and its goroutines and connection count return to what they were
// before; devices connected meanwhile are still acked.
func TestDroppedConnectionsLeaveNothing(t *testing.T) {
	const n = 300
	e := startWith(t, n+1, func(c *Config) { c.MaxConnections = n + 1 })
	steady := e.connect(t, n, false)
	ack(t, steady, false, readings(time.Now(), 1), 1)
	settle := func() int {
		runtime.GC()
		return runtime.NumGoroutine()
	}
	base := settle()
	var conns []*websocket.Conn
	for i := range n {
		ws, _, err := e.dial(i, tokenOf(i), false)
		if err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
		conns = append(conns, ws)
	}
	waitFor(t, 10*time.Second, "every connection served", func() bool {
		return e.metric(e.f.m.connections) == n+1
	})
	if g := runtime.NumGoroutine(); g < base+n {
		t.Fatalf("%d goroutines with %d more connections, base %d: the read loops are not counted?", g, n, base)
	}
	for _, ws := range conns {
		// No close frame: the TCP connection just goes (RST with
		// SO_LINGER 0, as when a process dies with data unread).
		if tc, ok := ws.NetConn().(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		ws.NetConn().Close()
	}
	ack(t, steady, false, readings(time.Now(), 2), 2)
	waitFor(t, 20*time.Second, "every dropped connection released", func() bool {
		return e.metric(e.f.m.connections) == 1
	})
	waitFor(t, 20*time.Second, "goroutines back to the baseline", func() bool {
		return settle() <= base+2
	})
	e.f.mu.Lock()
	left := len(e.f.conns)
	e.f.mu.Unlock()
	if left != 1 {
		t.Fatalf("%d connections tracked, want 1", left)
	}
	ack(t, steady, false, readings(time.Now(), 3), 3)
}
