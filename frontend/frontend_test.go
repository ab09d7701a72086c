package frontend

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/telemetry"
)

func TestHappyPath(t *testing.T) {
	for _, tc := range []struct {
		name    string
		text    bool
		byQuery bool
	}{
		{"binary, headers", false, false},
		{"json, query parameters", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startWith(t, 4, nil)
			ws := e.connect(t, 1, tc.byQuery)
			before := time.Now()
			now := time.Now()
			ack(t, ws, tc.text, readings(now, 1, 2, 3), 3)
			ack(t, ws, tc.text, readings(now, 4, 5), 5)
			// A resend of acked readings: acked again, stored nothing.
			ack(t, ws, tc.text, readings(now, 1, 2, 3, 4, 5), 5)
			// Half resend, half new: only 6 and 7 are stored.
			ack(t, ws, tc.text, readings(now, 4, 5, 6, 7), 7)
			// Gaps in seq are allowed; the ack stays cumulative.
			ack(t, ws, tc.text, readings(now, 10, 12), 12)
			ws.Close()

			// After a reconnect the device resends what it has not seen
			// acked: acked, not stored again.
			ws2 := e.connect(t, 1, tc.byQuery)
			ack(t, ws2, tc.text, readings(now, 12), 12)
			ack(t, ws2, tc.text, readings(now, 13), 13)
			// Another device has its own sequence space.
			ws3 := e.connect(t, 2, tc.byQuery)
			ack(t, ws3, tc.text, readings(now, 1, 2), 2)
			after := time.Now()

			if _, err := e.stop(t); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := e.metric(e.f.m.framesDuplicate); got != 2 {
				t.Errorf("frames_duplicate_total = %v, want 2", got)
			}
			if got := e.metric(e.f.m.readingsDuplicate); got != 5+2+1 {
				t.Errorf("readings_duplicate_total = %v, want 8", got)
			}
			if got := e.metric(e.f.m.readingsStored); got != 12 {
				t.Errorf("readings_stored_total = %v, want 12", got)
			}
			s := readQueue(t, e.cfg)
			if s.entries != 6 {
				t.Errorf("queue holds %d entries, want 6 (one per stored frame)", s.entries)
			}
			if got, want := s.seqs("dev-1"), []uint64{1, 2, 3, 4, 5, 6, 7, 10, 12, 13}; !slices.Equal(got, want) {
				t.Errorf("dev-1 stored %v, want %v", got, want)
			}
			if got, want := s.seqs("dev-2"), []uint64{1, 2}; !slices.Equal(got, want) {
				t.Errorf("dev-2 stored %v, want %v", got, want)
			}
			for _, r := range s.records {
				if r.GetReceivedMs() < before.UnixMilli() || r.GetReceivedMs() > after.UnixMilli() {
					t.Errorf("record %v: received_ms outside the test", r)
				}
				if r.GetReading().GetTimeMs() != now.UnixMilli() || r.GetReading().GetSpeedKmh() != float32(r.GetReading().GetSeq()%100) {
					t.Errorf("record %v: reading not stored as sent", r)
				}
			}
		})
	}
}

func TestAuthRefused(t *testing.T) {
	e := startWith(t, 4, nil)
	for _, tc := range []struct {
		name    string
		device  int
		token   string
		byQuery bool
		reason  string
		body    string
	}{
		{"no token", 1, "", false, reasonNoCredentials, "device id and token required"},
		{"unknown device", 99, tokenOf(99), false, reasonUnknownDevice, textUnauthorized},
		{"bad token", 1, "token-2", false, reasonBadToken, textUnauthorized},
		{"bad token in query", 1, "nope", true, reasonBadToken, textUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.refusals(tc.reason)
			ws, resp, err := e.dial(tc.device, tc.token, tc.byQuery)
			if err == nil {
				ws.Close()
				t.Fatal("connection accepted")
			}
			if resp == nil || resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("dial: %v, response %v; want HTTP 401", err, resp)
			}
			b, _ := io.ReadAll(resp.Body)
			if !strings.Contains(string(b), tc.body) {
				t.Errorf("body %q, want %q", b, tc.body)
			}
			if got := e.refusals(tc.reason); got != before+1 {
				t.Errorf("refusals{%s} = %v, want %v", tc.reason, got, before+1)
			}
		})
	}
	if got := e.metric(e.f.m.connectionsAccepted); got != 0 {
		t.Errorf("connections_accepted_total = %v, want 0", got)
	}
	// A plain HTTP request is not a device.
	resp, err := http.Get("http://" + e.f.Addr().String() + IngestPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain GET: HTTP %d, want 400", resp.StatusCode)
	}
}

func TestInvalidFrames(t *testing.T) {
	e := startWith(t, 4, nil)
	now := time.Now()

	ws := e.connect(t, 1, false)
	ack(t, ws, false, readings(now, 1, 2), 2)
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte{0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	if text := expectClose(t, ws, websocket.CloseInvalidFramePayloadData); !strings.HasPrefix(text, "bad protobuf") {
		t.Errorf("close reason %q, want it to start with %q", text, "bad protobuf")
	}

	// One bad reading refuses its frame whole.
	ws = e.connect(t, 1, true)
	ack(t, ws, true, readings(now, 3), 3)
	bad := readings(now, 4, 5, 6)
	bad.Readings[1].SetPosition(95.1, 10)
	send(t, ws, true, bad)
	if text := expectClose(t, ws, websocket.CloseInvalidFramePayloadData); !strings.Contains(text, "reading 1") || !strings.Contains(text, "latitude") {
		t.Errorf("close reason %q, want it to name reading 1 and its latitude", text)
	}

	// Malformed JSON.
	ws = e.connect(t, 1, true)
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"readings":[{"seq":7,"timeMs":`)); err != nil {
		t.Fatal(err)
	}
	expectClose(t, ws, websocket.CloseInvalidFramePayloadData)

	if _, err := e.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := e.refusals("malformed"); got != 2 {
		t.Errorf("refusals{malformed} = %v, want 2", got)
	}
	if got := e.refusals("range"); got != 1 {
		t.Errorf("refusals{range} = %v, want 1", got)
	}
	s := readQueue(t, e.cfg)
	if got, want := s.seqs("dev-1"), []uint64{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("stored %v, want the acked %v only", got, want)
	}
}

func TestOversizeFrame(t *testing.T) {
	e := startWith(t, 4, func(c *Config) { c.MaxFrameBytes = 1024 })
	ws := e.connect(t, 1, false)
	ack(t, ws, false, readings(time.Now(), 1), 1)
	if err := ws.WriteMessage(websocket.BinaryMessage, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	expectClose(t, ws, websocket.CloseMessageTooBig)
	waitFor(t, 5*time.Second, "refusal counted", func() bool { return e.refusals(reasonFrameTooLarge) == 1 })
	e.stop(t)
	if got := readQueue(t, e.cfg).seqs("dev-1"); !slices.Equal(got, []uint64{1}) {
		t.Errorf("stored %v, want [1]", got)
	}
}

func TestRateLimit(t *testing.T) {
	e := startWith(t, 4, func(c *Config) {
		c.MaxReadingsPerFrame = 10
		c.Rate, c.RateBurst = 0.5, 10 // refilling a frame's worth takes 20 s
		c.BacklogRate, c.BacklogBurst = 100, 1000
		c.BacklogAge = 2 * time.Minute
	})

	// A device back from an outage flushes 500 readings an hour old, 50
	// times its live budget, as fast as acks come: accepted.
	old := time.Now().Add(-time.Hour)
	flusher := e.connect(t, 1, false)
	for i := range uint64(50) {
		ack(t, flusher, false, readings(old, seqRange(i*10+1, i*10+10)...), i*10+10)
	}
	// Live readings after the flush still have their own budget.
	ack(t, flusher, false, readings(time.Now(), seqRange(501, 510)...), 510)

	// A device sending live readings that fast is a flood.
	flooder := e.connect(t, 2, false)
	ack(t, flooder, false, readings(time.Now(), seqRange(1, 10)...), 10)
	send(t, flooder, false, readings(time.Now(), seqRange(11, 20)...))
	if text := expectClose(t, flooder, websocket.ClosePolicyViolation); text != "rate limit exceeded" {
		t.Errorf("close reason %q", text)
	}
	// Reconnecting does not refill the budget.
	flooder = e.connect(t, 2, false)
	send(t, flooder, false, readings(time.Now(), seqRange(11, 20)...))
	expectClose(t, flooder, websocket.ClosePolicyViolation)

	if got := e.refusals(reasonRateLimit); got != 2 {
		t.Errorf("refusals{rate_limit} = %v, want 2", got)
	}
	if got := e.metric(e.f.m.readingsBacklog); got != 500 {
		t.Errorf("readings_backlog_total = %v, want 500", got)
	}
	e.stop(t)
	s := readQueue(t, e.cfg)
	if got := len(s.seqs("dev-1")); got != 510 {
		t.Errorf("flusher: %d readings stored, want 510", got)
	}
	if got := s.seqs("dev-2"); !slices.Equal(got, seqRange(1, 10)) {
		t.Errorf("flooder: stored %v, want 1..10", got)
	}
}

func TestMaxConnections(t *testing.T) {
	e := startWith(t, 4, func(c *Config) {
		c.MaxConnections = 2
		c.RetryAfter = 10 * time.Second
	})
	a := e.connect(t, 0, false)
	e.connect(t, 1, false)
	// The client's handshake ends before the server counts the connection:
	// wait for both, so that "one left" below means a's slot is free.
	waitFor(t, 5*time.Second, "both connections counted", func() bool { return e.metric(e.f.m.connections) == 2 })
	for range 5 {
		ws, resp, err := e.dial(2, tokenOf(2), false)
		if err == nil {
			ws.Close()
			t.Fatal("third connection accepted")
		}
		if resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("dial: %v, %v; want HTTP 503", err, resp)
		}
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || ra < 5 || ra > 15 {
			t.Errorf("Retry-After %q, want 5..15 s", resp.Header.Get("Retry-After"))
		}
	}
	if got := e.refusals(reasonMaxConnections); got != 5 {
		t.Errorf("refusals{max_connections} = %v, want 5", got)
	}
	a.Close()
	waitFor(t, 5*time.Second, "a slot freed", func() bool { return e.metric(e.f.m.connections) == 1 })
	e.connect(t, 2, false)
}

func TestQueueFull(t *testing.T) {
	e := startWith(t, 4, func(c *Config) { c.QueueMaxBytes = 2000 })
	ws := e.connect(t, 1, false)
	now := time.Now()
	var acked, frame []uint64
	var closed *websocket.CloseError
	for i := uint64(0); i < 100 && closed == nil; i++ {
		frame = seqRange(i*10+1, i*10+10)
		send(t, ws, false, readings(now, frame...))
		seq, ce := next(t, ws, false)
		if ce != nil {
			closed = ce
			break
		}
		if seq != i*10+10 {
			t.Fatalf("ack %d, want %d", seq, i*10+10)
		}
		acked = append(acked, frame...)
	}
	if closed == nil || closed.Code != websocket.CloseTryAgainLater || closed.Text != "try again later" {
		t.Fatalf("closed with %v after %d acked readings, want 1013 try again later", closed, len(acked))
	}
	if len(acked) == 0 {
		t.Fatal("nothing acked before the queue was full")
	}
	// Still full: the device reconnects and resends the refused frame; it
	// gets 1013 again, and no ack.
	ws = e.connect(t, 1, false)
	send(t, ws, false, readings(now, frame...))
	expectClose(t, ws, websocket.CloseTryAgainLater)
	if got := e.refusals(reasonOverloaded); got != 2 {
		t.Errorf("refusals{overloaded} = %v, want 2", got)
	}
	e.stop(t)
	if got := readQueue(t, e.cfg).seqs("dev-1"); !slices.Equal(got, acked) {
		t.Errorf("stored %v, want exactly the acked %v", got, acked)
	}
}

func TestNewerConnectionReplacesOlder(t *testing.T) {
	e := startWith(t, 4, nil)
	now := time.Now()
	older := e.connect(t, 1, false)
	ack(t, older, false, readings(now, 1), 1)
	newer := e.connect(t, 1, true)
	if text := expectClose(t, older, CloseReplaced); text != "replaced by a newer connection" {
		t.Errorf("close reason %q", text)
	}
	ack(t, newer, true, readings(now, 1, 2), 2)
	waitFor(t, 5*time.Second, "one connection left", func() bool { return e.metric(e.f.m.connections) == 1 })
}

func TestKeepalive(t *testing.T) {
	e := startWith(t, 4, func(c *Config) {
		c.PingInterval = 100 * time.Millisecond
		c.IdleTimeout = time.Second
	})
	// A device whose client answers pings (gorilla does while reading).
	alive := e.connect(t, 1, false)
	var pings sync.WaitGroup
	pings.Add(15)
	var mu sync.Mutex
	n := 0
	alive.SetPingHandler(func(data string) error {
		mu.Lock()
		if n++; n <= 15 {
			pings.Done()
		}
		mu.Unlock()
		return alive.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	readErr := make(chan error, 1)
	go func() {
		_, _, err := alive.ReadMessage()
		readErr <- err
	}()
	// A device that never reads answers no ping.
	e.connect(t, 2, false)
	// A device that sends a frame every 20 ms is never pinged: its frames
	// prove the connection alive.
	chatty := e.connect(t, 3, false)
	var chattyPings atomic.Int32
	chatty.SetPingHandler(func(data string) error {
		chattyPings.Add(1)
		return chatty.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	pinged := make(chan struct{})
	go func() { pings.Wait(); close(pinged) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for seq := uint64(1); ; seq++ {
		select {
		case <-pinged: // 15 pings: 1.5 s, past the idle timeout
		case <-tick.C:
			ack(t, chatty, false, readings(time.Now(), seq), seq) // its reads run the ping handler
			continue
		}
		break
	}
	chatty.Close()
	if n := chattyPings.Load(); n != 0 {
		t.Errorf("a device sending a frame every 20 ms got %d pings at a 100 ms interval, want none", n)
	}
	if e.metric(e.f.m.pingsSkipped) == 0 || e.metric(e.f.m.pingsSent) < 15 {
		t.Errorf("pings skipped %v, sent %v: want some skipped and the quiet device's 15 sent", e.metric(e.f.m.pingsSkipped), e.metric(e.f.m.pingsSent))
	}
	select {
	case err := <-readErr:
		t.Fatalf("live connection closed: %v", err)
	default:
	}
	waitFor(t, 5*time.Second, "the silent connection closed", func() bool {
		return e.metric(e.f.m.connectionsClosed.WithLabelValues(strconv.Itoa(CloseIdleTimeout))) == 1 &&
			e.metric(e.f.m.connections) == 1
	})
	select {
	case err := <-readErr:
		t.Fatalf("live connection closed: %v", err)
	default:
	}
	alive.Close()
	<-readErr
}

func TestGracefulShutdown(t *testing.T) {
	e := startWith(t, 8, func(c *Config) { c.ShutdownGrace = 5 * time.Second })
	idle := e.connect(t, 7, false)

	// Devices 0..3 send frames back to back while the frontend stops.
	type result struct {
		acked uint64
		close *websocket.CloseError
		err   error
	}
	results := make([]chan result, 4)
	var started sync.WaitGroup
	for i := range results {
		results[i] = make(chan result, 1)
		ws := e.connect(t, i, i%2 == 1)
		text := i%2 == 1
		started.Add(1)
		go func() {
			var r result
			defer func() { results[i] <- r }()
			for seq := uint64(1); ; seq++ {
				b, _ := telemetry.EncodeUplink(readings(time.Now(), seq), text)
				typ := websocket.BinaryMessage
				if text {
					typ = websocket.TextMessage
				}
				if err := ws.WriteMessage(typ, b); err != nil {
					r.err = err
					return
				}
				_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
				_, msg, err := ws.ReadMessage()
				if err != nil {
					if ce, ok := err.(*websocket.CloseError); ok {
						r.close = ce
					} else {
						r.err = err
					}
					return
				}
				d, err := telemetry.DecodeDownlink(msg, text)
				if err != nil || d.GetAck().GetSeq() != seq {
					r.err = err
					return
				}
				r.acked = seq
				if seq == 3 {
					started.Done()
				}
			}
		}()
	}
	started.Wait()
	took, err := e.stop(t)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if took > e.cfg.ShutdownGrace {
		t.Errorf("Run took %s to stop, grace %s", took, e.cfg.ShutdownGrace)
	}
	t.Logf("stopped in %s", took)
	if !e.drainOK.Load() {
		t.Error("drainer not stopped, or stopped after the queue closed")
	}
	expectClose(t, idle, websocket.CloseGoingAway)

	s := readQueue(t, e.cfg)
	for i, ch := range results {
		r := <-ch
		switch {
		case r.close != nil && r.close.Code == websocket.CloseGoingAway && r.close.Text == "going away":
		default:
			t.Errorf("device %d: closed with %v (error %v) after %d acks, want 1001 going away", i, r.close, r.err, r.acked)
		}
		got := s.seqs(deviceID(i))
		if uint64(len(got)) < r.acked || (len(got) > 0 && !slices.Equal(got, seqRange(1, uint64(len(got))))) {
			t.Errorf("device %d: %d acked, queue holds %v", i, r.acked, got)
		}
	}
	// The port is closed: nothing is accepted any more.
	if _, _, err := e.dial(0, tokenOf(0), false); err == nil {
		t.Error("connection accepted after Run returned")
	}
}

func TestRunFailsWithoutRegistry(t *testing.T) {
	cfg := testConfig(t, 1)
	cfg.Registry = cfg.Registry + ".missing"
	f, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "registry") {
		t.Errorf("Run = %v, want a registry error", err)
	}
	if f.Ready() == nil {
		t.Error("Ready() = nil for a frontend that failed to start")
	}
}

// The real forward drainer, with every router down: devices are still acked
// (an ack means on the frontend's disk), and the frontend starts and stops
// cleanly around the drainer. It is not ready (no router has answered yet:
// TestReadyWaitsForARouter), which a load balancer reads, not the frontend.
func TestRoutersDownStillAcks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "tcp://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	cfg := testConfig(t, 4)
	cfg.Routers = []string{dead}
	e := &env{cfg: cfg, reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	f, err := New(cfg, nil, e.reg)
	if err != nil {
		t.Fatal(err)
	}
	e.f = f
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- f.Run(ctx) }()
	waitFor(t, 10*time.Second, "frontend serving, no router yet", func() bool { return errors.Is(f.Ready(), errNoRouterYet) })
	e.url = "ws://" + f.Addr().String() + IngestPath
	e.drainOK.Store(true) // no fake drainer to report

	ws := e.connect(t, 1, false)
	ack(t, ws, false, readings(time.Now(), 1, 2, 3), 3)
	took, err := e.stop(t)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("stopped in %s", took)
	if got := readQueue(t, cfg).seqs("dev-1"); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("stored %v, want [1 2 3]", got)
	}
}

// Every goroutine the frontend starts, per connection or not, is gone once
// Run has returned.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	e := startWith(t, 4, func(c *Config) { c.PingInterval = 20 * time.Millisecond; c.IdleTimeout = time.Second })
	for i := range 3 {
		ws := e.connect(t, i, i == 1)
		ack(t, ws, i == 1, readings(time.Now(), 1, 2), 2)
	}
	e.connect(t, 3, false) // idle
	if _, err := e.stop(t); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "goroutines to end", func() bool { return runtime.NumGoroutine() <= before })
}
