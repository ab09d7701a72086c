package frontend

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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/registry"
)

// The frontend following a real control plane (drover api on SQLite, in
// this process): what an operator does through the API reaches open
// connections within 2 s, and presence reaches the API.

type controlPlane struct {
	t        testing.TB
	dir      string
	addr     string
	url      string
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
	cp := &controlPlane{t: t, dir: dir, addr: addr, url: "http://" + addr, cancel: cancel, done: make(chan error, 1)}
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

func (cp *controlPlane) stop() {
	cp.once.Do(func() {
		cp.cancel()
		<-cp.done
	})
}

// call sends a request with the admin key; out receives a 2xx answer.
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

// device registers dev-i in fleet acme and returns its token.
func (cp *controlPlane) device(i int) string {
	cp.t.Helper()
	var d struct{ Token string }
	cp.call("POST", "/v1/devices", map[string]any{"id": deviceID(i), "fleet": "acme", "issue_token": true}, &d)
	return d.Token
}

// presence returns dev-i's presence in the API.
func (cp *controlPlane) presence(i int) (frontend string, connected bool, ok bool) {
	var d struct {
		Presence *struct {
			Frontend  string `json:"frontend"`
			Connected bool   `json:"connected"`
		} `json:"presence"`
	}
	cp.call("GET", "/v1/devices/"+deviceID(i), nil, &d)
	if d.Presence == nil {
		return "", false, false
	}
	return d.Presence.Frontend, d.Presence.Connected, true
}

func freeLoopback(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// followConfig is a frontend test config following cp.
func followConfig(t testing.TB, cp *controlPlane) Config {
	cfg := testConfig(t, 0)
	cfg.Follow.API = apiclient.Config{URL: cp.url, KeyFile: filepath.Join(cp.dir, "follower-key")}
	cfg.Follow.Wait, cfg.Follow.BackoffMin, cfg.Follow.BackoffMax = 5*time.Second, 20*time.Millisecond, 200*time.Millisecond
	cfg.Presence = PresenceConfig{Interval: 50 * time.Millisecond, Refresh: 500 * time.Millisecond, MaxPending: 1000}
	cfg.MaxConnections = 1000
	return cfg
}

// dialStatus dials dev-i with token and returns the HTTP status of a
// refusal (101 when accepted; the connection is closed).
func (e *env) dialStatus(t testing.TB, i int, token string) int {
	t.Helper()
	ws, resp, err := e.dial(i, token, false)
	if err == nil {
		ws.Close()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		t.Fatalf("dial %s: %v", deviceID(i), err)
	}
	return resp.StatusCode
}

// connectWith dials dev-i with token and fails the test otherwise.
func (e *env) connectWith(t testing.TB, i int, token string) *websocket.Conn {
	t.Helper()
	ws, resp, err := e.dial(i, token, false)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", deviceID(i), err, status)
	}
	t.Cleanup(func() { ws.Close() })
	return ws
}

// TestFollowClosesWhatTheAPIChanges: a device registered after the start
// connects; suspending, revoking, deleting a device closes its open
// connection with the documented code (4403, 4401) within 2 s and its
// reconnects are refused (403 with the reason for a suspended device's
// right token, 401 otherwise).
func TestFollowClosesWhatTheAPIChanges(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	tokens := map[int]string{0: cp.device(0), 1: cp.device(1)}
	e := start(t, followConfig(t, cp))
	now := time.Now()

	tokens[2] = cp.device(2)
	began := time.Now()
	waitFor(t, 2*time.Second, "a device registered after the start connects", func() bool {
		return e.dialStatus(t, 2, tokens[2]) == http.StatusSwitchingProtocols
	})
	t.Logf("registered → connects: %v", time.Since(began))

	// Suspended: closed 4403, then 403 "device suspended".
	ws := e.connectWith(t, 0, tokens[0])
	ack(t, ws, false, readings(now, 1), 1)
	began = time.Now()
	cp.call("POST", "/v1/devices/"+deviceID(0)+"/state", map[string]any{"state": "suspended", "reason": "stolen"}, nil)
	if text := expectClose(t, ws, CloseDeviceNotActive); text != "device suspended" || time.Since(began) > 2*time.Second {
		t.Errorf("suspended: closed %q after %v", text, time.Since(began))
	}
	if s := e.dialStatus(t, 0, tokens[0]); s != http.StatusForbidden {
		t.Errorf("a suspended device's reconnect: %d, want 403", s)
	}
	if s := e.dialStatus(t, 0, "wrong"); s != http.StatusUnauthorized {
		t.Errorf("a wrong token of a suspended device: %d, want 401 (the state is told only to the token's holder)", s)
	}
	cp.call("POST", "/v1/devices/"+deviceID(0)+"/state", map[string]any{"state": "active"}, nil)
	waitFor(t, 2*time.Second, "a resumed device connects", func() bool {
		return e.dialStatus(t, 0, tokens[0]) == http.StatusSwitchingProtocols
	})

	// Revoked: closed 4401, then 401.
	ws = e.connectWith(t, 1, tokens[1])
	cp.call("DELETE", "/v1/devices/"+deviceID(1)+"/token", nil, nil)
	if text := expectClose(t, ws, CloseCredentialsRevoked); text != "token revoked" {
		t.Errorf("revoked: closed %q", text)
	}
	if s := e.dialStatus(t, 1, tokens[1]); s != http.StatusUnauthorized {
		t.Errorf("a revoked token: %d, want 401", s)
	}

	// Decommissioned, then deleted: closed 4403 at the decommission.
	ws = e.connectWith(t, 2, tokens[2])
	cp.call("POST", "/v1/devices/"+deviceID(2)+"/state", map[string]any{"state": "decommissioned"}, nil)
	if text := expectClose(t, ws, CloseDeviceNotActive); text != "device decommissioned" {
		t.Errorf("decommissioned: closed %q", text)
	}
	cp.call("DELETE", "/v1/devices/"+deviceID(2), nil, nil)
	waitFor(t, 2*time.Second, "a deleted device refused as unknown", func() bool {
		return e.dialStatus(t, 2, tokens[2]) == http.StatusUnauthorized
	})
	for reason, want := range map[string]float64{reasonSuspended: 2, reasonRevoked: 1, reasonDecommissioned: 1} {
		if got := e.refusals(reason); got < want {
			t.Errorf("refusals{reason=%q} = %v, want at least %v", reason, got, want)
		}
	}
}

// TestFollowRotationOverlap: during a rotation's overlap both tokens
// connect; a connection on the old token is closed with 4401 when the
// overlap ends (decided: it must reconnect with the new token), and the
// old token is refused from then on.
func TestFollowRotationOverlap(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), freeLoopback(t))
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	old := cp.device(0)
	e := start(t, followConfig(t, cp))
	ws := e.connectWith(t, 0, old)
	var rot struct{ Token string }
	cp.call("POST", "/v1/devices/"+deviceID(0)+"/token/rotate", map[string]any{"overlap_seconds": 4}, &rot)
	rotated := time.Now()
	waitFor(t, 3*time.Second, "the new token connects", func() bool {
		return e.dialStatus(t, 0, rot.Token) == http.StatusSwitchingProtocols
	})
	expectClose(t, ws, CloseReplaced) // the new token's connection replaced it
	ws, _, err := e.dial(0, old, false)
	if err != nil {
		t.Fatalf("the old token during the overlap: %v", err)
	}
	defer ws.Close()
	text := expectClose(t, ws, CloseCredentialsRevoked)
	if took := time.Since(rotated); took < 3500*time.Millisecond || took > 6*time.Second {
		t.Errorf("the old token's connection closed %v after a rotation with a 4 s overlap", took)
	}
	if !strings.Contains(text, "overlap ended") {
		t.Errorf("closed %q", text)
	}
	if s := e.dialStatus(t, 0, old); s != http.StatusUnauthorized {
		t.Errorf("the old token after the overlap: %d, want 401", s)
	}
	if s := e.dialStatus(t, 0, rot.Token); s != http.StatusSwitchingProtocols {
		t.Errorf("the new token after the overlap: %d", s)
	}
}

// TestFollowPresenceAndAPIDown: connects and disconnects reach the API as
// presence; with the API down, devices keep connecting and being acked,
// presence waits (bounded) and is sent once the API is back.
func TestFollowPresenceAndAPIDown(t *testing.T) {
	dir, addr := t.TempDir(), freeLoopback(t)
	cp := startControlPlane(t, dir, addr)
	cp.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	tok0, tok1 := cp.device(0), cp.device(1)
	e := start(t, followConfig(t, cp))
	ws, _, err := e.dial(0, tok0, false)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "presence: connected", func() bool {
		fe, connected, ok := cp.presence(0)
		return ok && connected && fe == e.cfg.ID
	})
	ws.Close()
	waitFor(t, 2*time.Second, "presence: disconnected", func() bool {
		_, connected, ok := cp.presence(0)
		return ok && !connected
	})

	cp.stop()
	now := time.Now()
	ws, _, err = e.dial(1, tok1, false)
	if err != nil {
		t.Fatalf("with the API down, a registered device: %v", err)
	}
	defer ws.Close()
	ack(t, ws, false, readings(now, 1, 2, 3), 3)
	waitFor(t, 5*time.Second, "presence failures counted", func() bool {
		return e.metric(e.f.presence.fails) > 0
	})

	cp = startControlPlane(t, dir, addr)
	waitFor(t, 10*time.Second, "presence sent once the API is back", func() bool {
		_, connected, ok := cp.presence(1)
		return ok && connected
	})
	if n := e.metric(e.f.presence.dropped.WithLabelValues("full")); n != 0 {
		t.Errorf("%v presence reports dropped", n)
	}
}

// TestFileReloadClosesRemovedDevices: the registry file works the same
// way: a device removed from the file is closed with 4403, one whose
// token hash changed with 4401, at the reload.
func TestFileReloadClosesRemovedDevices(t *testing.T) {
	e := startWith(t, 3, nil)
	removed := e.connect(t, 0, false)
	rekeyed := e.connect(t, 1, false)
	kept := e.connect(t, 2, false)
	devs := []registry.Device{
		{ID: deviceID(1), TokenSHA256: registry.HashToken("a new token")},
		{ID: deviceID(2), TokenSHA256: registry.HashToken(tokenOf(2))},
	}
	// Another size, so that the reload sees a change even within the
	// file system's time resolution.
	if err := registry.Write(e.cfg.Registry, devs); err != nil {
		t.Fatal(err)
	}
	if text := expectClose(t, removed, CloseDeviceNotActive); text != "device removed from the registry" {
		t.Errorf("removed: %q", text)
	}
	expectClose(t, rekeyed, CloseCredentialsRevoked)
	ack(t, kept, false, readings(time.Now(), 1), 1)
}

// TestPresenceBounded: while the API does not answer, presence keeps the
// latest report per device, at most MaxPending devices; a newer report
// replaces an older one, an older never a newer; past the bound reports
// are dropped and counted; a batch that failed goes back, and a newer
// report then replaces it.
func TestPresenceBounded(t *testing.T) {
	client, err := apiclient.New(apiclient.Config{URL: "http://" + freeLoopback(t), Key: "drv_k_s", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p, err := newPresence(PresenceConfig{Interval: time.Second, Refresh: time.Minute, MaxPending: 2}, client, "fe", slog.New(slog.DiscardHandler), reg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	p.report("a", "1.1.1.1", "", true, t0)
	p.report("a", "1.1.1.1", "", false, t0.Add(-time.Second)) // older: ignored
	p.report("b", "2.2.2.2", "", true, t0)
	p.report("c", "3.3.3.3", "", true, t0) // full
	if n := testutil.ToFloat64(p.dropped.WithLabelValues("full")); n != 1 {
		t.Errorf("dropped{full} = %v, want 1", n)
	}
	if r := p.pending["a"]; !r.Connected {
		t.Errorf("an older report overwrote a newer one: %+v", r)
	}
	if err := p.flush(t.Context()); err == nil {
		t.Fatal("flush to nowhere succeeded")
	}
	if n := testutil.ToFloat64(p.fails); n != 1 {
		t.Errorf("failures = %v", n)
	}
	if len(p.pending) != 2 {
		t.Fatalf("after a failed flush %d reports wait, want the 2 back", len(p.pending))
	}
	// A newer report replaces the one put back.
	p.report("b", "2.2.2.2", "", false, t0.Add(time.Second))
	if r := p.pending["b"]; r.Connected {
		t.Errorf("the newer disconnect lost: %+v", r)
	}
}
