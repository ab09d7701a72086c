package sim

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// checkDelivered asserts that every device of f took exactly readings readings, got them all
// acked exactly once, and that the server received every one of them.
func checkDelivered(t *testing.T, f *Fleet, s *fakeFrontend, readings int) Stats {
	t.Helper()
	each := map[string]int{}
	for _, id := range f.DeviceIDs() {
		each[id] = readings
	}
	return checkDeliveredEach(t, f, s, each)
}

// checkDeliveredTimed is checkDelivered for a fleet that takes readings for a Duration, after
// it is done: a device's slots are at genStart + k/Rate and those at or after Duration are not
// taken (device.go, generateLocked), so a device that started late (the race detector, a
// loaded machine) has fewer than Rate × Duration. Each has want, less a slot per 1/Rate of its
// late start, and delivers every one exactly once.
func checkDeliveredTimed(t *testing.T, f *Fleet, s *fakeFrontend, want int) Stats {
	t.Helper()
	cfg := f.cfg
	each := map[string]int{}
	for _, d := range f.devices {
		n := int(math.Ceil(float64(cfg.Duration-d.genStart) * cfg.Rate / float64(time.Second)))
		if n > want || n < 1 {
			t.Errorf("%s started %v after the fleet: %d slots before the end, want 1..%d", d.id, d.genStart, n, want)
		}
		each[d.id] = n
	}
	return checkDeliveredEach(t, f, s, each)
}

// checkDeliveredEach is checkDelivered with each device's own number of readings.
func checkDeliveredEach(t *testing.T, f *Fleet, s *fakeFrontend, readingsOf map[string]int) Stats {
	t.Helper()
	st := f.Stats()
	want := uint64(0)
	for _, n := range readingsOf {
		want += uint64(n)
	}
	if st.Generated != want || st.Acked != want || st.AckLatency.Count != want {
		t.Errorf("generated %d, acked %d, latency samples %d; want %d each", st.Generated, st.Acked, st.AckLatency.Count, want)
	}
	if st.Outbox != 0 || st.InFlight != 0 || st.Connected != 0 {
		t.Errorf("after the end: outbox %d, in flight %d, connected %d; want 0", st.Outbox, st.InFlight, st.Connected)
	}
	if st.Sent < st.Acked || st.Sent-st.Resent != st.Acked {
		// Every reading's first send is acked once: first sends = acked.
		t.Errorf("sent %d, resent %d, acked %d: first sends differ from acked", st.Sent, st.Resent, st.Acked)
	}
	first := f.cfg.FirstSeq
	for id, seq := range f.Acked() {
		if last := first + uint64(readingsOf[id]) - 1; seq != last {
			t.Errorf("%s: acked seq %d, want %d", id, seq, last)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range f.DeviceIDs() {
		m, readings := s.received[id], readingsOf[id]
		for seq := first; seq <= first+uint64(readings)-1; seq++ {
			if m[seq] == 0 {
				t.Errorf("%s: seq %d never reached the server", id, seq)
				break
			}
		}
		if len(m) != readings {
			t.Errorf("%s: server received %d distinct seqs, want %d", id, len(m), readings)
		}
	}
	for _, v := range s.violations {
		t.Errorf("server saw: %s", v)
	}
	return st
}

// TestEveryReadingAckedOnce runs fleets against servers that misbehave in each way a frontend
// may, and checks that every reading is delivered and counted as acked exactly once.
func TestEveryReadingAckedOnce(t *testing.T) {
	const readings = 150
	cases := []struct {
		name  string
		setup func(*fakeFrontend)
		cfg   func(*Config)
		check func(*testing.T, Stats, *fakeFrontend)
	}{
		{name: "plain"},
		{name: "first seq", cfg: func(c *Config) { c.FirstSeq = 1_763_899_200_000_000 }},
		{name: "batched", cfg: func(c *Config) { c.FrameReadings, c.Window = 7, 3 }},
		{name: "json", cfg: func(c *Config) { c.JSON, c.FrameReadings = true, 5 },
			check: func(t *testing.T, _ Stats, s *fakeFrontend) {
				if s.text.Load() == 0 || s.bin.Load() != 0 {
					t.Errorf("JSON mode: %d text frames, %d binary", s.text.Load(), s.bin.Load())
				}
			}},
		{name: "tcp drop", setup: func(s *fakeFrontend) { s.dropEvery, s.dropHow = 5, "tcp"; s.dropBudget.Store(12) },
			cfg: func(c *Config) { c.FrameReadings = 4 }, check: wantResends},
		{name: "close 1013", setup: func(s *fakeFrontend) { s.dropEvery, s.dropHow = 3, "1013"; s.dropBudget.Store(12) },
			check: func(t *testing.T, st Stats, s *fakeFrontend) {
				wantResends(t, st, s)
				if st.Disconnects["1013"] == 0 {
					t.Errorf("no 1013 disconnect counted: %v", st.Disconnects)
				}
			}},
		{name: "close 1001", setup: func(s *fakeFrontend) { s.dropEvery, s.dropHow = 4, "1001"; s.dropBudget.Store(8) },
			cfg: func(c *Config) { c.FrameReadings, c.Window = 3, 16 }, check: wantResends},
		{name: "close 4000", setup: func(s *fakeFrontend) { s.dropEvery, s.dropHow = 6, "4000"; s.dropBudget.Store(8) },
			check: func(t *testing.T, st Stats, s *fakeFrontend) {
				wantResends(t, st, s)
				// The server closes 8 times with 4000. A device that is writing at
				// that moment sees the close as a failed write (connection reset)
				// or an abnormal closure instead of the close frame.
				seen := st.Disconnects["4000"] + st.Disconnects["write"] + st.Disconnects["1006"]
				if seen != 8 || st.Disconnects["4000"] == 0 {
					t.Errorf("4000 disconnects: %v, want 8 in all (4000, or write/1006 when a write raced the close)", st.Disconnects)
				}
			}},
		{name: "ack delay", setup: func(s *fakeFrontend) { s.ackDelay = 30 * time.Millisecond },
			cfg: func(c *Config) { c.Devices, c.Readings, c.Rate = 2, 40, 400 },
			check: func(t *testing.T, st Stats, _ *fakeFrontend) {
				l := st.AckLatency
				if l.P50 < 30*time.Millisecond || l.Max < 30*time.Millisecond || l.P99 > 2*time.Second || l.P50 > l.P99 || l.P99 > l.Max {
					t.Errorf("ack latency with 30ms server delay: %+v", l)
				}
			}},
		{name: "withheld acks", setup: func(s *fakeFrontend) { s.withholdBudget.Store(4) },
			cfg: func(c *Config) { c.AckTimeout = 100 * time.Millisecond },
			check: func(t *testing.T, st Stats, s *fakeFrontend) {
				wantResends(t, st, s)
				if st.Disconnects[endAckTimeout] == 0 {
					t.Errorf("no ack timeout counted: %v", st.Disconnects)
				}
			}},
		// AckTimeout/4 covers the writer's own wakes (the reading tick, the 100 ms tick of a
		// full window): the timeout is checked on them, without a ticker of its own.
		{name: "withheld acks, checked on the writer's ticks", setup: func(s *fakeFrontend) { s.withholdBudget.Store(4) },
			cfg: func(c *Config) { c.AckTimeout = 4 * slowTickEvery },
			check: func(t *testing.T, st Stats, s *fakeFrontend) {
				wantResends(t, st, s)
				if st.Disconnects[endAckTimeout] == 0 {
					t.Errorf("no ack timeout counted: %v", st.Disconnects)
				}
			}},
		{name: "downlink error", setup: func(s *fakeFrontend) { s.errorCode = 2; s.errorBudget.Store(4) },
			check: func(t *testing.T, st Stats, _ *fakeFrontend) {
				if st.Disconnects["error_2"] != 4 || st.Errors < 4 {
					t.Errorf("downlink errors: disconnects %v, errors %d", st.Disconnects, st.Errors)
				}
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := newFakeFrontend(t, c.setup)
			cfg := testConfig(s.url())
			cfg.Readings = readings
			if c.cfg != nil {
				c.cfg(&cfg)
			}
			f, _ := startFleet(t, cfg)
			waitDone(t, f, 10*time.Second)
			st := checkDelivered(t, f, s, cfg.Readings)
			if c.check != nil {
				c.check(t, st, s)
			}
			if t.Failed() {
				t.Logf("stats: %+v", st)
			}
		})
	}
}

// wantResends checks that connections were lost with frames un-acked and the device resent them.
func wantResends(t *testing.T, st Stats, s *fakeFrontend) {
	t.Helper()
	if st.Resent == 0 || s.duplicates() == 0 {
		t.Errorf("resent %d, duplicates at the server %d: want both > 0", st.Resent, s.duplicates())
	}
	var n uint64
	for _, v := range st.Disconnects {
		n += v
	}
	if n == 0 || st.Connects < uint64(st.Devices)+1 {
		t.Errorf("disconnects %v, connects %d: want reconnects", st.Disconnects, st.Connects)
	}
}

// TestBackoff checks, from the server's side, that refused devices come back within their
// backoff: exponential from BackoffMin to BackoffMax with full jitter (each wait uniform in
// [0, b], so across the devices the waits of the n-th attempt average about b/2), long for a
// 401, and Retry-After plus up to a second for a 503 that gives one.
func TestBackoff(t *testing.T) {
	const (
		bmin  = 20 * time.Millisecond
		bmax  = 160 * time.Millisecond
		slack = 3 * time.Millisecond
	)
	exponential := func(n int) time.Duration { return min(bmax, bmin<<(n-1)) } // before attempt n+1
	cases := []struct {
		name     string
		setup    func(*fakeFrontend)
		seed     string
		attempts int
		devices  int
		bound    func(n int) time.Duration // backoff b after the n-th failure: wait in [0, b]
	}{
		{name: "503", setup: func(s *fakeFrontend) { s.refuse = 503 }, attempts: 7, devices: 20, bound: exponential},
		{name: "1013", setup: func(s *fakeFrontend) { s.closeCode = websocket.CloseTryAgainLater }, attempts: 7, devices: 20, bound: exponential},
		{name: "401", seed: "wrong-seed", attempts: 3, devices: 5, bound: func(int) time.Duration { return bmax }},
		{name: "retry-after", setup: func(s *fakeFrontend) { s.refuse, s.retryAfter = 503, "1" }, attempts: 2, devices: 3,
			bound: func(int) time.Duration { return 2 * time.Second }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			s := newFakeFrontend(t, c.setup)
			cfg := testConfig(s.url())
			cfg.Devices, cfg.Rate, cfg.BackoffMin, cfg.BackoffMax = c.devices, 0, bmin, bmax
			if c.seed != "" {
				cfg.TokenSeed = c.seed
			}
			f, cancel := startFleet(t, cfg)
			ids := f.DeviceIDs()
			waitFor(t, 10*time.Second, "attempts", func() bool {
				for _, id := range ids {
					if len(s.attemptsOf(id)) < c.attempts {
						return false
					}
				}
				return true
			})
			cancel()
			<-f.Done()
			sums := make([]time.Duration, c.attempts)
			for _, id := range ids {
				at := s.attemptsOf(id)
				for n := 1; n < c.attempts; n++ {
					gap, b := at[n].Sub(at[n-1]), c.bound(n)
					sums[n] += gap
					if c.name == "retry-after" {
						if gap < time.Second-slack || gap > 2500*time.Millisecond {
							t.Errorf("%s: attempt %d came %s after the one before; Retry-After 1 asks [1s, 2s] plus dial time", id, n+1, gap)
						}
						continue
					}
					if gap > b+500*time.Millisecond {
						t.Errorf("%s: attempt %d came %s after the one before, want about %s at most", id, n+1, gap, b)
					}
				}
			}
			// Full jitter: the n-th waits of many devices average b/2; a quarter of b is far
			// below what 20 uniform draws give, and far above what no backoff would.
			for n := 1; n < c.attempts && c.devices >= 20; n++ {
				if mean, b := sums[n]/time.Duration(c.devices), c.bound(n); mean < b/4 {
					t.Errorf("attempt %d: mean wait %s over %d devices, want about %s (backoff %s)", n+1, mean, c.devices, b/2, b)
				}
			}
			// Every attempt the server saw was counted, but for those the stop interrupted.
			st := f.Stats()
			if n, srv := st.Connects+sumCounts(st.ConnectFailures), uint64(s.totalAttempts()); n > srv || n+uint64(c.devices) < srv {
				t.Errorf("connects %d + failures %v, server saw %d attempts", st.Connects, st.ConnectFailures, srv)
			}
		})
	}
}

func sumCounts(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// TestIdleHoldsConnections checks that idle devices connect at the connect rate, hold their
// connections without sending, and close them with 1001 on stop.
func TestIdleHoldsConnections(t *testing.T) {
	s := newFakeFrontend(t, nil)
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Rate, cfg.ConnectRate = 30, 0, 100
	start := time.Now()
	f, cancel := startFleet(t, cfg)
	waitFor(t, 5*time.Second, "30 connections", func() bool {
		return s.open.Load() == 30 && f.Stats().Connected == 30
	})
	// 30 devices at 100/s: the last connects 290 ms after the first.
	if el := time.Since(start); el < 280*time.Millisecond {
		t.Errorf("30 devices connected in %s at 100/s", el)
	}
	// Hold: nothing sent, nobody reconnects, for a while.
	time.Sleep(200 * time.Millisecond)
	st := f.Stats()
	if st.Connects != 30 || len(st.Disconnects) != 0 || st.Sent != 0 || s.open.Load() != 30 || s.text.Load()+s.bin.Load() != 0 {
		t.Errorf("idle fleet did not hold: %+v, server open %d", st, s.open.Load())
	}
	cancel()
	<-f.Done()
	waitFor(t, 5*time.Second, "server side closed", func() bool { return s.open.Load() == 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closes[websocket.CloseGoingAway] != 30 {
		t.Errorf("close codes seen by the server: %v, want 30 × 1001", s.closes)
	}
}

// TestStopWhileBlocked checks that a fleet stops promptly even when its devices are blocked
// writing to a server that does not read: a stop cuts a blocked connection after a grace of two
// seconds instead of waiting for the write timeout. The bound is far below the write timeout and
// far above the grace, so a loaded machine (make test runs packages side by side) cannot fail it;
// a stop that waited for the write timeout still does.
func TestStopWhileBlocked(t *testing.T) {
	s := newFakeFrontend(t, func(s *fakeFrontend) { s.stall = make(chan struct{}) })
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Rate, cfg.FrameReadings, cfg.Window, cfg.Outbox = 2, 1e6, 1000, 1000, 100_000
	cfg.WriteTimeout = 10 * time.Minute
	f, cancel := startFleet(t, cfg)
	// Blocked: the socket buffers are full, so the sent count stops growing.
	var last uint64
	waitFor(t, 10*time.Second, "writes to block", func() bool {
		time.Sleep(100 * time.Millisecond)
		st := f.Stats()
		blocked := st.Sent > 0 && st.Sent == last && st.Connected == 2
		last = st.Sent
		return blocked
	})
	start := time.Now()
	cancel()
	select {
	case <-f.Done():
		t.Logf("stop took %s (grace 2s, write timeout %s)", time.Since(start), cfg.WriteTimeout)
	case <-time.After(30 * time.Second):
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		t.Logf("%s", buf[:n])
		t.Fatalf("fleet blocked on writes did not stop within 30s (write timeout %s)", cfg.WriteTimeout)
	}
}

// TestOutboxDrops checks that a device that cannot connect keeps a full outbox and counts what it
// cannot keep, and that a device reconnecting after the outage sends the outbox.
func TestOutboxDrops(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "ws://" + ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	cfg := testConfig(dead)
	cfg.Devices, cfg.Rate, cfg.Outbox = 2, 1000, 50
	f, _ := startFleet(t, cfg)
	waitFor(t, 5*time.Second, "drops", func() bool {
		st := f.Stats()
		return st.OutboxDrops > 0 && st.Outbox == 100
	})
	st := f.Stats()
	if st.Generated != 100 || st.Sent != 0 || st.ConnectFailures["refused"] == 0 {
		t.Errorf("stats: %+v", st)
	}
}

// TestFailover checks that devices leave a frontend that refuses them for one that works.
func TestFailover(t *testing.T) {
	bad := newFakeFrontend(t, func(s *fakeFrontend) { s.refuse = 503 })
	good := newFakeFrontend(t, nil)
	cfg := testConfig(bad.url(), good.url()+IngestPath)
	cfg.Devices, cfg.Readings = 10, 50
	f, _ := startFleet(t, cfg)
	waitDone(t, f, 10*time.Second)
	checkDelivered(t, f, good, cfg.Readings)
}

// TestStampede runs a fleet whose devices all drop their connections every so often, and checks
// that they come back, resend and get every reading acked once, and that stampedes are counted.
func TestStampede(t *testing.T) {
	s := newFakeFrontend(t, nil)
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Rate, cfg.Readings, cfg.StampedeEvery = 6, 200, 300, 250*time.Millisecond
	f, _ := startFleet(t, cfg)
	waitDone(t, f, 15*time.Second)
	st := checkDelivered(t, f, s, cfg.Readings)
	if st.Stampedes < 2 || st.Disconnects[endStampede] < uint64(cfg.Devices) || st.Connects < uint64(2*cfg.Devices) {
		t.Errorf("stampedes %d, disconnects %v, connects %d: want every device dropped and back, twice or more",
			st.Stampedes, st.Disconnects, st.Connects)
	}
	if sum := f.Summary(); sum.Stampedes != st.Stampedes || sum.Config.StampedeEvery != "250ms" {
		t.Errorf("summary: stampedes %d, config %q", sum.Stampedes, sum.Config.StampedeEvery)
	}
}

// TestStampedeIdle drops idle connections by hand: they all come back.
func TestStampedeIdle(t *testing.T) {
	s := newFakeFrontend(t, nil)
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Rate = 5, 0
	f, _ := startFleet(t, cfg)
	waitFor(t, 5*time.Second, "connections", func() bool { return f.Stats().Connected == 5 })
	f.Stampede()
	waitFor(t, 5*time.Second, "reconnections", func() bool {
		st := f.Stats()
		return st.Connected == 5 && st.Connects >= 10
	})
	if st := f.Stats(); st.Stampedes != 1 || st.Disconnects[endStampede] != 5 {
		t.Errorf("stampedes %d, disconnects %v", st.Stampedes, st.Disconnects)
	}
}

// TestLocalAddrs checks that devices dial from the given source addresses.
func TestLocalAddrs(t *testing.T) {
	s := newFakeFrontend(t, nil)
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Rate, cfg.LocalAddrs = 4, 0, []string{"127.0.0.2", "127.0.0.3"}
	f, _ := startFleet(t, cfg)
	waitFor(t, 5*time.Second, "connections", func() bool { return f.Stats().Connected == 4 })
	for _, ip := range cfg.LocalAddrs {
		if _, ok := s.peers.Load(ip); !ok {
			t.Errorf("no connection from %s", ip)
		}
	}
}

// TestDurationDrainSummaryProgress runs a fleet for a fixed time with a drain, and checks the
// summary and the progress lines.
func TestDurationDrainSummaryProgress(t *testing.T) {
	s := newFakeFrontend(t, func(s *fakeFrontend) { s.ackDelay = 20 * time.Millisecond })
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Rate, cfg.Duration, cfg.Drain, cfg.FrameReadings = 3, 100, 300*time.Millisecond, 5*time.Second, 2
	f, _ := startFleet(t, cfg)
	var (
		buf lockedBuffer
		wg  sync.WaitGroup
	)
	wg.Go(func() { f.Progress(&buf, 50*time.Millisecond) })
	waitDone(t, f, 10*time.Second)
	wg.Wait()

	// 100/s until 300 ms: a device's slots are at its start, +10 ms, ... before 300 ms: 30 for a
	// device that started at 0, fewer for one that started late (a loaded machine: its readings
	// begin when it does, as a vehicle's would).
	total := checkDeliveredTimed(t, f, s, 30).Generated
	sum := f.Summary()
	b, err := json.Marshal(sum)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"config", "seconds", "sent_per_second", "acked_per_second", "ack_latency_ms", "acked"} {
		if _, ok := back[k]; !ok {
			t.Errorf("summary lacks %q: %s", k, b)
		}
	}
	if sum.Acked != total || sum.Unacked != 0 || sum.AckedPerSecond <= 0 || sum.AckLatencyMs.P50 < 20 ||
		sum.Seconds < 0.3 || sum.DevicesDone != 3 || sum.Config.Duration != "300ms" || strings.Contains(string(b), testSeed) {
		t.Errorf("summary: %s", b)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "sim ") || !strings.Contains(lines[0], "connected ") ||
		!strings.Contains(lines[len(lines)-1], "ack p50") {
		t.Errorf("progress lines:\n%s", buf.String())
	}
}

// TestWarmupSteadyLatency checks that the steady-state ack latency leaves out the warm-up: the
// frontend acks slowly for its first 200 ms and fast after, and the steady distribution, from
// 500 ms on, has only the fast acks while the whole run's has both.
func TestWarmupSteadyLatency(t *testing.T) {
	s := newFakeFrontend(t, func(s *fakeFrontend) {
		s.ackDelay, s.slowAckDelay, s.slowUntil = 5*time.Millisecond, 150*time.Millisecond, time.Now().Add(200*time.Millisecond)
	})
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Rate, cfg.Duration, cfg.Drain, cfg.Warmup = 3, 50, time.Second, 5*time.Second, 500*time.Millisecond
	f, _ := startFleet(t, cfg)
	waitDone(t, f, 10*time.Second)
	checkDeliveredTimed(t, f, s, 50)
	sum := f.Summary()
	all, steady := sum.AckLatencyMs, sum.AckLatencySteadyMs
	if steady == nil {
		t.Fatalf("no steady-state latency in %+v", sum)
	}
	if all.Max < 150 || steady.Count == 0 || steady.Count >= all.Count || steady.Max >= 150 || steady.P50 < 5 ||
		sum.WarmupSeconds != 0.5 {
		t.Errorf("whole run %+v, steady %+v (warm-up %vs): want the 150 ms acks only in the whole run", all, *steady, sum.WarmupSeconds)
	}
	// Without a warm-up there is no steady-state distribution.
	cfg.Warmup, cfg.Duration = 0, 100*time.Millisecond
	f, _ = startFleet(t, cfg)
	waitDone(t, f, 10*time.Second)
	if sum := f.Summary(); sum.AckLatencySteadyMs != nil {
		t.Errorf("steady-state latency without a warm-up: %+v", *sum.AckLatencySteadyMs)
	}
}

// TestTimeline runs a fleet with a timeline and checks that the lines account for every reading:
// their acked counts add up to the summary's, their times rise, and their latencies are the
// frontend's ack delay.
func TestTimeline(t *testing.T) {
	s := newFakeFrontend(t, func(s *fakeFrontend) { s.ackDelay = 20 * time.Millisecond })
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Rate, cfg.Duration, cfg.Drain, cfg.FrameReadings = 3, 100, 500*time.Millisecond, 5*time.Second, 2
	f, _ := startFleet(t, cfg)
	var (
		buf lockedBuffer
		err error
		wg  sync.WaitGroup
	)
	wg.Go(func() { err = f.Timeline(&buf, 100*time.Millisecond) })
	waitDone(t, f, 10*time.Second)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	readings := checkDeliveredTimed(t, f, s, 50).Generated // 150, less a late start's slots
	sum := f.Summary()

	var (
		acked, sent uint64
		lastT       float64
		points      []TimelinePoint
	)
	for i, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var p TimelinePoint
		if err := json.Unmarshal([]byte(l), &p); err != nil {
			t.Fatalf("line %d %q: %v", i+1, l, err)
		}
		if p.T < lastT || p.Seconds < 0 {
			t.Errorf("line %d: %+v after t=%v", i+1, p, lastT)
		}
		if p.Acked > 0 && (p.AckP50Ms < 20 || p.AckP99Ms < p.AckP50Ms || p.AckedPerSecond <= 0) {
			t.Errorf("line %d: %d acked with p50 %v ms, p99 %v ms, %v/s; want p50 >= the 20 ms ack delay",
				i+1, p.Acked, p.AckP50Ms, p.AckP99Ms, p.AckedPerSecond)
		}
		acked += p.Acked
		sent += p.Sent
		lastT = p.T
		points = append(points, p)
	}
	// The readings in frames of 2 (the last of each device's alone when a frame went early).
	if sum.FramesSent < readings/2 || sum.FramesSent > sum.Sent || sum.BytesSent < sum.FramesSent*10 {
		t.Errorf("summary: %d frames, %d bytes sent for %d readings", sum.FramesSent, sum.BytesSent, sum.Sent)
	}
	if acked != sum.Acked || sent != sum.Sent || sum.Acked != readings {
		t.Errorf("timeline adds up to %d acked, %d sent; summary %d acked, %d sent (want %d)", acked, sent, sum.Acked, sum.Sent, readings)
	}
	if len(points) < 5 || points[len(points)-1].Connected != 0 || lastT < sum.Seconds-0.001 {
		t.Errorf("%d lines, last %+v; summary seconds %v", len(points), points[len(points)-1], sum.Seconds)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestStartWait checks Start and Wait, and that a fleet runs once.
func TestStartWait(t *testing.T) {
	s := newFakeFrontend(t, nil)
	cfg := testConfig(s.url())
	cfg.Devices, cfg.Readings = 2, 10
	f, err := Start(context.Background(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(context.Background()); err == nil {
		t.Error("Run of a started fleet succeeded")
	}
	if sum := f.Wait(); sum.Acked != 20 || sum.DevicesDone != 2 {
		t.Errorf("summary: %+v", sum)
	}
	if _, err := Start(context.Background(), Config{}, nil); err == nil {
		t.Error("Start with an empty config succeeded")
	}
}
