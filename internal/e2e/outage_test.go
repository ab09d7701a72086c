package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
)

// The stages of a sink outage, in the order they must come (see
// docs/reliability.md, "Sink outages").
const (
	stageWriterFull = "1 the influx writer's queue is full: it answers busy"
	stageBlocked    = "2 influx's cursor at the router is full: influx alone is held back"
	stageMainFull   = "3 the router's main queue is full: it answers frontends busy"
	stageRefused    = "4 the frontend's queue is full: devices get 1013"
)

// outageStages watches the pipeline for the stages of an InfluxDB outage.
func (p *pipeline) outageStages(ctx context.Context) *stages {
	counter := func(pr *proc, name string, labels map[string]string) func() bool {
		return func() bool {
			v, ok := p.gauge(pr, name, labels)
			return ok && v > 0
		}
	}
	return watchStages(ctx, map[string]func() bool{
		stageWriterFull: counter(p.wInflux, "drover_writer_busy_total", map[string]string{"reason": "full"}),
		stageBlocked: func() bool {
			v, ok := p.gauge(p.rt, "drover_queue_cursor_fill_ratio", map[string]string{"queue": "router", "cursor": uid("influx")})
			return ok && v >= 1
		},
		stageMainFull: counter(p.rt, "drover_router_busy_refusals_total", map[string]string{"reason": "queue_full"}),
		stageRefused:  counter(p.fe, "drover_frontend_refusals_total", map[string]string{"reason": "overloaded"}),
	})
}

// TestSinkOutageBackPressure walks the whole way of a sink outage with
// queue bounds small enough to reach every one: InfluxDB stops while 100
// devices send 1,000 readings/s, and
//
//  1. the influx writer's queue fills, and it answers the router busy;
//  2. influx's cursor in the router's log passes its bound
//     (-subscriber-queue-max-bytes, half the log's here), and the live feed
//     goes on (updates with readings taken after that), as does the lake;
//  3. the router's main queue fills: it answers the frontend busy;
//  4. the frontend's queue fills: devices are refused with 1013, and get no
//     ack for what is not stored: back-pressure comes last, after every
//     queue on the way is full.
//
// Then InfluxDB comes back, everything drains, and every acked reading is
// in InfluxDB and in the lake, checked per device.
func TestSinkOutageBackPressure(t *testing.T) {
	const devices, rate, perDevice = 100, 10.0, 400
	const bound = "524288"    // 512 KiB: ~4,000 readings in each queue
	const subBound = "262144" // influx's cursor full at half the router's log
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, perDevice
	sc.Rate, sc.FrameReadings, sc.Window = rate, 1, 8
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
	// The devices refused with 1013 come back every second or so and trip
	// the frontend's flapping hold (16 connections a minute): held back
	// for its default minute, they stayed away ~40 s after the pipeline
	// had recovered. The hold is not what this test is about: 2 s, at
	// most 5.
	p, sc := startPipeline(t, ctx, pipelineOpts{sim: sc, livefeed: true, args: map[string][]string{
		"frontend":      {"-queue-max-bytes", bound, "-flap-block", "2s", "-flap-block-max", "5s"},
		"router":        {"-queue-max-bytes", bound, "-subscriber-queue-max-bytes", subBound},
		"writer-influx": {"-queue-max-bytes", bound},
	}})
	wctx, wstop := context.WithCancel(ctx)
	defer wstop()
	live := watchLiveTimes(wctx, t, p.liveURL, p.devToken)
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	acks := watchAcks(wctx, fleet)
	fleetDone := make(chan error, 1)
	start := time.Now()
	go func() { fleetDone <- fleet.Run(ctx) }()
	total := func() uint64 {
		var s uint64
		for _, hi := range fleet.Acked() {
			s += hi
		}
		return s
	}
	waitFor(t, 20*time.Second, "first acks and live updates", func() bool {
		_, n := live.newestBetween(start, time.Now())
		return total() > 0 && n > 0
	})

	st := p.outageStages(wctx)
	p.inf.Stop()
	outStart := time.Now()
	t.Logf("influxd stopped at %v (acked %d)", outStart.Sub(start).Round(time.Millisecond), total())
	waitFor(t, 90*time.Second, "devices to be refused with 1013", func() bool {
		_, ok := st.at(stageRefused)
		return ok && fleet.Stats().Disconnects[strconv.Itoa(1013)] > 0
	})
	// Back-pressure holds for a while: what is acked now is what was
	// stored before.
	heldFrom, ackedBefore := time.Now(), total()
	time.Sleep(3 * time.Second) // the deliberate hold of the outage
	ackedHeld := total() - ackedBefore
	p.restartInflux()
	outEnd := time.Now()
	t.Logf("influxd restarted after %v; during the last %v, with every queue full, %d readings were acked; stages:%s",
		outEnd.Sub(outStart).Round(time.Millisecond), outEnd.Sub(heldFrom).Round(time.Millisecond), ackedHeld, st.report(start))

	// Each stage was reached, in order: back-pressure to devices last.
	var prev time.Time
	for _, s := range []string{stageWriterFull, stageBlocked, stageMainFull, stageRefused} {
		at, ok := st.at(s)
		if !ok {
			t.Fatalf("stage %q never seen", s)
		}
		if at.Before(prev) {
			t.Errorf("stage %q at %v, before the stage that must come first (%v)", s, at.Sub(start), prev.Sub(start))
		}
		prev = at
	}
	// The live lane went on while influx was held back: updates with
	// readings taken after its cursor was full arrived before the main
	// queue was full.
	blocked, _ := st.at(stageBlocked)
	mainFull, _ := st.at(stageMainFull)
	newest, n := live.newestBetween(blocked, mainFull)
	t.Logf("while the fan-out was blocked (%v, until the main queue was full): %d live updates, newest reading taken %v after it blocked",
		mainFull.Sub(blocked).Round(time.Millisecond), n, newest.Sub(blocked).Round(time.Millisecond))
	if !newest.After(blocked.Add(500 * time.Millisecond)) {
		t.Errorf("the live feed stopped with the fan-out: no update with a reading taken after it blocked (newest %v)", newest.Sub(blocked))
	}

	if err := <-fleetDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("fleet: %v", err)
	}
	runEnd := time.Now()
	fs := fleet.Stats()
	if fs.Acked != devices*perDevice {
		t.Fatalf("acked %d of %d readings by the end: %+v", fs.Acked, devices*perDevice, fs)
	}
	wstop()
	t.Logf("fleet done %v after the start: %d acked, disconnects %v, ack latency p99 %v max %v; longest ack gap in the whole run %v",
		runEnd.Sub(start).Round(time.Millisecond), fs.Acked, fs.Disconnects, fs.AckLatency.P99, fs.AckLatency.Max,
		acks.longestGap(start, runEnd).Round(time.Millisecond))

	p.waitDrained(90*time.Second, uint64(devices*perDevice))
	p.wLake.stop(30 * time.Second)
	p.wInflux.stop(30 * time.Second)
	acked := fleet.Acked()
	p.checkInflux(acked)
	p.checkLake(acked)
}

// outageEnv reads a duration from the environment variable name.
func outageEnv(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, v)
	}
	return d
}

// TestSinkOutageLong is the outage, with every bound at its
// default (a share of the volume): 10,000 readings/s (1,000 devices × 10/s,
// one reading a frame) for DROVER_OUTAGE_DURATION with InfluxDB up (the
// baseline), then as long again with InfluxDB stopped. During the outage
// devices are acked throughout (no 1013, no pause in acks), the live feed
// and the lake go on; after InfluxDB returns every acked reading of both
// phases is in InfluxDB and in the lake, checked per device. It prints
// the ack latency p99 of both phases (the target: the outage's at
// most twice the baseline's) and the queues' fill.
//
// It runs only when DROVER_OUTAGE_DURATION is set (make outage sets 5m):
// it is a load of its own and takes about 3 times that. The latency
// target fails the test only for phases of a minute or more.
// DROVER_OUTAGE_DEVICES and DROVER_OUTAGE_RATE change the load.
func TestSinkOutageLong(t *testing.T) {
	if os.Getenv("DROVER_OUTAGE_DURATION") == "" {
		t.Skip("DROVER_OUTAGE_DURATION not set: the long outage runs with make outage")
	}
	phase := outageEnv(t, "DROVER_OUTAGE_DURATION", 5*time.Minute)
	devices, rate := 1000, 10.0
	if v := os.Getenv("DROVER_OUTAGE_DEVICES"); v != "" {
		if devices, _ = strconv.Atoi(v); devices < 1 {
			t.Fatalf("DROVER_OUTAGE_DEVICES=%q", v)
		}
	}
	if v := os.Getenv("DROVER_OUTAGE_RATE"); v != "" {
		if rate, _ = strconv.ParseFloat(v, 64); rate <= 0 {
			t.Fatalf("DROVER_OUTAGE_RATE=%q", v)
		}
	}
	perDevice := int(rate * phase.Seconds())
	ctx, cancel := context.WithTimeout(context.Background(), 6*phase+15*time.Minute)
	defer cancel()

	sc := sim.DefaultConfig()
	sc.Devices, sc.Readings = devices, perDevice
	sc.Rate, sc.FrameReadings, sc.Window = rate, 1, 8
	sc.ConnectRate, sc.Warmup = 1000, 10*time.Second
	sc.BackoffMin, sc.BackoffMax, sc.AckTimeout = 50*time.Millisecond, time.Second, 10*time.Second
	// Every bound at its default: the writers too (the pipeline gives them
	// none otherwise).
	p, sc := startPipeline(t, ctx, pipelineOpts{sim: sc, livefeed: true, args: map[string][]string{
		"writer-influx": {"-queue-max-bytes", "0"},
		"writer-lake":   {"-queue-max-bytes", "0"},
	}})
	wctx, wstop := context.WithCancel(ctx)
	defer wstop()
	live := watchLiveTimes(wctx, t, p.liveURL, p.devToken)

	runPhase := func(name string, cfg sim.Config, during func(f *sim.Fleet)) (*sim.Fleet, sim.Summary, *ticker) {
		f, err := sim.New(cfg, testLogger(t), nil)
		if err != nil {
			t.Fatal(err)
		}
		acks := watchAcks(wctx, f)
		done := make(chan error, 1)
		go func() { done <- f.Run(ctx) }()
		if during != nil {
			during(f)
		}
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("%s fleet: %v", name, err)
		}
		s := f.Summary()
		if s.Acked != uint64(devices*perDevice) {
			t.Fatalf("%s: acked %d of %d readings", name, s.Acked, devices*perDevice)
		}
		return f, s, acks
	}
	steadyP99 := func(s sim.Summary) float64 {
		if s.AckLatencySteadyMs != nil {
			return s.AckLatencySteadyMs.P99
		}
		return s.AckLatencyMs.P99
	}

	// The baseline, InfluxDB up.
	baseStart := time.Now()
	fleetA, sumA, _ := runPhase("baseline", sc, nil)
	t.Logf("baseline: %d readings acked in %v, ack p99 %.1f ms (steady, after %v), max %.0f ms",
		sumA.Acked, time.Since(baseStart).Round(time.Second), steadyP99(sumA), sc.Warmup, sumA.AckLatencyMs.Max)
	p.waitDrained(5*time.Minute, uint64(devices*perDevice))

	// The outage.
	scB := sc
	scB.FirstSeq = uint64(perDevice) + 1
	lakeWritten := func() float64 { v, _ := p.gauge(p.wLake, "drover_writer_records_written_total", nil); return v }
	lakeBefore := lakeWritten()
	p.inf.Stop()
	outStart := time.Now()
	var fill string
	fleetB, sumB, acksB := runPhase("outage", scB, func(f *sim.Fleet) {
		// InfluxDB stays down for the phase: sample the fill at its end.
		select {
		case <-time.After(phase):
		case <-ctx.Done():
		}
		for _, q := range []struct {
			pr   *proc
			name string
		}{{p.wInflux, "writer-" + uid("influx")}, {p.rt, "router"}, {p.fe, "frontend"}} {
			l := map[string]string{"queue": q.name}
			b, _ := p.gauge(q.pr, "drover_queue_depth_bytes", l)
			m, _ := p.gauge(q.pr, "drover_queue_max_bytes", l)
			r, _ := p.gauge(q.pr, "drover_queue_fill_ratio", l)
			fill += fmt.Sprintf("\n  %-28s %12.0f of %14.0f bytes, fill ratio %.5f", q.name, b, m, r)
		}
		p.restartInflux()
	})
	outEnd := time.Now()
	lakeDuring := lakeWritten() - lakeBefore
	ackGap := acksB.longestGap(outStart.Add(sc.Warmup), outStart.Add(phase))
	liveGap := live.longestGap(outStart.Add(sc.Warmup), outStart.Add(phase))
	p99A, p99B := steadyP99(sumA), steadyP99(sumB)
	t.Logf("outage: InfluxDB down %v; %d readings acked, ack p99 %.1f ms (baseline %.1f ms: ratio %.2f, target at most 2), max %.0f ms; disconnects %v",
		outEnd.Sub(outStart).Round(time.Second), sumB.Acked, p99B, p99A, p99B/p99A, sumB.AckLatencyMs.Max, sumB.Disconnects)
	t.Logf("outage: longest pause in acks %v, in live updates %v; lake wrote %.0f readings meanwhile; queues at the outage's end:%s",
		ackGap.Round(time.Millisecond), liveGap.Round(time.Millisecond), lakeDuring, fill)
	if n := sumB.Disconnects["1013"]; n > 0 {
		t.Errorf("%d devices refused with 1013 during the outage: the default bounds did not hold it", n)
	}
	if ackGap >= maxPause {
		t.Errorf("ingest paused during the outage: %v without a new ack (limit %v)", ackGap, maxPause)
	}
	if liveGap >= maxPause {
		t.Errorf("live paused during the outage: %v without an update (limit %v)", liveGap, maxPause)
	}
	if lakeDuring < 0.9*float64(sumB.Acked) {
		t.Errorf("the lake wrote %.0f readings during the outage, want about the %d acked: it waited on InfluxDB", lakeDuring, sumB.Acked)
	}
	// The latency target is judged on phases long enough for a p99 to mean
	// something (make outage: 5 minutes); a quick run only reports it.
	if p99B > 2*p99A {
		if phase >= time.Minute {
			t.Errorf("ack p99 during the outage %.1f ms, more than twice the baseline's %.1f ms", p99B, p99A)
		} else {
			t.Logf("ack p99 during the outage %.1f ms, more than twice the baseline's %.1f ms: not judged on %v phases", p99B, p99A, phase)
		}
	}

	wstop()
	drainStart := time.Now()
	p.waitDrained(10*time.Minute, uint64(2*devices*perDevice))
	t.Logf("drained %v after the outage phase ended", time.Since(drainStart).Round(time.Second))
	p.wLake.stop(60 * time.Second)
	p.wInflux.stop(60 * time.Second)
	acked := fleetA.Acked()
	for dev, hi := range fleetB.Acked() {
		acked[dev] = max(acked[dev], hi)
	}
	p.checkInfluxCounts(acked)
	p.checkLake(acked)
}
