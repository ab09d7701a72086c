package daemon

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// startOps runs o until the test ends and returns its base URL.
func startOps(t *testing.T, o *Ops) (base string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- o.Run(ctx) }()
	select {
	case <-o.Ready():
	case err := <-errc:
		cancel()
		t.Fatalf("ops Run: %v", err)
	case <-time.After(5 * time.Second):
		cancel()
		t.Fatal("ops server not listening after 5s")
	}
	stopped := false
	var runErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			runErr = recv(t, errc, 10*time.Second, "ops Run to return")
		}
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return "http://" + o.Addr(), stop
}

func newOps(t *testing.T, cfg OpsConfig, reg *prometheus.Registry) *Ops {
	t.Helper()
	o, err := NewOps(cfg, reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

func TestOpsServesHealthMetricsAndReadiness(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_test_things_total", Help: "things"})
	reg.MustRegister(c)
	c.Add(3)

	o := newOps(t, OpsConfig{Listen: "127.0.0.1:0"}, reg)
	if o.Addr() != "" {
		t.Fatalf("Addr before listen = %q, want empty", o.Addr())
	}
	var queueErr atomic.Pointer[error]
	o.AddReadyCheck("always", func() error { return nil })
	o.AddReadyCheck("queue", func() error {
		if p := queueErr.Load(); p != nil {
			return *p
		}
		return nil
	})
	base, stop := startOps(t, o)
	if _, port, _ := net.SplitHostPort(o.Addr()); port == "0" || port == "" {
		t.Fatalf("Addr after listen = %q, want a real port", o.Addr())
	}

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q, want 200 ok", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "drover_test_things_total 3") {
		t.Errorf("/metrics = %d, lacks the registered counter:\n%s", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 || body != "ok\n" {
		t.Errorf("/readyz with passing checks = %d %q, want 200 ok", code, body)
	}

	e := errors.New("queue dir not writable")
	queueErr.Store(&e)
	o.AddReadyCheck("router", func() error { return errors.New("no router acked yet") })
	code, body := get(t, base+"/readyz")
	if code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with failing checks = %d, want 503", code)
	}
	for _, want := range []string{"queue: queue dir not writable", "router: no router acked yet"} {
		if !strings.Contains(body, want) {
			t.Errorf("/readyz body lacks %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "always") {
		t.Errorf("/readyz body names a passing check:\n%s", body)
	}

	if err := stop(); err != nil {
		t.Fatalf("Run after cancel = %v, want nil", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("ops server still answers after its context ended")
	}
}

func TestOpsListenThenRun(t *testing.T) {
	o := newOps(t, OpsConfig{Listen: "127.0.0.1:0"}, nil)
	if err := o.Listen(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-o.Ready():
	default:
		t.Fatal("Ready not closed after Listen")
	}
	addr := o.Addr()
	if err := o.Listen(); err == nil {
		t.Error("second Listen succeeded")
	}
	base, _ := startOps(t, o)
	if base != "http://"+addr {
		t.Errorf("Run moved from %s to %s", addr, base)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
}

func TestOpsListenErrorNamesAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	o := newOps(t, OpsConfig{Listen: ln.Addr().String()}, nil)
	err = o.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Errorf("Run on a taken port = %v, want an error naming %s", err, ln.Addr())
	}
}
