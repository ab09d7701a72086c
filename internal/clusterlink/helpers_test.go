package clusterlink

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/zmqsock"
)

// testLogger logs to stderr when DROVER_TEST_LOG is set, else nowhere.
func testLogger() *slog.Logger {
	if os.Getenv("DROVER_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

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
func noLeaks(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			var leaked []string
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "zmq4.(*pubMWriter).run") {
					continue // zmq4 v0.17.0 never stops a PUB's writer goroutine
				}
				if (strings.Contains(g, "drover/internal/clusterlink.") && !strings.Contains(g, "testing.tRunner")) ||
					strings.Contains(g, "go-zeromq/zmq4") {
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

// keyFile writes keys to a file of the test and returns its path.
func keyFile(t testing.TB, keys ...Key) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "cluster.key")
	if err := WriteKeyFile(path, keys...); err != nil {
		t.Fatal(err)
	}
	return path
}

func newKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// side is a Security with its own registry.
type side struct {
	*Security
	reg *prometheus.Registry
}

func newSide(t testing.TB, cfg Config, role Role, id string) side {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := New(cfg, role, id, testLogger(), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return side{s, reg}
}

// metric sums a counter over the series whose labels match want.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
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
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
	}
	return sum
}

// server is a zmq4 ROUTER bound through a Security; it answers every
// message "pong:" + the message.
type server struct {
	sock zmq4.Socket
	addr string // tcp://host:port as a flag would name it
	done chan struct{}
}

func startServer(t testing.TB, s side, link Link) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewRouter(ctx, zmq4.WithTimeout(2*time.Second), zmq4.WithLogger(slog.NewLogLogger(slog.DiscardHandler, slog.LevelWarn)))
	ep, err := s.Endpoint(link, "tcp://127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := sock.Listen(ep); err != nil {
		t.Fatal(err)
	}
	srv := &server{sock: sock, addr: "tcp://" + sock.Addr().String(), done: make(chan struct{})}
	go func() {
		defer close(srv.done)
		for {
			msg, err := sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			if len(msg.Frames) != 2 {
				continue
			}
			_ = sock.Send(zmq4.NewMsgFrom(msg.Frames[0], append([]byte("pong:"), msg.Frames[1]...)))
		}
	}()
	t.Cleanup(func() { cancel(); _ = zmqsock.Close(sock); <-srv.done })
	return srv
}

// client is a zmq4 DEALER dialled through a Security.
type client struct {
	sock zmq4.Socket
	ctx  context.Context
}

// dialClient dials srv in the background (zmq4 retries a refused handshake
// forever); ping tells whether it got through.
func dialClient(t testing.TB, s side, link Link, addr string) *client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewDealer(ctx, zmq4.WithTimeout(time.Second), zmq4.WithDialerMaxRetries(-1), zmq4.WithDialerRetry(20*time.Millisecond),
		zmq4.WithAutomaticReconnect(true), zmq4.WithLogger(slog.NewLogLogger(slog.DiscardHandler, slog.LevelWarn)))
	ep, err := s.Endpoint(link, addr)
	if err != nil {
		t.Fatal(err)
	}
	dialed := make(chan struct{})
	go func() { defer close(dialed); _ = sock.Dial(ep) }()
	t.Cleanup(func() { cancel(); _ = zmqsock.Close(sock); <-dialed })
	return &client{sock: sock, ctx: ctx}
}

// exchange sends a message and waits for its answer.
func (c *client) exchange(t testing.TB, timeout time.Duration) error {
	t.Helper()
	msg := fmt.Sprintf("hello-%d", time.Now().UnixNano())
	got := make(chan error, 1)
	go func() {
		for {
			m, err := c.sock.Recv()
			if err != nil {
				if c.ctx.Err() != nil {
					got <- err
					return
				}
				continue
			}
			if len(m.Frames) == 1 && string(m.Frames[0]) == "pong:"+msg {
				got <- nil
				return
			}
		}
	}()
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		_ = c.sock.Send(zmq4.NewMsg([]byte(msg)))
		select {
		case err := <-got:
			return err
		case <-deadline:
			return fmt.Errorf("no answer within %s", timeout)
		case <-tick.C:
		}
	}
}
