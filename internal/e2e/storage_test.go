package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
)

// TestStoragePipeline runs the durable fan-out as real processes: the
// simulator (in this process) → drover frontend → drover router
// (-subscribers lake,influx) → two drover storage-writer processes, one into
// a real influxd (testenv), one into a lake directory. 200 devices send
// 100,000 readings; once every queue on the way is empty, InfluxDB holds
// exactly one point per acked (device, seq), and the lake, read with DuckDB
// and deduplicated by (device_id, seq), holds exactly the acked set.
func TestStoragePipeline(t *testing.T) {
	t.Parallel()
	const devices, perDevice = 200, 500
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, perDevice
	sc.Rate, sc.FrameReadings, sc.Window = 100, 10, 4
	p, sc := startPipeline(t, ctx, pipelineOpts{sim: sc})

	fleet, err := sim.New(sc, testLogger(t), nil)
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
	t.Logf("%d readings acked in %v", st.Acked, time.Since(start).Round(time.Millisecond))

	p.waitDrained(2*time.Minute, devices*perDevice)
	t.Logf("pipeline drained %v after the start", time.Since(start).Round(time.Millisecond))
	// Stop the writers cleanly so that the lake is quiet (no compaction
	// under way) while DuckDB reads it.
	p.wLake.stop(30 * time.Second)
	p.wInflux.stop(30 * time.Second)

	acked := fleet.Acked()
	p.checkInflux(acked)
	p.checkLake(acked)
}

// maxPause is the longest gap between two acks, or two live updates, that
// TestStorageFaults accepts during the InfluxDB outage: half the shortest
// outage, so that lanes waiting for InfluxDB fail it whatever the load.
const maxPause = 5 * time.Second

// influxOutage is how long TestStorageFaults keeps influxd down:
// $DROVER_E2E_INFLUX_OUTAGE (e.g. 30s, what the issue asks for; at least
// 2*maxPause), default 10 s so that the default run (make test) stays well
// under 2.5 minutes.
func influxOutage(t *testing.T) time.Duration {
	v := os.Getenv("DROVER_E2E_INFLUX_OUTAGE")
	if v == "" {
		return 10 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 2*maxPause {
		t.Fatalf("DROVER_E2E_INFLUX_OUTAGE=%q: want a duration of at least %v", v, 2*maxPause)
	}
	return d
}

// TestStorageFaults runs the same pipeline plus a livefeed process with a
// WebSocket client, and during the run:
//
//  1. stops influxd for influxOutage (default 10 s, DROVER_E2E_INFLUX_OUTAGE=30s
//     for the figure) and starts it again on the same data and port:
//     meanwhile the simulator's acked count must keep growing and the live
//     client keep receiving updates (longest gap of each under maxPause);
//  2. kills -9 the influx writer, the lake writer and the router, once each,
//     restarting each on the same directories and ports.
//
// At the end nothing acked is missing from InfluxDB or the lake, and each
// holds each acked reading once (InfluxDB by its idempotent point
// identity; the lake after dropping duplicates by (device_id, seq)).
func TestStorageFaults(t *testing.T) {
	t.Parallel()
	outage := influxOutage(t)
	const devices, rate = 200, 20.0
	// Long enough for: 3 s before the outage, the outage, the writer's
	// retry backoff after it (doubling up to 30 s: up to about the outage
	// again before it sees InfluxDB back), and ~15 s of kills.
	runFor := 3*time.Second + 2*outage + 18*time.Second
	perDevice := int(rate * runFor.Seconds())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute+2*outage)
	defer cancel()

	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, perDevice
	sc.Rate, sc.FrameReadings, sc.Window = rate, 5, 4
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
	p, sc := startPipeline(t, ctx, pipelineOpts{sim: sc, livefeed: true})

	wctx, wstop := context.WithCancel(ctx)
	defer wstop()
	live, liveMsgs := watchLive(wctx, t, p.liveURL, p.devToken)

	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	acks := watchAcks(wctx, fleet)
	fleetDone := make(chan error, 1)
	start := time.Now()
	go func() { fleetDone <- fleet.Run(ctx) }()
	var events []string
	note := func(format string, args ...any) {
		events = append(events, fmt.Sprintf("%6v  ", time.Since(start).Round(time.Millisecond))+fmt.Sprintf(format, args...))
	}
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case err := <-fleetDone:
			t.Fatalf("fleet finished early (%v) at %v: make the run longer", err, time.Since(start))
		}
	}
	total := func() uint64 {
		var s uint64
		for _, hi := range fleet.Acked() {
			s += hi
		}
		return s
	}

	// Ingest under way and the live client receiving.
	waitFor(t, 20*time.Second, "first acks and first live update", func() bool {
		return total() > 0 && liveMsgs.Load() > 0
	})
	pause(2 * time.Second)

	// 1. InfluxDB down for the outage.
	note("influxd stopped (acked %d)", total())
	outStart := time.Now()
	p.inf.Stop()
	waitFor(t, 15*time.Second, "the influx writer to see the sink down", func() bool {
		v, ok := p.gauge(p.wInflux, "drover_writer_sink_down", nil)
		return ok && v == 1
	})
	pause(time.Until(outStart.Add(outage))) // the deliberate outage
	backlog, _ := p.gauge(p.wInflux, "drover_queue_depth_entries", map[string]string{"queue": "writer-" + uid("influx")})
	p.restartInflux()
	outEnd := time.Now()
	note("influxd restarted after %v down (acked %d, influx writer backlog %.0f entries)", outEnd.Sub(outStart).Round(time.Millisecond), total(), backlog)
	ackGap := acks.longestGap(outStart, outEnd)
	liveGap := live.longestGap(outStart, outEnd)
	waitFor(t, outage+35*time.Second, "the influx writer to see the sink back", func() bool {
		v, ok := p.gauge(p.wInflux, "drover_writer_sink_down", nil)
		return ok && v == 0
	})
	note("influx sink back up")

	// 2. kill -9 each writer and the router once, mid-run.
	for _, victim := range []*proc{p.wInflux, p.wLake, p.rt} {
		pause(2 * time.Second)
		note("kill -9 %s (acked %d)", victim.name, total())
		victim.kill9()
		pause(500 * time.Millisecond) // down for a while
		victim.start(ctx)
		note("%s restarted", victim.name)
	}

	if err := <-fleetDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	runEnd := time.Now()
	st := fleet.Stats()
	note("fleet done: %d acked", st.Acked)
	if st.Acked != uint64(devices*perDevice) {
		t.Fatalf("acked %d of %d readings by the end: %+v", st.Acked, devices*perDevice, st)
	}
	wstop()

	for _, e := range events {
		t.Log(e)
	}
	t.Logf("during the %v influx outage: longest gap between ack increases %v, between live updates %v (%d live messages in the whole run)",
		outEnd.Sub(outStart).Round(time.Millisecond), ackGap.Round(time.Millisecond), liveGap.Round(time.Millisecond), liveMsgs.Load())
	t.Logf("whole run (router kill included): longest ack gap %v, longest live gap %v",
		acks.longestGap(start, runEnd).Round(time.Millisecond), live.longestGap(start.Add(time.Second), runEnd).Round(time.Millisecond))
	// A lane that waited for InfluxDB would stand still for the whole
	// outage (10 s or more); a lane that does not, moves every few hundred
	// milliseconds here, but a loaded machine (the race suite beside this
	// one) can hold a process for a few seconds. maxPause tells the two apart.
	if ackGap >= maxPause {
		t.Errorf("ingest paused during the influx outage: %v without a new ack (limit %v)", ackGap, maxPause)
	}
	if liveGap >= maxPause {
		t.Errorf("live lane paused during the influx outage: %v without an update (limit %v)", liveGap, maxPause)
	}

	// Writers restarted from kill -9 count records written from 0 again:
	// the empty queues are the drain condition here.
	p.waitDrained(90*time.Second, 0)
	t.Logf("pipeline drained %v after the fleet finished", time.Since(runEnd).Round(time.Millisecond))
	p.wLake.stop(30 * time.Second)
	p.wInflux.stop(30 * time.Second)

	acked := fleet.Acked()
	p.checkInflux(acked)
	p.checkLake(acked)
}
