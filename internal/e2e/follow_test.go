package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/frontend"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// The data path follows the control plane (issue 15): real processes — a
// drover api, a frontend, a router, a storage writer for InfluxDB and one
// for the lake, a livefeed — the frontend, the router and the livefeed
// following the api, a simulated fleet registered through it.

// refusedAuth sums the frontend's refusals that a registered device with
// its right token must never get.
func refusedAuth(p *pipeline) float64 {
	var sum float64
	for _, r := range []string{"unknown_device", "bad_token", "suspended", "decommissioned"} {
		v, _ := p.gauge(p.fe, "drover_frontend_refusals_total", map[string]string{"reason": r})
		sum += v
	}
	return sum
}

// propagationBound is how long these tests give a change made through the
// API to be in force at the frontend, router and livefeed. The product's
// goal is 2 s, and BenchmarkPropagation measures it (p99 44-62 ms,
// docs/performance.md); an end-to-end test on a CI machine loaded by other
// packages' tests saw 5.6 s, so the test asserts that changes follow the
// feed (no periodic resync would come this early) and logs the lag, and
// leaves the figure to the benchmark.
const propagationBound = 10 * time.Second

// connectWithin waits until the frontend holds the registry at version v
// (polling its metric, not dialing: failed dials would count against the
// test's address) and dials; the time from since to the dial's success
// must be within bound (propagationBound, or more after an outage).
func connectWithin(t *testing.T, ctx context.Context, p *pipeline, pr *probe, v int64, since time.Time, bound time.Duration) time.Duration {
	t.Helper()
	waitFor(t, bound, fmt.Sprintf("the frontend at registry version %d", v), func() bool { return feedVersion(ctx, p.fe) >= v })
	if s := pr.dial(); s != http.StatusSwitchingProtocols {
		t.Fatalf("%s: HTTP %d, want 101", pr.id, s)
	}
	lag := time.Since(since)
	t.Logf("%s connected %v after its API call", pr.id, lag)
	if lag > bound {
		t.Errorf("%s connected %v after its API call, want within %v", pr.id, lag, bound)
	}
	return lag
}

// sendUntil has pr send a reading every 50 ms until cond holds, failing
// the test after timeout.
func sendUntil(t *testing.T, pr *probe, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		if ce := pr.send(1); ce != nil {
			t.Fatalf("%s: closed %d %q", pr.id, ce.Code, ce.Text)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFollowEndToEnd: kill -9 the api under load (and the frontend and
// the router while it is down: they restart from their caches): nothing
// allowed is refused, acks go on. Once it is back: a device registered
// through it connects within propagationBound; a fleet change shows in enriched
// readings within propagationBound; a rotation lets both tokens in during the overlap
// and closes the old one's connection at its end; a suspension closes the
// connection (4403) and refuses reconnects; a decommission takes the
// vehicle off the live map. At the end every acked reading is in InfluxDB
// and the lake, exactly once per (device, seq).
func TestFollowEndToEnd(t *testing.T) {
	t.Parallel() // it asserts propagationBound, which allows for a loaded machine
	const devices, rate = 40, 10.0
	runFor := 45 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	api := startAPIProc(t, ctx, t.TempDir())
	for _, f := range []string{"acme", "beta"} {
		api.call("POST", "/v1/fleets", map[string]string{"id": f}, nil)
	}
	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, int(rate*runFor.Seconds())
	sc.Rate, sc.FrameReadings, sc.Window = rate, 5, 4
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
	sc.TokenSeed = "storage" // what startPipeline uses
	api.importFleet(sc)
	p, sc := startPipeline(t, ctx, pipelineOpts{sim: sc, livefeed: true, follow: api})
	wctx, wstop := context.WithCancel(ctx)
	defer wstop()
	live := watchVehicles(wctx, t, p.liveURL, p.devToken)

	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	acks := watchAcks(wctx, fleet)
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(ctx) }()
	total := func() uint64 {
		var s uint64
		for _, hi := range fleet.Acked() {
			s += hi
		}
		return s
	}
	waitFor(t, 30*time.Second, "every simulated device acked", func() bool { return len(fleet.Acked()) == devices && total() > devices })

	// The api dies under load; the frontend and the router die too and
	// restart from their caches while it is down.
	outage := time.Now()
	api.kill9()
	n0 := total()
	waitFor(t, 10*time.Second, "acks with the api down", func() bool { return total() > n0+devices })
	p.rt.kill9()
	p.fe.kill9()
	p.rt.start(ctx)
	feRestart := time.Now()
	p.fe.start(ctx) // ready: its cache, not the api, lets devices in
	n1 := total()
	waitFor(t, 20*time.Second, "acks from the restarted frontend with the api down", func() bool { return total() > n1+devices })
	// The api stays down at least 5 s, acks going on.
	waitFor(t, 10*time.Second, "5 s of api outage", func() bool { return time.Since(outage) >= 5*time.Second })
	if gap := acks.longestGap(outage.Add(time.Second), time.Now()); gap > 15*time.Second {
		t.Errorf("acks stopped for %v during the api outage", gap)
	}
	if n := refusedAuth(p); n != 0 {
		t.Fatalf("%v authentications refused with the api down (from the cache)", n)
	}
	api.start(ctx)
	t.Logf("api down for %v; the frontend and the router restarted from their caches meanwhile", time.Since(outage).Round(time.Millisecond))

	// The restarted frontend's presence reports, held while the api was
	// down, reach it once it is back (the fleet still runs: its devices
	// are connected). The row from before the outage does not count: it
	// was seen before the restart.
	watched := sim.Devices(sc)[0].ID
	waitFor(t, 15*time.Second, "presence of a simulated device reported by the restarted frontend", func() bool {
		seen := api.presence(watched)
		return seen != nil && seen.Connected && seen.Frontend == uid("frontend-1") && !seen.LastSeenAt.Before(feRestart.Truncate(time.Millisecond))
	})

	// A device registered now connects within propagationBound.
	at := time.Now()
	tok, v := api.register("probe-new", "acme")
	pn := newProbe(t, p.frontURL, "probe-new", tok)
	t.Logf("registered → connected: %v", connectWithin(t, ctx, p, pn, v, at, propagationBound))
	// Readings until the live map shows it (the live lane is best effort:
	// the livefeed may still be resubscribing to the restarted router).
	sendUntil(t, pn, 20*time.Second, "probe-new on the live map in fleet acme", func() bool { return live.fleetOf("probe-new") == "acme" })

	// Its fleet changes: enriched readings carry the new one within propagationBound.
	at = time.Now()
	api.call("PATCH", "/v1/devices/probe-new", map[string]any{"fleet": "beta"}, nil)
	sendUntil(t, pn, propagationBound, "an enriched reading with the new fleet", func() bool { return live.fleetOf("probe-new") == "beta" })
	t.Logf("fleet changed → enriched with it: %v", time.Since(at).Round(time.Millisecond))

	// Rotation: both tokens during the overlap; the old one's connection
	// is closed at its end (4401) and the old token refused after.
	oldTok, v := api.register("probe-rot", "acme")
	pr := newProbe(t, p.frontURL, "probe-rot", oldTok)
	connectWithin(t, ctx, p, pr, v, time.Now(), propagationBound)
	if ce := pr.send(3); ce != nil {
		t.Fatalf("probe-rot: %v", ce)
	}
	var rot struct{ Token string }
	// Timed from before the call: the api starts the overlap while it
	// answers, and a loaded machine can hold the answer for a second
	// (seen: the close came 11.1 s after the call returned).
	rotated := time.Now()
	api.call("POST", "/v1/devices/probe-rot/token/rotate", map[string]any{"overlap_seconds": 12}, &rot)
	waitFor(t, propagationBound, "the new token in force", func() bool {
		ws, _, err := dialDevice(p.frontURL+"/v1/ingest", "probe-rot", rot.Token)
		if err == nil {
			ws.Close()
		}
		return err == nil
	})
	if s := pr.dial(); s != http.StatusSwitchingProtocols { // the old token, during the overlap
		t.Fatalf("the old token during the overlap: HTTP %d", s)
	}
	if ce := pr.send(2); ce != nil {
		t.Fatalf("probe-rot on its old token during the overlap: %v", ce)
	}
	ce, when := pr.awaitClose(20 * time.Second)
	if ce.Code != frontend.CloseCredentialsRevoked || when.Sub(rotated) < 11500*time.Millisecond {
		t.Errorf("the old token's connection: closed %d %q %v after the rotation was asked for (12 s overlap)", ce.Code, ce.Text, when.Sub(rotated))
	}
	if s := pr.dial(); s != http.StatusUnauthorized {
		t.Errorf("the old token after the overlap: HTTP %d, want 401", s)
	}
	pr.token = rot.Token
	if s := pr.dial(); s != http.StatusSwitchingProtocols {
		t.Fatalf("the new token after the overlap: HTTP %d", s)
	}
	if ce := pr.send(2); ce != nil {
		t.Fatalf("probe-rot on its new token: %v", ce)
	}

	// Suspension: closed 4403 within propagationBound, reconnects refused.
	tok, v = api.register("probe-sus", "acme")
	ps := newProbe(t, p.frontURL, "probe-sus", tok)
	connectWithin(t, ctx, p, ps, v, time.Now(), propagationBound)
	if ce := ps.send(4); ce != nil {
		t.Fatalf("probe-sus: %v", ce)
	}
	at = time.Now()
	api.call("POST", "/v1/devices/probe-sus/state", map[string]any{"state": "suspended", "reason": "e2e"}, nil)
	ce, when = ps.awaitClose(propagationBound + time.Second)
	t.Logf("suspended: closed %v after the call", when.Sub(at))
	if ce.Code != frontend.CloseDeviceNotActive || when.Sub(at) > propagationBound {
		t.Errorf("suspended: closed %d %q %v after the call, want %d within %v", ce.Code, ce.Text, when.Sub(at), frontend.CloseDeviceNotActive, propagationBound)
	}
	if s := ps.dial(); s != http.StatusForbidden {
		t.Errorf("a suspended device's reconnect: HTTP %d, want 403", s)
	}

	// Decommission: off the live map within propagationBound; its data stays (checked
	// with everything else below).
	tok, v = api.register("probe-dec", "acme")
	pd := newProbe(t, p.frontURL, "probe-dec", tok)
	connectWithin(t, ctx, p, pd, v, time.Now(), propagationBound)
	sendUntil(t, pd, 10*time.Second, "probe-dec on the live map", func() bool { return live.fleetOf("probe-dec") == "acme" })
	at = time.Now()
	api.call("POST", "/v1/devices/probe-dec/state", map[string]any{"state": "decommissioned"}, nil)
	waitFor(t, propagationBound, "probe-dec off the live map", func() bool { return live.wasRemoved("probe-dec") })
	t.Logf("decommissioned → off the live map: %v", time.Since(at).Round(time.Millisecond))

	select {
	case err := <-fleetDone:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("fleet: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the fleet did not finish")
	}
	// The fleet closed its connections: the frontend reports them gone.
	waitFor(t, 15*time.Second, "a simulated device reported disconnected after the fleet ended", func() bool {
		seen := api.presence(watched)
		return seen != nil && !seen.Connected && seen.Frontend == uid("frontend-1")
	})
	acked := fleet.Acked()
	for _, pb := range []*probe{pn, pr, ps, pd} {
		acked[pb.id] = pb.highest()
	}
	var want uint64
	for _, hi := range acked {
		want += hi
	}
	p.waitDrained(2*time.Minute, want)
	p.wLake.stop(30 * time.Second)
	p.wInflux.stop(30 * time.Second)
	p.checkInflux(acked)
	p.checkLake(acked)
}

// TestFollowPostgresOutage: the api on PostgreSQL. Under load the database
// stops, then the api is killed -9, and the frontend killed and restarted
// from its cache: acks go on, nothing allowed is refused. The database and
// the api come back: a device registered then connects within propagationBound. Every
// acked reading ends in InfluxDB and the lake.
func TestFollowPostgresOutage(t *testing.T) {
	t.Parallel()
	const devices, rate = 20, 10.0
	runFor := 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pg := testenv.PostgresOwn(t) // it stops the server: not the one the others share
	urlFile := secretFile(t, pg.NewDatabase(t))
	api := startAPIProc(t, ctx, t.TempDir(), "-db", "postgres", "-postgres-url-file", urlFile)
	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, int(rate*runFor.Seconds())
	sc.Rate, sc.FrameReadings, sc.Window = rate, 5, 4
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
	sc.TokenSeed = "storage"
	api.importFleet(sc)
	p, sc := startPipeline(t, ctx, pipelineOpts{sim: sc, follow: api})
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(ctx) }()
	total := func() uint64 {
		var s uint64
		for _, hi := range fleet.Acked() {
			s += hi
		}
		return s
	}
	waitFor(t, 30*time.Second, "every simulated device acked", func() bool { return len(fleet.Acked()) == devices && total() > devices })

	pg.Stop()
	dbDown := time.Now()
	n := total()
	waitFor(t, 10*time.Second, "acks with the database down", func() bool { return total() > n+devices })
	api.kill9()
	p.fe.kill9()
	p.fe.start(ctx)
	n = total()
	waitFor(t, 20*time.Second, "acks from the restarted frontend with the api and its database down", func() bool { return total() > n+devices })
	if r := refusedAuth(p); r != 0 {
		t.Fatalf("%v authentications refused with the control plane down", r)
	}
	waitFor(t, 10*time.Second, "5 s of database outage", func() bool { return time.Since(dbDown) >= 5*time.Second })
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	api.start(ctx)
	at := time.Now()
	tok, v := api.register("probe-pg", "")
	pb := newProbe(t, p.frontURL, "probe-pg", tok)
	// The frontend's follower retried with backoff while the api was down
	// (up to BackoffMax between attempts, 15 s): its next attempt may come
	// that long after the api is back.
	connectWithin(t, ctx, p, pb, v, at, registry.DefaultFollowConfig().BackoffMax+propagationBound)
	if ce := pb.send(3); ce != nil {
		t.Fatalf("probe-pg: %v", ce)
	}

	if err := <-fleetDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	acked := fleet.Acked()
	acked[pb.id] = pb.highest()
	var want uint64
	for _, hi := range acked {
		want += hi
	}
	p.waitDrained(2*time.Minute, want)
	p.wLake.stop(30 * time.Second)
	p.wInflux.stop(30 * time.Second)
	p.checkInflux(acked)
	p.checkLake(acked)
}
