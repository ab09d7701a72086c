package browsertest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/livefeed"
	"github.com/drover-telemetry/drover/telemetry"
)

// devToken is the -dev-token of the test feeds: it sees every fleet.
const devToken = "dev-token-for-tests"

// droverBin is the drover binary, built once by TestMain.
var droverBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "drover-browsertest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	droverBin = filepath.Join(dir, "drover")
	// Built in drover's own module, with its go.mod: the binary users get.
	root, err := testenv.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-o", droverBin, "./cmd/drover")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build drover:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// chromedpOptions returns chromedp's allocator options for the Chromium at
// path, started with testenv.ChromiumArgs and a fresh profile in
// userDataDir, in a window of width × height.
func chromedpOptions(path, userDataDir string, width, height int) []chromedp.ExecAllocatorOption {
	opts := []chromedp.ExecAllocatorOption{chromedp.ExecPath(path), chromedp.WindowSize(width, height)}
	for _, a := range testenv.ChromiumArgs(userDataDir) {
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if hasValue {
			opts = append(opts, chromedp.Flag(name, value))
		} else {
			opts = append(opts, chromedp.Flag(name, true))
		}
	}
	return opts
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr(t testing.TB) string { return testenv.FreeAddr(t) }

// noLeaks fails the test if goroutines of the livefeed outlive it. Call it
// first, so that its cleanup runs after every other one. zmq4's PUB writer
// goroutine (pubMWriter.run) is not counted: zmq4 v0.17.0 never stops it,
// and only the tests' publishers are PUB sockets.
func noLeaks(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			var leaked []string
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "pubMWriter).run") || strings.Contains(g, "testing.tRunner") {
					continue
				}
				if strings.Contains(g, "drover/livefeed.") || strings.Contains(g, "go-zeromq/zmq4") ||
					strings.Contains(g, "gorilla/websocket") {
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

// publisher is a test router's live. lane: a real zmq4 PUB on loopback.
type publisher struct {
	t    testing.TB
	name string
	sock zmq4.Socket
	ep   string

	mu  sync.Mutex
	seq uint64
}

func newPublisher(t testing.TB, name string) *publisher {
	t.Helper()
	sock := zmq4.NewPub(context.Background(), zmq4.WithID(zmq4.SocketIdentity(name)), zmq4.WithTimeout(5*time.Second),
		zmq4.WithLogger(slog.NewLogLogger(slog.DiscardHandler, slog.LevelWarn)))
	if err := sock.Listen("tcp://127.0.0.1:0"); err != nil {
		t.Fatalf("publisher listen: %v", err)
	}
	p := &publisher{t: t, name: name, sock: sock, ep: "tcp://" + sock.Addr().String()}
	t.Cleanup(func() { _ = sock.Close() })
	return p
}

// publish sends one batch of records with the next sequence number.
func (p *publisher) publish(recs ...*telemetry.EnrichedRecord) {
	p.mu.Lock()
	p.seq++
	seq := p.seq
	p.mu.Unlock()
	p.publishSeq(seq, recs...)
}

func (p *publisher) publishSeq(seq uint64, recs ...*telemetry.EnrichedRecord) {
	b, err := proto.Marshal(&telemetry.PublishBatch{Router: p.name, Seq: seq, Records: recs})
	if err != nil {
		p.t.Errorf("marshal batch: %v", err)
		return
	}
	if err := p.sock.Send(zmq4.NewMsgFrom([]byte(livefeed.LiveTopic), b)); err != nil {
		p.t.Errorf("publish: %v", err)
	}
}

// rec builds a record of device in fleet at a position, taken at timeMs.
func rec(device, fleet string, seq uint64, timeMs int64, lat, lon float64) *telemetry.EnrichedRecord {
	r := &telemetry.Reading{Seq: seq, TimeMs: timeMs}
	r.SetPosition(lat, lon)
	speed, heading, ign := float32(42), float32(90), true
	r.SpeedKmh, r.HeadingDeg, r.Ignition = &speed, &heading, &ign
	return &telemetry.EnrichedRecord{
		Record:     &telemetry.Record{DeviceId: device, ReceivedMs: time.Now().UnixMilli(), Reading: r},
		Enrichment: &telemetry.Enrichment{Fleet: fleet, VehicleClass: "truck", Region: "test"},
	}
}

// feed is a livefeed run in a goroutine of the test, through its public
// API only (this is another module).
type feed struct {
	*livefeed.Feed
	reg *prometheus.Registry
}

// startFeed runs a livefeed on a free loopback port subscribed to pubs, with
// the dev token, and returns once every publisher reaches it.
func startFeed(t testing.TB, pubs ...*publisher) *feed {
	t.Helper()
	return startFeedWith(t, nil, pubs...)
}

// startFeedWith is startFeed with the configuration changed by mutate.
func startFeedWith(t testing.TB, mutate func(*livefeed.Config), pubs ...*publisher) *feed {
	t.Helper()
	requireBundle(t)
	cfg := livefeed.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.ID = "livefeed-browsertest"
	cfg.DevToken = devToken
	// The test's publishers are plain zmq4 PUBs: no cluster key.
	cfg.Links = clusterlink.Config{Insecure: true}
	cfg.Routers = nil
	for _, p := range pubs {
		cfg.Routers = append(cfg.Routers, p.ep)
	}
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	f, err := livefeed.New(cfg, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("livefeed Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("livefeed Run did not return within 15 s of the stop")
		}
	})
	rf := &feed{Feed: f, reg: reg}
	waitFor(t, 10*time.Second, "the livefeed to be ready", func() bool { return f.Ready() == nil })
	// A PUB drops what it publishes before the SUB's subscription reaches
	// it: publish empty batches until each publisher's arrive.
	for _, p := range pubs {
		before := rf.metric(t, "drover_livefeed_batches_received_total")
		waitFor(t, 10*time.Second, "the publisher "+p.name+" to reach the livefeed", func() bool {
			p.publishSeq(0)
			time.Sleep(5 * time.Millisecond)
			return rf.metric(t, "drover_livefeed_batches_received_total") > before
		})
	}
	return rf
}

// metric returns the value of the counter or gauge name (summed).
func (f *feed) metric(t testing.TB, name string) float64 {
	t.Helper()
	fams, err := f.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return v
}

// url returns the feed's base URL with scheme ("http" or "ws").
func (f *feed) url(scheme string) string { return scheme + "://" + f.Addr().String() }

// waitVehicles waits until the feed tracks n vehicles.
func (f *feed) waitVehicles(t testing.TB, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%d vehicles tracked", n), func() bool {
		return f.metric(t, "drover_livefeed_vehicles") == float64(n)
	})
}

// proc is a drover process: started with its ops server on a free port,
// ready once /readyz says so, stopped with SIGTERM.
type proc struct {
	t       testing.TB
	cmd     *exec.Cmd
	opsAddr string
	logPath string
	done    chan error
}

// startDrover starts drover with args and waits until it is ready.
// secretFile writes a secret to a file of the test's own and returns its
// path, for a -...-file flag: drover takes no secret on the command line.
func secretFile(t testing.TB, secret string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startDrover(t testing.TB, ctx context.Context, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, opsAddr: freeAddr(t), logPath: filepath.Join(t.TempDir(), "drover.log"), done: make(chan error, 1)}
	logf, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(droverBin, append(append([]string{}, args[0], "-ops-listen", p.opsAddr), args[1:]...)...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("--- drover's log ---\n%s", b)
		}
	})
	waitFor(t, 30*time.Second, "drover ready", func() bool {
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("drover exited before it was ready: %v", err)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.opsAddr+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// stop sends SIGTERM and expects a clean exit within timeout.
func (p *proc) stop(timeout time.Duration) {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		var ee *exec.ExitError
		if errors.As(err, &ee) || err != nil {
			p.t.Fatalf("drover exited with %v after SIGTERM", err)
		}
	case <-time.After(timeout):
		p.t.Fatalf("drover did not stop within %v of SIGTERM", timeout)
	}
}
