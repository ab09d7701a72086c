package livefeed

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/internal/apiclient"
)

// Live-client tokens issued by a real control plane (drover api on
// SQLite, in this process).

type controlPlane struct {
	t        testing.TB
	dir, url string
	adminKey string
	cancel   context.CancelFunc
	done     chan error
	once     sync.Once
}

func startControlPlane(t testing.TB, dir, addr string) *controlPlane {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Listen, cfg.DataDir, cfg.FeedPoll = addr, dir, 20*time.Millisecond
	cfg.FollowerKeyFile = filepath.Join(dir, "follower-key")
	srv, err := api.New(cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cp := &controlPlane{t: t, dir: dir, url: "http://" + addr, cancel: cancel, done: make(chan error, 1)}
	go func() { cp.done <- srv.Run(ctx) }()
	select {
	case <-srv.Started():
	case err := <-cp.done:
		t.Fatalf("api: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "api-admin-key"))
	if err != nil {
		t.Fatal(err)
	}
	cp.adminKey = strings.TrimSpace(string(b))
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) stop() { cp.once.Do(func() { cp.cancel(); <-cp.done }) }

func (cp *controlPlane) call(method, path string, body, out any) {
	cp.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, cp.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+cp.adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cp.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		cp.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			cp.t.Fatal(err)
		}
	}
}

// liveToken issues a token and returns its id and secret.
func (cp *controlPlane) liveToken(body map[string]any) (id, token string) {
	cp.t.Helper()
	var lt struct{ ID, Token string }
	cp.call("POST", "/v1/live-tokens", body, &lt)
	return lt.ID, lt.Token
}

func loopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestAPITokens: a token issued through the API admits its client within
// 2 s, seeing its fleets narrowed to its devices and map area; revoking it
// closes the client (CloseRevoked) within 2 s and refuses it after; the
// tokens survive the API going down and a livefeed restart (cache).
func TestAPITokens(t *testing.T) {
	noLeaks(t)
	dir, addr := t.TempDir(), loopbackAddr(t)
	cp := startControlPlane(t, dir, addr)
	for _, f := range []string{"acme", "beta"} {
		cp.call("POST", "/v1/fleets", map[string]string{"id": f}, nil)
	}
	for _, d := range []struct{ id, fleet string }{{"in-area", "acme"}, {"out-of-area", "acme"}, {"not-listed", "acme"}, {"other-fleet", "beta"}} {
		cp.call("POST", "/v1/devices", map[string]any{"id": d.id, "fleet": d.fleet}, nil)
	}
	pub := newPublisher(t, "r0")
	cacheDir := t.TempDir()
	mutate := func(c *Config) {
		c.DevToken = ""
		c.API = apiclient.Config{URL: cp.url, KeyFile: filepath.Join(dir, "follower-key")}
		c.CacheDir = cacheDir
	}
	rf := startFeed(t, mutate, pub)

	id, token := cp.liveToken(map[string]any{"name": "wallboard", "fleets": []string{"acme"},
		"devices": []string{"in-area", "out-of-area"},
		"area":    map[string]float64{"min_lat": -27, "min_lon": 27, "max_lat": -25, "max_lon": 29}})
	issued := time.Now()
	// Polled on the metric, not by dialing: failed dials would count
	// against this address's authentication limit.
	waitFor(t, 2*time.Second, "the issued token in force", func() bool {
		return rf.apiTokens() == 1
	})
	t.Logf("issued → in force: %v", time.Since(issued))
	c := dial(t, rf, token)

	now := time.Now().UnixMilli()
	pub.publish(rec("in-area", "acme", 1, now, -26, 28), rec("out-of-area", "acme", 1, now, -30, 28),
		rec("not-listed", "acme", 1, now, -26, 28), rec("other-fleet", "beta", 1, now, -26, 28))
	rf.waitVehicles(t, 4)
	snap := c.subscribe(subscribeMsg{})
	if ids := snap.ids(); !slices.Equal(ids, []string{"in-area"}) {
		t.Errorf("a token for acme, two devices and an area sees %v, want [in-area]", ids)
	}
	// A vehicle leaving the area is removed from the client's map.
	pub.publish(rec("in-area", "acme", 2, now+1000, -30, 28))
	for deadline := time.Now().Add(5 * time.Second); ; {
		m := c.next(time.Until(deadline))
		if slices.Contains(m.ids(), "in-area") {
			t.Fatalf("the vehicle left the area and was sent: %+v", m)
		}
		if slices.Contains(m.Removed, "in-area") {
			break
		}
	}

	// The API goes down: the client stays, a new client of the token is
	// admitted; a restarted livefeed admits it from its cache.
	cp.stop()
	dial(t, rf, token).ws.Close()
	rf.stop(t)
	c.closeCode(5 * time.Second)
	rf = startFeed(t, mutate, pub)
	c = dial(t, rf, token)

	// The API is back; the token is revoked: closed, then refused.
	cp = startControlPlane(t, dir, addr)
	cp.call("DELETE", "/v1/live-tokens/"+id, nil, nil)
	revoked := time.Now()
	if code := c.closeCode(5 * time.Second); code != CloseRevoked {
		t.Fatalf("revoked token's client closed %d, want %d", code, CloseRevoked)
	}
	if lag := time.Since(revoked); lag > 2*time.Second {
		t.Errorf("closed %v after the revocation", lag)
	}
	if code, _, _ := refusal(t, rf, token); code != http.StatusUnauthorized {
		t.Errorf("a revoked token: %d, want 401", code)
	}
	waitFor(t, 5*time.Second, "disconnects{revoked} = 1", func() bool {
		return testutil.ToFloat64(rf.m.disconnects.WithLabelValues(reasonRevoked)) == 1
	})
}

// apiTokens is drover_livefeed_api_tokens.
func (rf *running) apiTokens() float64 {
	fams, _ := rf.reg.Gather()
	for _, f := range fams {
		if f.GetName() == "drover_livefeed_api_tokens" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// TestRetiredDevicesLeaveTheMap: following the registry, the livefeed
// takes a decommissioned or deleted device's vehicle off every client's
// map within 2 s and shows none of its later readings (a router's backlog
// from before); a suspended device stays, with its last position.
func TestRetiredDevicesLeaveTheMap(t *testing.T) {
	noLeaks(t)
	dir := t.TempDir()
	cp := startControlPlane(t, dir, loopbackAddr(t))
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	for _, id := range []string{"retired", "deleted", "suspended"} {
		cp.call("POST", "/v1/devices", map[string]any{"id": id, "fleet": "acme"}, nil)
	}
	pub := newPublisher(t, "r0")
	rf := startFeed(t, func(c *Config) {
		c.API = apiclient.Config{URL: cp.url, KeyFile: filepath.Join(dir, "follower-key")}
	}, pub)
	waitFor(t, 5*time.Second, "the registry followed", func() bool { return rf.registry.Ready() == nil })
	now := time.Now().UnixMilli()
	pub.publish(rec("retired", "acme", 1, now, -26, 28), rec("deleted", "acme", 1, now, -26, 28), rec("suspended", "acme", 1, now, -26, 28))
	rf.waitVehicles(t, 3)
	c := dial(t, rf, devToken)
	if ids := c.subscribe(subscribeMsg{}).ids(); len(ids) != 3 {
		t.Fatalf("snapshot %v", ids)
	}
	changed := time.Now()
	cp.call("POST", "/v1/devices/suspended/state", map[string]any{"state": "suspended"}, nil)
	cp.call("POST", "/v1/devices/retired/state", map[string]any{"state": "decommissioned"}, nil)
	cp.call("POST", "/v1/devices/deleted/state", map[string]any{"state": "decommissioned"}, nil)
	cp.call("DELETE", "/v1/devices/deleted", nil, nil)
	var removed []string
	for deadline := time.Now().Add(5 * time.Second); len(removed) < 2; {
		removed = append(removed, c.next(time.Until(deadline)).Removed...)
	}
	slices.Sort(removed)
	if !slices.Equal(removed, []string{"deleted", "retired"}) {
		t.Errorf("removed %v, want [deleted retired]", removed)
	}
	if lag := time.Since(changed); lag > 2*time.Second {
		t.Errorf("removed %v after the calls", lag)
	}
	pub.publish(rec("retired", "acme", 2, now+1000, -26, 28), rec("suspended", "acme", 2, now+1000, -26, 29))
	m := c.next(5 * time.Second)
	if ids := m.ids(); !slices.Equal(ids, []string{"suspended"}) {
		t.Errorf("after the decommission, an update shows %v, want [suspended]", ids)
	}
	waitFor(t, 5*time.Second, "updates_retired counted", func() bool { return testutil.ToFloat64(rf.m.updatesRetired) == 1 })
	if n := rf.store.len(); n != 1 {
		t.Errorf("%d vehicles tracked, want 1", n)
	}
}
