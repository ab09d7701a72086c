package sim

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/frontend"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// The tests of this file check that simulated devices keep the device
// side's contract of docs/ingest.md: against real frontends (in-process,
// each with its real queue; no router: a frontend acks once its own queue
// has the frame), and against the fake one where a real frontend cannot be
// made to answer the same way every time.

// realFrontend is a frontend of a test, restartable on its address.
type realFrontend struct {
	t      *testing.T
	cfg    frontend.Config
	f      *frontend.Frontend
	cancel context.CancelFunc
	done   chan error
}

func newRealFrontend(t *testing.T, registry string, mutate func(*frontend.Config)) *realFrontend {
	t.Helper()
	key, err := clusterlink.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cfg := frontend.DefaultConfig()
	cfg.Listen, cfg.ID = "127.0.0.1:0", fmt.Sprintf("fe-%d", time.Now().UnixNano())
	cfg.QueueDir, cfg.Registry = filepath.Join(t.TempDir(), "queue"), registry
	cfg.Routers = []string{"tcp://" + freeAddr(t)} // nobody: acks do not wait for a router
	cfg.Links = clusterlink.Config{Keys: []clusterlink.Key{key}}
	cfg.Admission.DelayTarget = 0
	if mutate != nil {
		mutate(&cfg)
	}
	rf := &realFrontend{t: t, cfg: cfg}
	rf.start()
	t.Cleanup(rf.stop)
	return rf
}

func (rf *realFrontend) start() {
	rf.t.Helper()
	f, err := frontend.New(rf.cfg, nil, nil)
	if err != nil {
		rf.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rf.f, rf.cancel, rf.done = f, cancel, make(chan error, 1)
	go func() { rf.done <- f.Run(ctx) }()
	waitFor(rf.t, 10*time.Second, "the frontend serving", func() bool { return serving(f) })
	rf.cfg.Listen = f.Addr().String() // a restart takes the same address
}

// serving reports whether f takes devices. These frontends have no router
// (they ack once their own queue holds a frame), so they never report
// ready: a serving one says that no router has answered yet.
func serving(f *frontend.Frontend) bool {
	err := f.Ready()
	return err == nil || strings.Contains(err.Error(), "no router has answered yet")
}

func (rf *realFrontend) stop() {
	if rf.cancel == nil {
		return
	}
	rf.cancel()
	if err := <-rf.done; err != nil {
		rf.t.Errorf("frontend: %v", err)
	}
	rf.cancel = nil
}

func (rf *realFrontend) url(scheme string) string { return scheme + "://" + rf.cfg.Listen }

func freeAddr(t *testing.T) string { return testenv.FreeAddr(t) }

// TestResumesTLSSessionsAcrossARestart runs devices over wss:// through two
// frontend restarts: with the frontend's ticket key file every device
// resumes its session after the first; once the frontend has per-process
// keys, every one needs a full handshake. Every reading is acked.
func TestResumesTLSSessionsAcrossARestart(t *testing.T) {
	const devices = 6
	ca := tlstest.NewCA(t, "sim test CA")
	dir := t.TempDir()
	cert, key := ca.Server(t, "edge").Write(t, dir, "server")
	caFile := ca.WriteCA(t, dir, "ca.pem")
	tickets := filepath.Join(dir, "tickets")
	k, _ := clusterlink.GenerateKey()
	if err := clusterlink.WriteKeyFile(tickets, k); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	cfg.Devices, cfg.Rate, cfg.FrameReadings = devices, 50, 5
	reg := filepath.Join(dir, "registry.json")
	if err := WriteRegistry(reg, cfg); err != nil {
		t.Fatal(err)
	}
	fe := newRealFrontend(t, reg, func(c *frontend.Config) {
		c.TLS.CertFile, c.TLS.KeyFile, c.TLS.TicketKeyFile = cert, key, tickets
		c.LameDuck = 0
	})
	cfg.URLs, cfg.TLSCAFile = []string{fe.url("wss")}, caFile
	f, cancel := startFleet(t, cfg)
	acked := func() uint64 { return f.Stats().Acked }
	waitFor(t, 10*time.Second, "every device connected and acked", func() bool {
		st := f.Stats()
		return st.Connected == devices && st.Acked > 100
	})

	restart := func(withTickets bool) {
		t.Helper()
		before, connects := acked(), f.Stats().Connects
		fe.stop()
		if !withTickets {
			fe.cfg.TLS.TicketKeyFile = ""
		}
		fe.start()
		waitFor(t, 15*time.Second, "every device back and acked", func() bool {
			st := f.Stats()
			return st.Connects >= connects+devices && st.Connected == devices && st.Acked > before+100
		})
	}
	restart(true)
	if st := f.Stats(); st.TLSResumed != devices || st.TLSFull != devices {
		t.Fatalf("after a restart with the ticket key file: %d resumed, %d full handshakes; want %d resumed (the first connections: %d full)",
			st.TLSResumed, st.TLSFull, devices, devices)
	}
	restart(false)
	if st := f.Stats(); st.TLSResumed != devices || st.TLSFull != 2*devices {
		t.Fatalf("after a restart with per-process keys: %d resumed, %d full; want no more resumed, %d more full",
			st.TLSResumed, st.TLSFull, devices)
	}
	cancel()
	<-f.Done()
}

// TestLameDuckSendsDevicesElsewhere stops one of two frontends with a lame
// duck: its devices are closed with 1012 and reconnect to the other at once
// (no backoff), and nothing they took is lost.
func TestLameDuckSendsDevicesElsewhere(t *testing.T) {
	const devices = 20
	cfg := testConfig()
	cfg.Devices, cfg.Rate, cfg.FrameReadings, cfg.Readings = devices, 100, 5, 500
	// A backoff would show: a device that backed off would wait up to 30 s.
	cfg.BackoffMin, cfg.BackoffMax = 30*time.Second, time.Minute
	reg := filepath.Join(t.TempDir(), "registry.json")
	if err := WriteRegistry(reg, cfg); err != nil {
		t.Fatal(err)
	}
	lame := func(c *frontend.Config) { c.LameDuck = time.Second }
	a, b := newRealFrontend(t, reg, lame), newRealFrontend(t, reg, lame)
	cfg.URLs = []string{a.url("ws"), b.url("ws")}
	f, _ := startFleet(t, cfg)
	waitFor(t, 10*time.Second, "every device connected", func() bool { return f.Stats().Connected == devices })
	a.stop() // returns once its lame duck has closed every device
	waitFor(t, 5*time.Second, "every device connected again, without backing off", func() bool {
		return f.Stats().Connected == devices
	})
	st := f.Stats()
	moved := st.Disconnects[reasonServiceRestart]
	if moved == 0 {
		t.Fatalf("no device was closed with 1012 (disconnects %v): did none connect to the stopped frontend?", st.Disconnects)
	}
	if st.ConnectFailures["refused"] > 2 {
		// A device picks another frontend than the one that closed it.
		t.Errorf("connect failures %v: devices went back to the stopped frontend", st.ConnectFailures)
	}
	waitDone(t, f, 30*time.Second)
	if st := f.Stats(); st.Acked != devices*500 {
		t.Fatalf("acked %d of %d readings", st.Acked, devices*500)
	}
	t.Logf("%d devices moved by the lame duck; disconnects %v", moved, st.Disconnects)
}

// TestRetryAfterGoesBackOnce: a frontend that refuses with a Retry-After holds the device's
// place in line (the accept rate), so the device comes back to it after that time; refused
// there again (a full frontend), it tries another. Devices that never tried the refusing
// frontend are not sent to it.
func TestRetryAfterGoesBackOnce(t *testing.T) {
	busy := newFakeFrontend(t, func(s *fakeFrontend) { s.refuse, s.retryAfter = 503, "1" })
	good := newFakeFrontend(t, nil)
	cfg := testConfig(busy.url(), good.url())
	cfg.Devices, cfg.Readings = 20, 5
	f, _ := startFleet(t, cfg)
	waitDone(t, f, 20*time.Second)
	checkDelivered(t, f, good, cfg.Readings)
	busy.mu.Lock()
	defer busy.mu.Unlock()
	if len(busy.attempts) == 0 {
		t.Fatal("no device tried the busy frontend (each picks one of two at random)")
	}
	for id, at := range busy.attempts {
		if len(at) != 2 {
			t.Errorf("%s: %d attempts at the frontend that told it to come back, want 2 (back once, then another)", id, len(at))
			continue
		}
		if gap := at[1].Sub(at[0]); gap < time.Second {
			t.Errorf("%s: came back after %v, before its Retry-After of 1 s", id, gap)
		}
	}
}

// TestLongLineAsksAnotherFrontend: a place in line more than askElsewhereAfter away, at
// a frontend busy with its own devices while another stands idle (a restarted one, after a
// kill: bench-conns.sh stampede found a third of a herd waiting a minute at the survivor), is a
// reason to ask one other frontend at once. The devices are all in within a fraction of the 30 s
// they were told, and none asked the busy frontend twice.
func TestLongLineAsksAnotherFrontend(t *testing.T) {
	busy := newFakeFrontend(t, func(s *fakeFrontend) { s.refuse, s.retryAfter = 503, "30" })
	idle := newFakeFrontend(t, nil)
	cfg := testConfig(busy.url(), idle.url())
	cfg.Devices, cfg.Readings = 20, 3
	f, _ := startFleet(t, cfg)
	waitDone(t, f, 15*time.Second)
	checkDelivered(t, f, idle, cfg.Readings)
	busy.mu.Lock()
	defer busy.mu.Unlock()
	if len(busy.attempts) == 0 {
		t.Fatal("no device tried the busy frontend (each picks one of two at random)")
	}
	for id, at := range busy.attempts {
		if len(at) != 1 {
			t.Errorf("%s: %d attempts at the frontend with the long line, want 1", id, len(at))
		}
	}
}

// TestLongLinesTakeTheFirstPlace: told to wait by both frontends, a device goes back to the
// place that comes first, which that frontend holds for it: here A's 6 s (more than
// askElsewhereAfter, so they ask B) before B's 30 s, whichever they tried first.
func TestLongLinesTakeTheFirstPlace(t *testing.T) {
	a := newFakeFrontend(t, func(s *fakeFrontend) { s.refuse, s.retryAfter, s.refuseFirst = 503, "6", true })
	b := newFakeFrontend(t, func(s *fakeFrontend) { s.refuse, s.retryAfter = 503, "30" })
	cfg := testConfig(a.url(), b.url())
	cfg.Devices, cfg.Readings = 20, 3
	f, _ := startFleet(t, cfg)
	waitDone(t, f, 20*time.Second)
	checkDelivered(t, f, a, cfg.Readings)
	a.mu.Lock()
	defer a.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(a.attempts) != cfg.Devices {
		t.Fatalf("%d devices tried A, want all %d", len(a.attempts), cfg.Devices)
	}
	for id, at := range a.attempts {
		if len(at) != 2 {
			t.Errorf("%s: %d attempts at A, want 2 (told its place, then in)", id, len(at))
			continue
		}
		if gap := at[1].Sub(at[0]); gap < 6*time.Second {
			t.Errorf("%s: back at A after %v, before its place (6 s)", id, gap)
		}
		if n := len(b.attempts[id]); n > 1 {
			t.Errorf("%s: %d attempts at B, want at most 1 (asked once)", id, n)
		}
	}
}
