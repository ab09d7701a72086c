package alerts

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/router"
	"github.com/drover-telemetry/drover/telemetry"
)

var testLinks = func() clusterlink.Config {
	k, err := clusterlink.GenerateKey()
	if err != nil {
		panic(err)
	}
	return clusterlink.Config{Keys: []clusterlink.Key{k}}
}()

func testLogger(name string) *slog.Logger {
	v := os.Getenv("DROVER_TEST_LOG")
	if v == "" {
		return nil
	}
	lvl := slog.LevelInfo
	if v == "debug" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl})).With("test_component", name)
}

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

// pipeline is a real router fed by a test frontend (a queue and a
// forward.Drainer, as a frontend drains), for an engine to subscribe to.
type pipeline struct {
	t      testing.TB
	router *router.Router
	q      *queue.Queue
	stop   []func()
}

func startPipeline(t testing.TB, devices []registry.Device) *pipeline {
	t.Helper()
	dir := t.TempDir()
	regPath := filepath.Join(dir, "registry.json")
	if err := registry.Write(regPath, devices); err != nil {
		t.Fatal(err)
	}
	rc := router.DefaultConfig()
	rc.Listen, rc.LivePub, rc.StoreListen = "tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
	rc.QueueDir, rc.ID, rc.Links = filepath.Join(dir, "router"), "router-a", testLinks
	rc.Registry, rc.Subscribers = regPath, []string{"alerts"}
	r, err := router.New(rc, testLogger("router"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	p := &pipeline{t: t, router: r}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	p.stop = append(p.stop, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
	})
	waitFor(t, 10*time.Second, "router ready", func() bool { return r.Ready() == nil })
	q, err := queue.Open(filepath.Join(dir, "frontend"), queue.Options{Name: "frontend", MaxBytes: -1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.q = q
	d, err := forward.NewDrainer(forward.DrainerConfig{Sender: "fe-1", Routers: []string{r.Addr()}, MaxBatchBytes: 64 << 10,
		MaxInflight: 4, AckTimeout: 2 * time.Second, Heartbeat: 50 * time.Millisecond, DownAfter: time.Second, Links: testLinks},
		q, testLogger("drainer"), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithCancel(context.Background())
	ddone := make(chan error, 1)
	go func() { ddone <- d.Run(dctx) }()
	p.stop = append(p.stop, func() {
		dcancel()
		if err := <-ddone; err != nil {
			t.Errorf("drainer: %v", err)
		}
		q.Close()
	})
	t.Cleanup(p.close)
	return p
}

func (p *pipeline) close() {
	for i := len(p.stop) - 1; i >= 0; i-- {
		p.stop[i]()
	}
	p.stop = nil
}

// send appends records as frontend entries of up to 20 records.
func (p *pipeline) send(recs []*telemetry.Record) {
	p.t.Helper()
	for len(recs) > 0 {
		n := min(20, len(recs))
		b, err := proto.Marshal(&telemetry.Batch{Records: recs[:n]})
		if err != nil {
			p.t.Fatal(err)
		}
		if _, err := p.q.Append(context.Background(), b); err != nil {
			p.t.Fatal(err)
		}
		recs = recs[n:]
	}
}

// engine is an Engine run in a goroutine of the test.
type engine struct {
	*Engine
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func startEngine(t testing.TB, cfg Config) *engine {
	t.Helper()
	reg := prometheus.NewRegistry()
	e, err := New(cfg, testLogger("alerts"), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	en := &engine{Engine: e, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { en.done <- e.Run(ctx) }()
	t.Cleanup(func() { en.stop(t) })
	waitFor(t, 20*time.Second, "engine ready", func() bool {
		select {
		case err := <-en.done:
			en.done <- err
			t.Fatalf("engine stopped: %v", err)
		default:
		}
		return e.Ready() == nil
	})
	return en
}

func (en *engine) stop(t testing.TB) {
	en.once.Do(func() {
		en.cancel()
		select {
		case err := <-en.done:
			if err != nil {
				t.Errorf("engine Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("engine did not stop")
		}
	})
}

func testEngineConfig(t testing.TB, dir string, routers []string, rulesFile string) Config {
	cfg := DefaultConfig()
	cfg.Routers, cfg.DataDir, cfg.RulesFile, cfg.Links = routers, dir, rulesFile, testLinks
	cfg.AlertPub = "tcp://127.0.0.1:0"
	cfg.TickInterval, cfg.SnapshotInterval = 100*time.Millisecond, 300*time.Millisecond
	cfg.WebhookMaxBackoff = 300 * time.Millisecond
	return cfg
}

func writeRules(t testing.TB, path string, rs *eval.RuleSet) {
	t.Helper()
	b, err := json.Marshal(rs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// receiver is a webhook receiver: it checks signatures and keeps every
// event it is given, in order; failing makes it answer 503.
type receiver struct {
	t      testing.TB
	srv    *httptest.Server
	secret string
	mu     sync.Mutex
	events []eval.Event
	posts  int
	fail   bool
	bad    int
}

func startReceiver(t testing.TB, secret string) *receiver {
	rv := &receiver{t: t, secret: secret}
	rv.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rv.mu.Lock()
		defer rv.mu.Unlock()
		if rv.fail {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		want := Sign(rv.secret, r.Header.Get(HeaderTimestamp), body)
		if !hmac.Equal([]byte(want), []byte(r.Header.Get(HeaderSignature))) {
			rv.bad++
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		var p WebhookPayload
		if err := json.Unmarshal(body, &p); err != nil {
			rv.bad++
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		rv.posts++
		rv.events = append(rv.events, p.Events...)
	}))
	t.Cleanup(rv.srv.Close)
	return rv
}

func (rv *receiver) got() []eval.Event {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return append([]eval.Event(nil), rv.events...)
}

func (rv *receiver) setFail(b bool) {
	rv.mu.Lock()
	rv.fail = b
	rv.mu.Unlock()
}

// counter returns the value of a counter or gauge in reg, summed over the
// series whose labels include the name="value" pairs given.
func counter(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			} else if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			}
		}
	}
	return sum
}
