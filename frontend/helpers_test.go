package frontend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func deviceID(i int) string { return "dev-" + strconv.Itoa(i) }
func tokenOf(i int) string  { return "token-" + strconv.Itoa(i) }

// writeRegistry writes a registry of n devices dev-I with token token-I.
func writeRegistry(t testing.TB, dir string, n int) string {
	t.Helper()
	devs := make([]registry.Device, n)
	for i := range devs {
		devs[i] = registry.Device{ID: deviceID(i), TokenSHA256: registry.HashToken(tokenOf(i))}
	}
	path := filepath.Join(dir, "registry.json")
	if err := registry.Write(path, devs); err != nil {
		t.Fatal(err)
	}
	return path
}

// fakeDrainer stands in for forward's drainer: it never pops, so the queue
// keeps what was stored. When stopped it checks that the queue is still
// open (the frontend must stop the drainer before closing the queue).
type fakeDrainer struct {
	q          *queue.Queue
	stoppedOK  *atomic.Bool
	stoppedBad *atomic.Bool
}

func (d fakeDrainer) Run(ctx context.Context) error {
	<-ctx.Done()
	if _, err := d.q.TryRead(1); errors.Is(err, queue.ErrClosed) {
		d.stoppedBad.Store(true)
	} else {
		d.stoppedOK.Store(true)
	}
	return nil
}

// env is a frontend running in the test, on 127.0.0.1:0, with a real queue
// in a temporary directory and a fake drainer.
type env struct {
	f        *Frontend
	cfg      Config
	reg      *prometheus.Registry
	cancel   context.CancelFunc
	done     chan error
	url      string
	drainOK  atomic.Bool
	drainBad atomic.Bool
	stopped  bool
}

// testConfig is a valid config for tests: loopback, port 0, a registry of
// devices devices, the queue and registry in a fresh temporary directory.
func testConfig(t testing.TB, devices int) Config {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.QueueDir = filepath.Join(dir, "queue")
	cfg.Registry = writeRegistry(t, dir, devices)
	cfg.ID = "frontend-test"
	cfg.ShutdownGrace = 5 * time.Second
	cfg.WriteTimeout = 2 * time.Second
	cfg.Links = testLinks
	// The stop closes at once (1001), as the tests of shutdown expect;
	// lameduck_test.go tests the lame duck. A fixed accept rate: the
	// governor follows the machine's load, which a test does not control
	// (admission_test.go tests it).
	cfg.LameDuck = 0
	cfg.Admission.DelayTarget = 0
	return cfg
}

// testLinks is a cluster key of the package's tests (their drainer is a
// fake, so it secures nothing here; the config needs one).
var testLinks = func() clusterlink.Config {
	k, err := clusterlink.GenerateKey()
	if err != nil {
		panic(err)
	}
	return clusterlink.Config{Keys: []clusterlink.Key{k}}
}()

// start runs a frontend with cfg and waits until it is ready.
func start(t testing.TB, cfg Config) *env {
	t.Helper()
	e := &env{cfg: cfg, reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	f, err := New(cfg, nil, e.reg)
	if err != nil {
		t.Fatal(err)
	}
	f.newDrainer = func(q *queue.Queue) (drainer, error) {
		return fakeDrainer{q: q, stoppedOK: &e.drainOK, stoppedBad: &e.drainBad}, nil
	}
	e.f = f
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	go func() { e.done <- f.Run(ctx) }()
	waitFor(t, 10*time.Second, "frontend ready", func() bool {
		select {
		case err := <-e.done:
			t.Fatalf("Run returned early: %v", err)
		default:
		}
		return f.Ready() == nil
	})
	e.url = "ws://" + f.Addr().String() + IngestPath
	t.Cleanup(func() { e.stop(t) })
	return e
}

// startWith runs a frontend with the test config changed by mutate.
func startWith(t testing.TB, devices int, mutate func(*Config)) *env {
	t.Helper()
	cfg := testConfig(t, devices)
	if mutate != nil {
		mutate(&cfg)
	}
	return start(t, cfg)
}

// stop stops the frontend and returns Run's result and how long it took.
func (e *env) stop(t testing.TB) (time.Duration, error) {
	t.Helper()
	if e.stopped {
		return 0, nil
	}
	e.stopped = true
	begin := time.Now()
	e.cancel()
	select {
	case err := <-e.done:
		if e.drainBad.Load() {
			t.Error("the drainer was stopped after the queue was closed")
		}
		return time.Since(begin), err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return 30 s after its context ended")
		return 0, nil
	}
}

// dial connects device i, with headers (byQuery false) or query parameters.
func (e *env) dial(i int, token string, byQuery bool) (*websocket.Conn, *http.Response, error) {
	u := e.url
	h := http.Header{}
	if byQuery {
		u += "?" + url.Values{QueryDevice: {deviceID(i)}, QueryToken: {token}}.Encode()
	} else {
		h.Set(HeaderDevice, deviceID(i))
		h.Set("Authorization", "Bearer "+token)
	}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	return d.Dial(u, h)
}

// connect dials device i with its good token and fails the test otherwise.
func (e *env) connect(t testing.TB, i int, byQuery bool) *websocket.Conn {
	t.Helper()
	ws, resp, err := e.dial(i, tokenOf(i), byQuery)
	if err != nil {
		body := ""
		if resp != nil {
			b, _ := io.ReadAll(resp.Body)
			body = fmt.Sprintf(" (HTTP %d: %s)", resp.StatusCode, b)
		}
		t.Fatalf("dial %s: %v%s", deviceID(i), err, body)
	}
	t.Cleanup(func() { ws.Close() })
	return ws
}

// metric reads a counter or gauge, with label values if it is a vector.
func (e *env) metric(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// gathered returns the value of the series of name whose label has value
// (label "": the metric has no labels), from the frontend's registry; of a
// histogram, its count.
func (e *env) gathered(t testing.TB, name, label, value string) float64 {
	t.Helper()
	fams, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || (l.GetName() == label && l.GetValue() == value)
			}
			if !match {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.GetCounter().GetValue()
			case m.Gauge != nil:
				return m.GetGauge().GetValue()
			case m.Histogram != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

func (e *env) refusals(reason string) float64 {
	return testutil.ToFloat64(e.f.m.refusals.WithLabelValues(reason))
}

// readings returns readings with seqs, taken at tm.
func readings(tm time.Time, seqs ...uint64) *telemetry.Uplink {
	u := &telemetry.Uplink{}
	for _, s := range seqs {
		r := &telemetry.Reading{Seq: s, TimeMs: tm.UnixMilli()}
		speed := float32(s % 100)
		r.SpeedKmh = &speed
		u.Readings = append(u.Readings, r)
	}
	return u
}

// seqRange returns from..to inclusive.
func seqRange(from, to uint64) []uint64 {
	var s []uint64
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

// send writes a frame in the given encoding.
func send(t testing.TB, ws *websocket.Conn, text bool, u *telemetry.Uplink) {
	t.Helper()
	b, err := telemetry.EncodeUplink(u, text)
	if err != nil {
		t.Fatal(err)
	}
	typ := websocket.BinaryMessage
	if text {
		typ = websocket.TextMessage
	}
	if err := ws.WriteMessage(typ, b); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// next reads the server's next message: an ack's seq, or the close error.
func next(t testing.TB, ws *websocket.Conn, text bool) (uint64, *websocket.CloseError) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	typ, b, err := ws.ReadMessage()
	if err != nil {
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return 0, ce
		}
		t.Fatalf("read: %v", err)
	}
	if (typ == websocket.TextMessage) != text {
		t.Fatalf("answer of message type %d to a text=%v frame", typ, text)
	}
	d, err := telemetry.DecodeDownlink(b, text)
	if err != nil {
		t.Fatal(err)
	}
	ack := d.GetAck()
	if ack == nil {
		t.Fatalf("downlink %v is not an ack", d)
	}
	return ack.GetSeq(), nil
}

// ack sends a frame and expects an ack of want.
func ack(t testing.TB, ws *websocket.Conn, text bool, u *telemetry.Uplink, want uint64) {
	t.Helper()
	send(t, ws, text, u)
	got, ce := next(t, ws, text)
	if ce != nil {
		t.Fatalf("frame closed with %d %q, want ack %d", ce.Code, ce.Text, want)
	}
	if got != want {
		t.Fatalf("ack %d, want %d", got, want)
	}
}

// expectClose reads until the server's close and checks its code.
func expectClose(t testing.TB, ws *websocket.Conn, code int) string {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("read: %v, want close %d", err, code)
		}
		if ce.Code != code {
			t.Fatalf("closed with %d %q, want %d", ce.Code, ce.Text, code)
		}
		return ce.Text
	}
}

// stored is what a queue holds.
type stored struct {
	entries int
	records []*telemetry.Record
}

// seqs returns the seqs stored for device, in order.
func (s stored) seqs(device string) []uint64 {
	var out []uint64
	for _, r := range s.records {
		if r.GetDeviceId() == device {
			out = append(out, r.GetReading().GetSeq())
		}
	}
	return out
}

// readQueue opens a stopped frontend's queue and reads everything in it.
func readQueue(t testing.TB, cfg Config) stored {
	t.Helper()
	q, err := queue.Open(cfg.QueueDir, queue.Options{Name: "check", MaxRecordBytes: queueRecordBytes(cfg)}, nil, nil)
	if err != nil {
		t.Fatalf("reopen queue: %v", err)
	}
	defer q.Close()
	var s stored
	for {
		b, err := q.TryRead(1 << 20)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Entries) == 0 {
			return s
		}
		for _, e := range b.Entries {
			var batch telemetry.Batch
			if err := proto.Unmarshal(e.Data, &batch); err != nil {
				t.Fatalf("entry %d: %v", e.Seq, err)
			}
			s.entries++
			s.records = append(s.records, batch.GetRecords()...)
		}
	}
}
