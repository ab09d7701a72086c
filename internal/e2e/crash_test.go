package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
)

// TestCrashRouterKill9 and TestCrashFrontendKill9 run the real drover binary
// as a router and a frontend process, with 200 simulated devices in this
// process, kill -9 one of the two processes three times during the run and
// restart it on the same queue and ports. At the end every reading the
// simulator saw acked must be in the router's queue.
//
// The router runs with -fixed-subscribers and none listed: its fan-out holds
// the main queue, so that the check finds every reading there. Without it, a
// storage writer of another test (other packages run at the same time) that
// redials a port this router now has would register as a durable subscriber
// and take entries from the main queue into a queue of its own; the check
// counts such queues too (readRouterQueue) and logs the stranger.
func TestCrashRouterKill9(t *testing.T)   { crashIngest(t, "router", 3) }
func TestCrashFrontendKill9(t *testing.T) { crashIngest(t, "frontend", 3) }

func crashIngest(t *testing.T, victim string, kills int) {
	t.Parallel()
	// 450 readings at 20/s: a 22.5 s run. The three kills take up to
	// 3 × (3.5 s apart + 0.8 s down + the restart's readiness, seconds on
	// a loaded machine); with 300 (15 s) the fleet once finished before
	// the third kill in make test.
	const devices, perDevice = 200, 450
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()

	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, perDevice
	sc.Rate, sc.FrameReadings, sc.Window = 20, 5, 4
	sc.TokenSeed = "crash"
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
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
		"-rate", "1000", "-rate-burst", "1000", "-shutdown-grace", "5s")
	rt.start(ctx)
	fe.start(ctx)
	target := map[string]*proc{"router": rt, "frontend": fe}[victim]

	sc.URLs = []string{"ws://" + frontAddr}
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	fleetDone := make(chan error, 1)
	start := time.Now()
	go func() { fleetDone <- fleet.Run(ctx) }()

	var killLog []string
	for i := 0; i < kills; i++ {
		select {
		case <-time.After(time.Duration(1500+rand.IntN(2000)) * time.Millisecond):
		case err := <-fleetDone:
			t.Fatalf("fleet finished after %d of %d kills (%v): make the run longer", i, kills, err)
		}
		before := fleet.Stats().Acked
		target.kill9()
		killLog = append(killLog, fmt.Sprintf("%v: kill -9 %s (acked so far %d)", time.Since(start).Round(time.Millisecond), victim, before))
		time.Sleep(time.Duration(200+rand.IntN(600)) * time.Millisecond) // down for a while
		target.start(ctx)
	}
	if err := <-fleetDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	st := fleet.Stats()
	if st.Acked != devices*perDevice {
		t.Fatalf("acked %d of %d readings by the end: %+v", st.Acked, devices*perDevice, st)
	}

	drained := func() bool {
		m, err := fe.metrics(ctx)
		if err != nil {
			return false
		}
		v, ok := metricValue(m, "drover_queue_depth_entries", map[string]string{"queue": "frontend"})
		return ok && v == 0
	}
	for deadline := time.Now().Add(2 * time.Minute); !drained(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			fe.postMortem(ctx)
			rt.postMortem(ctx)
			t.Fatalf("timed out after 2m waiting for the frontend queue to drain into the router")
		}
	}
	fe.stop(30 * time.Second)
	rt.stop(30 * time.Second)

	s := readRouterQueue(t, routerDir)
	if len(s.subscribers) > 0 {
		// No writer of this test subscribes: one of another test did.
		t.Logf("a stranger subscribed at the router (its queues are counted too): %v", s.subscribers)
	}
	acked, dups := checkAcked(t, s, fleet.Acked())
	for _, l := range killLog {
		t.Log(l)
	}
	t.Logf("%s killed %d times: %d readings acked, all in the router's queue; %d duplicate copies (resent after a kill: at least once), disconnects seen by devices %v, run %v",
		victim, kills, acked, dups, st.Disconnects, time.Since(start).Round(time.Millisecond))
}
