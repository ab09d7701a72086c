package frontend

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/router"
)

// TestReadyWaitsForARouter: a frontend with its real drainer is ready only
// once a router has answered (a rolling update must not stop the next
// frontend while this one cannot forward), and stays ready when the
// routers go away (an outage of the routers must not take every frontend
// out of the load balancer: they keep acking devices into their queues).
func TestReadyWaitsForARouter(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "tcp://" + l.Addr().String()
	l.Close() // free for the router to come

	cfg := testConfig(t, 10)
	cfg.Routers = []string{endpoint}
	f, err := New(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, 10*time.Second, "the frontend listening", func() bool { return f.Addr() != nil })
	time.Sleep(500 * time.Millisecond) // a window in which no router exists
	if err := f.Ready(); !errors.Is(err, errNoRouterYet) {
		t.Fatalf("Ready() = %v with no router; want %v", err, errNoRouterYet)
	}

	rcfg := router.DefaultConfig()
	rcfg.Listen, rcfg.LivePub, rcfg.StoreListen = endpoint, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
	rcfg.QueueDir = filepath.Join(t.TempDir(), "router")
	rcfg.ID = "router-test"
	rcfg.Subscribers = []string{"lake"}
	rcfg.Links = testLinks
	r, err := router.New(rcfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	rctx, stopRouter := context.WithCancel(context.Background())
	rdone := make(chan error, 1)
	go func() { rdone <- r.Run(rctx) }()
	waitFor(t, 10*time.Second, "ready once the router answers", func() bool { return f.Ready() == nil })

	stopRouter()
	if err := <-rdone; err != nil {
		t.Fatalf("router: %v", err)
	}
	time.Sleep(4 * time.Second) // past the drainer's DownAfter: the router counts as down
	if err := f.Ready(); err != nil {
		t.Errorf("Ready() = %v after the router went away; want ready (devices are still acked)", err)
	}
}
