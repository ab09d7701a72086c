package router

import (
	"context"
	"encoding/binary"
	"log/slog"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/null"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/zmqsock"
)

// testLive opens a live lane with the test's cluster key.
func testLive(t testing.TB, buffer int, bufferBytes int64) (*live, string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	logger := testLogger("router-a")
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	sec, err := clusterlink.New(testLinks, clusterlink.RoleRouter, "router-a", nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	l, addr, err := openLive(sec, "tcp://127.0.0.1:0", "router-a", buffer, bufferBytes, newMetrics(reg), logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.close(); sec.Close() })
	return l, addr, reg
}

// liveReader is a zmq4 SUB on the live lane, as a livefeed subscribes; it
// reads and checks that the sequence numbers in the payloads only grow.
type liveReader struct {
	sock    zmq4.Socket
	got     atomic.Int64
	last    atomic.Int64
	ordered atomic.Bool
}

func startLiveReader(t testing.TB, addr, id string) *liveReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &liveReader{sock: zmq4.NewSub(ctx, zmq4.WithID(zmq4.SocketIdentity(id)), zmq4.WithDialerMaxRetries(-1),
		zmq4.WithAutomaticReconnect(true), zmq4.WithDialerRetry(20*time.Millisecond))}
	r.ordered.Store(true)
	r.last.Store(-1)
	if err := r.sock.SetOption(zmq4.OptionSubscribe, LiveTopic); err != nil {
		t.Fatal(err)
	}
	if err := r.sock.Dial(linkEndpoint(t, clusterlink.RoleLivefeed, clusterlink.LinkLive, addr)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := r.sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if len(msg.Frames) != 2 || string(msg.Frames[0]) != LiveTopic || len(msg.Frames[1]) < 8 {
				r.ordered.Store(false)
				continue
			}
			seq := int64(binary.BigEndian.Uint64(msg.Frames[1]))
			if seq <= r.last.Load() {
				r.ordered.Store(false)
			}
			r.last.Store(seq)
			r.got.Add(1)
		}
	}()
	t.Cleanup(func() { cancel(); _ = zmqsock.Close(r.sock); <-done })
	return r
}

// stallLiveReader subscribes to the live lane and then never reads: ZMTP
// spoken over the link's connection directly (a zmq4 SUB that is never
// read leaks its reader goroutine, blocked on its full queue, forever).
func stallLiveReader(t testing.TB, addr, id string) {
	t.Helper()
	sec, err := clusterlink.New(testLinks, clusterlink.RoleLivefeed, id, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sec.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := sec.Dial(ctx, clusterlink.LinkLive, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	zc, err := zmq4.Open(c, null.Security(), zmq4.Sub, zmq4.SocketIdentity(id), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := zc.SendMsg(zmq4.NewMsg(append([]byte{1}, LiveTopic...))); err != nil {
		t.Fatal(err)
	}
}

// subscribed reports whether n subscribers are connected and subscribed to
// the live topic.
func (l *live) subscribed(n int) bool {
	_, k := l.Subscribers()
	return k == n
}

func heapAfterGC() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestLiveLaneBounded: one live subscriber connects and never reads while
// the router publishes 2,000 batches of 64 KiB (125 MiB) as fast as a
// second subscriber takes them. The router's heap stays within its stated
// bound (subscribers × (-live-buffer-bytes + two batches), plus slack for
// TLS and the test's own buffers); the reading subscriber gets every batch,
// in order, never more than a small window behind (a lane held to the
// stalled subscriber's pace would stop it once the TCP buffers are full);
// the stalled subscriber alone loses batches, counted for it and in
// drover_router_live_dropped_total.
func TestLiveLaneBounded(t *testing.T) {
	noLeaks(t)
	const (
		batches     = 2000
		batchBytes  = 64 << 10
		bufferBytes = 4 << 20
		window      = 32 // batches the reader may be behind
	)
	l, addr, reg := testLive(t, 1024, bufferBytes)
	l.SetStall(time.Hour) // this test's stalled subscriber stays
	stallLiveReader(t, addr, "stalled")
	healthy := startLiveReader(t, addr, "healthy")
	waitFor(t, 10*time.Second, "both subscribed", func() bool { return l.subscribed(2) })

	bound := uint64(2*(bufferBytes+2*batchBytes) + 24<<20)
	before := heapAfterGC()
	var peak uint64
	for i := range batches {
		deadline := time.Now().Add(10 * time.Second)
		for healthy.got.Load() < int64(i-window) {
			if time.Now().After(deadline) {
				t.Fatalf("the reading subscriber is stuck at %d of %d batches: held to the stalled one's pace", healthy.got.Load(), i)
			}
			time.Sleep(100 * time.Microsecond)
		}
		pb := make([]byte, batchBytes) // a batch of its own, as the fan-out makes them
		binary.BigEndian.PutUint64(pb, uint64(i))
		l.offer(pb)
		if i%250 == 249 {
			peak = max(peak, heapAfterGC())
		}
	}
	waitFor(t, 20*time.Second, "the reading subscriber to get every batch", func() bool { return healthy.got.Load() == batches })
	if !healthy.ordered.Load() {
		t.Errorf("the reading subscriber got batches out of order or malformed")
	}
	grew := int64(peak) - int64(before)
	t.Logf("heap before %d MiB, peak %d MiB (grew %d MiB, bound %d MiB)", before>>20, peak>>20, grew>>20, bound>>20)
	if grew > int64(bound) {
		t.Errorf("heap grew by %d MiB while %d MiB were published to a stalled subscriber: over the bound of %d MiB",
			grew>>20, batches*batchBytes>>20, bound>>20)
	}
	if got := metric(t, reg, "drover_router_live_subscriber_dropped_total", "subscriber", "healthy"); got != 0 {
		t.Errorf("the reading subscriber lost %v batches", got)
	}
	dropped := metric(t, reg, "drover_router_live_subscriber_dropped_total", "subscriber", "stalled")
	if dropped < batches/2 {
		t.Errorf("the stalled subscriber lost %v of %d batches; want most of them dropped, not queued", dropped, batches)
	}
	if total := metric(t, reg, "drover_router_live_dropped_total"); total != dropped {
		t.Errorf("drover_router_live_dropped_total = %v, want the stalled subscriber's %v", total, dropped)
	}
	if got := metric(t, reg, "drover_router_live_sent_total", "subscriber", "healthy"); got != batches {
		t.Errorf("sent to the reading subscriber: %v, want %d", got, batches)
	}
	if got := metric(t, reg, "drover_router_live_published_total"); got != batches {
		t.Errorf("published %v, want %d", got, batches)
	}
}

// TestLiveLaneStalledDisconnected: a subscriber that takes nothing for the
// stall timeout is disconnected (its buffer freed, counted), and a
// subscriber that reconnects is served again.
func TestLiveLaneStalledDisconnected(t *testing.T) {
	noLeaks(t)
	l, addr, reg := testLive(t, 16, 64<<10)
	l.SetStall(300 * time.Millisecond)
	stallLiveReader(t, addr, "stalled")
	healthy := startLiveReader(t, addr, "healthy")
	waitFor(t, 10*time.Second, "both subscribed", func() bool { return l.subscribed(2) })
	pb := make([]byte, 32<<10)
	i := 0
	waitFor(t, 20*time.Second, "the stalled subscriber disconnected", func() bool {
		binary.BigEndian.PutUint64(pb, uint64(i))
		i++
		l.offer(append([]byte(nil), pb...))
		time.Sleep(time.Millisecond)
		return metric(t, reg, "drover_router_live_disconnects_total", "reason", "stalled") >= 1
	})
	if healthy.got.Load() == 0 {
		t.Error("the reading subscriber got nothing")
	}
	if !healthy.ordered.Load() {
		t.Error("the reading subscriber got batches out of order")
	}
}

// TestLiveLaneTopics: a subscriber gets the live lane only while a
// subscription of its is a prefix of "live." (as a PUB filters); one
// subscribed to another topic gets nothing.
func TestLiveLaneTopics(t *testing.T) {
	noLeaks(t)
	l, addr, _ := testLive(t, 64, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	other := zmq4.NewSub(ctx, zmq4.WithID(zmq4.SocketIdentity("other")))
	defer zmqsock.Close(other)
	if err := other.SetOption(zmq4.OptionSubscribe, "store."); err != nil {
		t.Fatal(err)
	}
	if err := other.Dial(linkEndpoint(t, clusterlink.RoleLivefeed, clusterlink.LinkLive, addr)); err != nil {
		t.Fatal(err)
	}
	prefix := zmq4.NewSub(ctx, zmq4.WithID(zmq4.SocketIdentity("prefix")))
	defer zmqsock.Close(prefix)
	if err := prefix.SetOption(zmq4.OptionSubscribe, "li"); err != nil {
		t.Fatal(err)
	}
	if err := prefix.Dial(linkEndpoint(t, clusterlink.RoleLivefeed, clusterlink.LinkLive, addr)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "two subscribers, one matching", func() bool {
		n, _ := l.Subscribers()
		return n == 2 && l.subscribed(1)
	})
	l.offer([]byte("batch-1"))
	m, err := prefix.Recv()
	if err != nil || len(m.Frames) != 2 || string(m.Frames[1]) != "batch-1" {
		t.Fatalf("prefix subscriber: %v %v", m.Frames, err)
	}
	got := make(chan zmq4.Msg, 1)
	go func() {
		if m, err := other.Recv(); err == nil {
			got <- m
		}
	}()
	select {
	case m := <-got:
		t.Fatalf("a subscriber of store. received %q", m.Frames)
	case <-time.After(300 * time.Millisecond):
	}
}
