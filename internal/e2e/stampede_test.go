package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
)

// TestStampedeAfterKill9 is the stampede at the size of a test run: 2,000
// devices over wss:// on one frontend (the real binary, with a shared
// ticket key file and an accept rate of 150 a second), kill -9 of the
// frontend, and its restart on the same port and queue. Every device must
// come back and be acked again; the herd must be spread by admission (503
// refusals with a Retry-After, or handshakes refused before they begin),
// not taken at once; the devices must resume their TLS
// sessions on the restarted process; and every reading acked to a device,
// before or after the kill, must be in the router's queue.
func TestStampedeAfterKill9(t *testing.T) {
	const devices = 2000
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()

	ca := tlstest.NewCA(t, "stampede CA")
	cert, key := ca.Server(t, "frontend").Write(t, dir, "frontend")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	tickets := filepath.Join(dir, "tickets")
	k, err := clusterlink.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := clusterlink.WriteKeyFile(tickets, k); err != nil {
		t.Fatal(err)
	}

	sc := sim.DefaultConfig()
	sc.Devices, sc.Rate, sc.FrameReadings, sc.Window = devices, 0.5, 1, 4
	sc.TokenSeed = "stampede"
	sc.ConnectRate = 1000
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 200*time.Millisecond, 5*time.Second, 20*time.Second
	sc.TLSCAFile = caFile
	registryPath := filepath.Join(dir, "registry.json")
	if err := sim.WriteRegistry(registryPath, sc); err != nil {
		t.Fatal(err)
	}

	routerAddr, frontAddr := freeAddr(t), freeAddr(t)
	routerDir := filepath.Join(dir, "router")
	rt := newProc(t, "router", "router",
		"-id", uid("router-1"), "-listen", "tcp://"+routerAddr,
		"-live-pub", "tcp://"+freeAddr(t), "-store-listen", "tcp://"+freeAddr(t),
		"-queue-dir", routerDir, "-fixed-subscribers")
	fe := newProc(t, "frontend", "frontend",
		"-id", uid("frontend-1"), "-listen", frontAddr, "-routers", "tcp://"+routerAddr,
		"-queue-dir", filepath.Join(dir, "frontend"), "-registry", registryPath,
		"-tls-cert", cert, "-tls-key", key, "-tls-ticket-key-file", tickets,
		"-accept-rate", "150", "-accept-burst", "50", "-admission-delay-target", "0",
		"-max-connections", strconv.Itoa(devices+100), "-lame-duck", "2s", "-shutdown-grace", "5s")
	rt.start(ctx)
	fe.start(ctx)

	sc.URLs = []string{"wss://" + frontAddr}
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	fleetCtx, stopFleet := context.WithCancel(ctx)
	defer stopFleet()
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fleetCtx) }()

	// everyoneAcked waits until every device is connected and has an ack
	// above its seq in before.
	everyoneAcked := func(what string, before map[string]uint64, timeout time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		waitFor(t, timeout, what, func() bool {
			if fleet.Stats().Connected != devices {
				return false
			}
			for d, s := range fleet.Acked() {
				if s <= before[d] {
					return false
				}
			}
			return true
		})
		return time.Since(start)
	}
	everyoneAcked("every device connected and acked", map[string]uint64{}, 3*time.Minute)

	ackedAtKill := fleet.Acked()
	statsAtKill := fleet.Stats()
	fe.kill9()
	killed := time.Now()
	time.Sleep(500 * time.Millisecond) // down for a moment: the herd finds nobody
	fe.start(ctx)
	back := everyoneAcked("every device back and acked again", ackedAtKill, 2*time.Minute)
	t.Logf("all %d devices back and acking %v after the kill -9 (%v after the restart was ready)",
		devices, time.Since(killed).Round(time.Millisecond), back.Round(time.Millisecond))

	m, err := fe.metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	refused, _ := metricValue(m, "drover_frontend_refusals_total", map[string]string{"reason": "accept_rate"})
	resumed, _ := metricValue(m, "drover_frontend_tls_handshakes_total", map[string]string{"result": "resumed"})
	full, _ := metricValue(m, "drover_frontend_tls_handshakes_total", map[string]string{"result": "full"})
	failed, _ := metricValue(m, "drover_frontend_tls_handshakes_total", map[string]string{"result": "failed"})
	closedBacklog, _ := metricValue(m, "drover_frontend_tls_handshake_refusals_total", map[string]string{"reason": "backlog"})
	closedWait, _ := metricValue(m, "drover_frontend_tls_handshake_refusals_total", map[string]string{"reason": "wait"})
	// The herd is spread by admission: 503 + Retry-After at the accept
	// rate, or, when the handshakes are what the machine cannot keep up
	// with, connections closed before their TLS handshake (its backlog,
	// or a wait too long). Which stage acts first depends on how fast the
	// machine's handshakes are: under make test's load one run had 0 of
	// the first and 727 of the second, after a kill -9 that took 13 s to
	// reap the process (its devices' backoff had spread them meanwhile).
	if refused+closedBacklog+closedWait == 0 {
		t.Errorf("the herd of %d was taken at once: no refusal at the accept rate (150/s), no handshake closed before it began", devices)
	}
	// Devices resume with the ticket the killed process issued. (A Go
	// client throws its ticket away when a resumption attempt fails, so a
	// device whose handshake timed out on a loaded machine, or whose
	// connection was closed before it, comes back with a full one.)
	if resumed < devices/2 {
		t.Errorf("the restarted frontend resumed %v TLS sessions and did %v full handshakes; want most of %d devices resumed", resumed, full, devices)
	}
	st := fleet.Stats()
	t.Logf("after the restart: %v refused at the accept rate (503 + Retry-After); TLS handshakes %v resumed, %v full, %v failed, %v closed before (backlog %v, waited too long %v); devices saw failures %v, disconnects %v",
		refused, resumed, full, failed, closedBacklog+closedWait, closedBacklog, closedWait,
		diffCounts(st.ConnectFailures, statsAtKill.ConnectFailures), diffCounts(st.Disconnects, statsAtKill.Disconnects))

	stopFleet()
	if err := <-fleetDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	waitFor(t, 2*time.Minute, "the frontend queue drained into the router", func() bool {
		m, err := fe.metrics(ctx)
		if err != nil {
			return false
		}
		v, ok := metricValue(m, "drover_queue_depth_entries", map[string]string{"queue": "frontend"})
		return ok && v == 0
	})
	fe.stop(30 * time.Second)
	rt.stop(30 * time.Second)
	acked, dups := checkAcked(t, readRouterQueue(t, routerDir), fleet.Acked())
	t.Logf("%d readings acked to %d devices, all in the router's queue (%d duplicate copies: resent after the kill)", acked, devices, dups)
}

// diffCounts returns now - before, key by key, leaving out zeros.
func diffCounts(now, before map[string]uint64) string {
	out := map[string]uint64{}
	for k, v := range now {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return fmt.Sprint(out)
}
