package registry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/registry"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// The follower against a real control plane: api.Server on SQLite, in this
// process, on a loopback port, stopped and started again on the same
// database and port to play the API going down and coming back.

// apiServer is a running drover api.
type apiServer struct {
	t        testing.TB
	cfg      api.Config
	url      string
	adminKey string
	cancel   context.CancelFunc
	done     chan error
	stopped  sync.Once
}

func freeAddr(t testing.TB) string { return testenv.FreeAddr(t) }

// startAPI starts an api on dir (SQLite) at addr, with a follower key file
// dir/follower-key.
func startAPI(t testing.TB, dir, addr string, mod ...func(*api.Config)) *apiServer {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Listen, cfg.DataDir, cfg.FeedPoll = addr, dir, 20*time.Millisecond
	cfg.FollowerKeyFile = filepath.Join(dir, "follower-key")
	for _, m := range mod {
		m(&cfg)
	}
	srv, err := api.New(cfg, quiet(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &apiServer{t: t, cfg: cfg, url: "http://" + addr, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- srv.Run(ctx) }()
	select {
	case <-srv.Started():
	case err := <-a.done:
		t.Fatalf("api: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("api not started within 30 s")
	}
	key, err := os.ReadFile(filepath.Join(dir, "api-admin-key"))
	if err != nil {
		t.Fatal(err)
	}
	a.adminKey = strings.TrimSpace(string(key))
	t.Cleanup(a.stop)
	return a
}

func (a *apiServer) stop() {
	a.stopped.Do(func() {
		a.cancel()
		select {
		case <-a.done:
		case <-time.After(30 * time.Second):
			a.t.Error("api did not stop within 30 s")
		}
	})
}

// status sends a GET with the admin key and returns the status.
func (a *apiServer) status(path string) int {
	req, _ := http.NewRequest("GET", a.url+path, nil)
	req.Header.Set("Authorization", "Bearer "+a.adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// call sends a request with the admin key and decodes a 2xx answer into out.
func (a *apiServer) call(method, path string, body, out any) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+a.adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		a.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			a.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

// device creates a device in fleet with a token and returns the token.
func (a *apiServer) device(id, fleet string) string {
	a.t.Helper()
	var d struct{ Token string }
	body := map[string]any{"id": id, "issue_token": true}
	if fleet != "" {
		body["fleet"] = fleet
	}
	a.call("POST", "/v1/devices", body, &d)
	return d.Token
}

func quiet(t testing.TB) *slog.Logger {
	if os.Getenv("DROVER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// follower is a running registry follower.
type follower struct {
	t      testing.TB
	s      *registry.Store
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan struct{}
}

func followConfig(url, keyFile, cache string) registry.FollowConfig {
	c := registry.DefaultFollowConfig()
	c.API = apiclient.Config{URL: url, KeyFile: keyFile}
	c.Cache, c.CacheInterval = cache, 50*time.Millisecond
	c.Wait, c.BackoffMin, c.BackoffMax = 5*time.Second, 20*time.Millisecond, 200*time.Millisecond
	return c
}

func startFollower(t testing.TB, cfg registry.FollowConfig) *follower {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := registry.NewFollower(cfg, quiet(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{t: t, s: s, reg: reg, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(f.done); _ = s.Run(ctx) }()
	t.Cleanup(f.stop)
	return f
}

func (f *follower) stop() {
	f.cancel()
	<-f.done
}

func (f *follower) metric(name string, labels ...string) float64 {
	f.t.Helper()
	fams, err := f.reg.Gather()
	if err != nil {
		f.t.Fatal(err)
	}
	var sum float64
	for _, fam := range fams {
		if fam.GetName() != name {
			continue
		}
	next:
		for _, m := range fam.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range m.GetLabel() {
					found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// within polls cond every 10 ms for at most d and reports how long it took.
func within(t testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

func authorized(s *registry.Store, id, token string) error {
	r := s.Current()
	if r == nil {
		return errors.New("no registry")
	}
	_, _, err := r.Authorize(id, token, time.Now())
	return err
}

// TestFollowerFollows: a snapshot, then each kind of change reaches the
// follower well within 2 s of the API call, and subscribers are told which
// devices changed.
func TestFollowerFollows(t *testing.T) {
	dir := t.TempDir()
	a := startAPI(t, dir, freeAddr(t))
	a.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	a.call("POST", "/v1/fleets", map[string]string{"id": "beta"}, nil)
	a.call("POST", "/v1/regions", map[string]string{"id": "north"}, nil)
	tok1 := a.device("t1", "acme")
	f := startFollower(t, followConfig(a.url, filepath.Join(dir, "follower-key"), filepath.Join(t.TempDir(), "cache")))
	within(t, 10*time.Second, "first snapshot", func() bool { return f.s.Ready() == nil })
	if err := authorized(f.s, "t1", tok1); err != nil {
		t.Fatalf("t1 after the snapshot: %v", err)
	}
	var mu sync.Mutex
	var changed []string
	defer f.s.Subscribe(func(u registry.Update) {
		mu.Lock()
		changed = append(changed, u.Changed...)
		mu.Unlock()
	})()

	tok2 := a.device("t2", "acme")
	lag := within(t, 2*time.Second, "a new device", func() bool { return authorized(f.s, "t2", tok2) == nil })
	t.Logf("new device: %v", lag)

	var rot struct{ Token string }
	a.call("POST", "/v1/devices/t1/token/rotate", map[string]any{"overlap_seconds": 600}, &rot)
	within(t, 2*time.Second, "a rotation", func() bool { return authorized(f.s, "t1", rot.Token) == nil })
	if err := authorized(f.s, "t1", tok1); err != nil {
		t.Errorf("the old token during the overlap: %v", err)
	}

	a.call("POST", "/v1/devices/t2/state", map[string]any{"state": "suspended"}, nil)
	within(t, 2*time.Second, "a suspension", func() bool { return errors.Is(authorized(f.s, "t2", tok2), registry.ErrSuspended) })

	a.call("PATCH", "/v1/devices/t1", map[string]any{"fleet": "beta", "region": "north"}, nil)
	within(t, 2*time.Second, "a fleet change", func() bool {
		d, _ := f.s.Current().Lookup("t1")
		return d.Fleet == "beta" && d.Region == "north"
	})

	a.call("DELETE", "/v1/devices/t1/token", nil, nil)
	within(t, 2*time.Second, "a revocation", func() bool {
		return errors.Is(authorized(f.s, "t1", rot.Token), registry.ErrBadToken) && errors.Is(authorized(f.s, "t1", tok1), registry.ErrBadToken)
	})

	a.call("POST", "/v1/devices/t2/state", map[string]any{"state": "decommissioned"}, nil)
	a.call("DELETE", "/v1/devices/t2", nil, nil)
	within(t, 2*time.Second, "a deletion", func() bool {
		_, ok := f.s.Current().Lookup("t2")
		return !ok
	})
	mu.Lock()
	got := strings.Join(changed, ",")
	mu.Unlock()
	for _, want := range []string{"t1", "t2"} {
		if !strings.Contains(got, want) {
			t.Errorf("subscribers were told %q, not %s", got, want)
		}
	}
	if n := f.metric("drover_registry_feed_snapshots_total", "result", "ok"); n != 1 {
		t.Errorf("%v snapshots, want 1 (then only changes)", n)
	}
}

// TestFollowerAPIDown: with the API down, the copy in force stays (devices
// authenticate), failures are counted, and changes made after the API is
// back arrive. A follower started while the API is down serves its cache,
// and resumes from the cache's version when the API is back (no
// snapshot).
func TestFollowerAPIDown(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	a := startAPI(t, dir, addr)
	tok := a.device("d1", "")
	cache := filepath.Join(t.TempDir(), "registry.cache")
	cfg := followConfig(a.url, filepath.Join(dir, "follower-key"), cache)
	f := startFollower(t, cfg)
	within(t, 10*time.Second, "first snapshot", func() bool { return f.s.Ready() == nil })

	a.stop()
	within(t, 5*time.Second, "failures counted", func() bool { return f.metric("drover_registry_feed_errors_total") > 0 })
	if err := authorized(f.s, "d1", tok); err != nil {
		t.Fatalf("with the API down: %v", err)
	}
	a = startAPI(t, dir, addr)
	tok2 := a.device("d2", "")
	within(t, 5*time.Second, "a change after the API came back", func() bool { return authorized(f.s, "d2", tok2) == nil })
	within(t, 5*time.Second, "the cache written", func() bool { return f.metric("drover_registry_cache_writes_total", "result", "ok") > 1 })
	f.stop()
	version := f.s.Current().Version()

	// Restarted while the API is down: the cache serves at once.
	a.stop()
	g := startFollower(t, cfg)
	if err := authorized(g.s, "d2", tok2); err != nil {
		t.Fatalf("from the cache: %v", err)
	}
	if v := g.s.Current().Version(); v != version {
		t.Errorf("the cache holds version %d, the follower stopped at %d", v, version)
	}
	a = startAPI(t, dir, addr)
	tok3 := a.device("d3", "")
	within(t, 5*time.Second, "a change after the restart", func() bool { return authorized(g.s, "d3", tok3) == nil })
	if n := g.metric("drover_registry_feed_snapshots_total", "result", "ok"); n != 0 {
		t.Errorf("%v snapshots after a restart from the cache, want 0 (it resumes from the cached version)", n)
	}
	if n := g.metric("drover_registry_cache_loads_total", "result", "ok"); n != 1 {
		t.Errorf("cache loads ok = %v", n)
	}
}

// TestFollowerResync: a follower further behind than the tombstones the
// API keeps gets 410 and takes a new snapshot, in which the deleted
// device is gone; a follower whose copy is of another database (another
// feed) takes a snapshot of the new one rather than mixing the two.
func TestFollowerResync(t *testing.T) {
	dir, addr := t.TempDir(), freeAddr(t)
	a := startAPI(t, dir, addr)
	tok := a.device("gone", "")
	keep := a.device("kept", "")
	cache := filepath.Join(t.TempDir(), "registry.cache")
	cfg := followConfig(a.url, filepath.Join(dir, "follower-key"), cache)
	f := startFollower(t, cfg)
	within(t, 10*time.Second, "first snapshot", func() bool { return f.s.Ready() == nil })
	f.stop()

	a.call("POST", "/v1/devices/gone/state", map[string]any{"state": "decommissioned"}, nil)
	a.call("DELETE", "/v1/devices/gone", nil, nil)
	a.stop()
	time.Sleep(5 * time.Millisecond) // the tombstone must be older than the 1 ms retention
	a = startAPI(t, dir, addr, func(c *api.Config) { c.TombstoneRetention = time.Millisecond })
	since := f.s.Current().Version()
	within(t, 10*time.Second, "the API pruned the tombstone", func() bool {
		return a.status(fmt.Sprintf("/v1/feed/changes?since=%d", since)) == http.StatusGone
	})

	g := startFollower(t, cfg)
	if err := authorized(g.s, "gone", tok); err != nil {
		t.Fatalf("the cached copy before the API answers: %v", err)
	}
	within(t, 5*time.Second, "the resync", func() bool {
		_, ok := g.s.Current().Lookup("gone")
		return !ok
	})
	if err := authorized(g.s, "kept", keep); err != nil {
		t.Errorf("after the resync: %v", err)
	}
	if n := g.metric("drover_registry_feed_resyncs_total"); n != 1 {
		t.Errorf("resyncs = %v, want 1", n)
	}
	g.stop()

	// Another database behind the same address: its own devices only.
	a.stop()
	other := t.TempDir()
	b := startAPI(t, other, addr)
	tokB := b.device("other-db", "")
	cfgB := cfg
	cfgB.API.KeyFile = filepath.Join(other, "follower-key")
	h := startFollower(t, cfgB)
	within(t, 5*time.Second, "the other database's registry", func() bool { return authorized(h.s, "other-db", tokB) == nil })
	if _, ok := h.s.Current().Lookup("kept"); ok {
		t.Error("a device of the first database is still in force")
	}
}

// cutProxy is a fault the real API cannot be made to produce on demand:
// it forwards to the API and cuts the first n snapshots midway.
func cutProxy(t *testing.T, target string, cuts int) (string, *atomic.Int32) {
	u, _ := url.Parse(target)
	cut := new(atomic.Int32)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if strings.HasPrefix(resp.Request.URL.Path, "/v1/feed/snapshot") && cut.Add(1) <= int32(cuts) {
			resp.Body = &cutBody{rc: resp.Body, left: 300}
		}
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return srv.URL, cut
}

type cutBody struct {
	rc   io.ReadCloser
	left int
}

func (c *cutBody) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	p = p[:min(len(p), c.left)]
	n, err := c.rc.Read(p)
	c.left -= n
	return n, err
}

func (c *cutBody) Close() error { return c.rc.Close() }

// TestFollowerCutSnapshot: a snapshot cut midway is not put in force
// (counted as cut); the next, whole, is.
func TestFollowerCutSnapshot(t *testing.T) {
	dir := t.TempDir()
	a := startAPI(t, dir, freeAddr(t))
	var rows []map[string]any
	for i := range 200 {
		rows = append(rows, map[string]any{"id": fmt.Sprintf("dev-%03d", i)})
	}
	a.call("POST", "/v1/imports/devices?issue_tokens=true", map[string]any{"devices": rows}, nil)
	proxied, cuts := cutProxy(t, a.url, 1)
	f := startFollower(t, followConfig(proxied, filepath.Join(dir, "follower-key"), filepath.Join(t.TempDir(), "cache")))
	within(t, 10*time.Second, "a whole snapshot", func() bool { return f.s.Ready() == nil })
	if cuts.Load() < 2 {
		t.Fatalf("%d snapshots asked", cuts.Load())
	}
	if n := f.s.Current().Len(); n != 200 {
		t.Errorf("%d devices in force, want 200", n)
	}
	if n := f.metric("drover_registry_feed_snapshots_total", "result", "cut"); n != 1 {
		t.Errorf("cut snapshots = %v, want 1", n)
	}
}

// TestFollowerDamagedCache: a damaged cache is refused whole (nothing is
// served from it), set aside, counted, and a fresh snapshot taken.
func TestFollowerDamagedCache(t *testing.T) {
	dir := t.TempDir()
	a := startAPI(t, dir, freeAddr(t))
	tok := a.device("d1", "")
	cache := filepath.Join(t.TempDir(), "registry.cache")
	cfg := followConfig(a.url, filepath.Join(dir, "follower-key"), cache)
	f := startFollower(t, cfg)
	within(t, 10*time.Second, "first snapshot", func() bool { return f.s.Ready() == nil })
	within(t, 5*time.Second, "the cache written", func() bool { return f.metric("drover_registry_cache_writes_total", "result", "ok") > 0 })
	f.stop()
	b, err := os.ReadFile(cache)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(cache, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.NotBefore = make(chan struct{}) // the API does not answer yet
	reg := prometheus.NewRegistry()
	s, err := registry.NewFollower(cfg, quiet(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	if s.Ready() == nil {
		t.Fatal("a damaged cache was put in force")
	}
	if n := testutil.ToFloat64(mustCounter(t, reg, "drover_registry_cache_loads_total", "damaged")); n != 1 {
		t.Errorf("damaged cache loads = %v", n)
	}
	if _, err := os.Stat(cache + ".damaged"); err != nil {
		t.Errorf("the damaged cache was not set aside: %v", err)
	}
	g := startFollower(t, followConfig(a.url, filepath.Join(dir, "follower-key"), cache))
	within(t, 10*time.Second, "a fresh snapshot", func() bool { return authorized(g.s, "d1", tok) == nil })
}

// mustCounter finds one series of a counter vector by its one label value.
func mustCounter(t *testing.T, reg *prometheus.Registry, name, value string) prometheus.Collector {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == value {
				return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return m.GetCounter().GetValue() })
			}
		}
	}
	t.Fatalf("no %s{%s}", name, value)
	return nil
}
