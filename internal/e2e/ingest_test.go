package e2e

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/drover-telemetry/drover/frontend"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/router"
)

// gathered returns the summed value of a metric in reg whose labels include
// want.
func gathered(t testing.TB, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		m[f.GetName()] = f
	}
	v, _ := metricValue(m, name, want)
	return v
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("DROVER_E2E_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// TestIngestEndToEnd runs a frontend and a router in this process on
// loopback ports: 200 simulated devices send 100,000 readings; every one is
// acked, and each is in the router's queue exactly once.
func TestIngestEndToEnd(t *testing.T) {
	t.Parallel()
	const devices, perDevice = 200, 500
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	logger := testLogger(t)
	reg := prometheus.NewRegistry()

	rc := router.DefaultConfig()
	rc.ID = uid("router-1")
	rc.Listen = "tcp://" + freeAddr(t)
	rc.LivePub = "tcp://" + freeAddr(t)
	rc.StoreListen = "tcp://" + freeAddr(t)
	rc.QueueDir = filepath.Join(dir, "router")
	rc.Links = clusterlink.Config{KeyFile: clusterKeyFile(t)}
	r, err := router.New(rc, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	rctx, rstop := context.WithCancel(ctx)
	rdone := make(chan error, 1)
	go func() { rdone <- r.Run(rctx) }()

	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, perDevice
	sc.Rate, sc.FrameReadings, sc.Window = 100, 10, 4
	sc.TokenSeed = "e2e"
	registryPath := filepath.Join(dir, "registry.json")
	if err := sim.WriteRegistry(registryPath, sc); err != nil {
		t.Fatal(err)
	}

	fc := frontend.DefaultConfig()
	fc.ID = uid("frontend-1")
	fc.Listen = "127.0.0.1:0"
	fc.QueueDir = filepath.Join(dir, "frontend")
	fc.Routers = []string{rc.Listen}
	fc.Links = rc.Links
	fc.Registry = registryPath
	fc.Rate, fc.RateBurst = 1000, 1000
	f, err := frontend.New(fc, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	fctx, fstop := context.WithCancel(ctx)
	fdone := make(chan error, 1)
	go func() { fdone <- f.Run(fctx) }()
	waitFor(t, 30*time.Second, "router and frontend ready", func() bool { return r.Ready() == nil && f.Ready() == nil })

	sc.URLs = []string{"ws://" + f.Addr().String()}
	fleet, err := sim.New(sc, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := fleet.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	st := fleet.Stats()
	if st.Acked != devices*perDevice {
		t.Fatalf("acked %d readings, want %d (stats %+v)", st.Acked, devices*perDevice, st)
	}
	t.Logf("%d readings acked in %v: %.0f/s, ack p50 %v p99 %v", st.Acked, time.Since(start).Round(time.Millisecond),
		float64(st.Acked)/time.Since(start).Seconds(), st.AckLatency.P50, st.AckLatency.P99)

	// The frontend drains its queue into the router.
	waitFor(t, time.Minute, "frontend queue drained", func() bool {
		return gathered(t, reg, "drover_queue_depth_entries", map[string]string{"queue": "frontend"}) == 0
	})
	fstop()
	if err := <-fdone; err != nil {
		t.Fatalf("frontend: %v", err)
	}
	rstop()
	if err := <-rdone; err != nil {
		t.Fatalf("router: %v", err)
	}

	s := readRouterQueue(t, rc.QueueDir)
	acked, dups := checkAcked(t, s, fleet.Acked())
	if len(s.count) != devices*perDevice {
		t.Fatalf("router queue holds %d distinct readings, want %d", len(s.count), devices*perDevice)
	}
	// Nothing was killed or timed out here, so nothing was resent: any copy
	// beyond the first would be a dedup failure.
	resent := gathered(t, reg, "drover_forward_resent_batches_total", nil)
	if dups != 0 {
		t.Fatalf("%d duplicate readings in the router's queue with %v batches resent", dups, resent)
	}
	t.Logf("router queue: %d entries, %d records, %d acked readings each stored once", s.entries, s.records, acked)
}
