package livefeed

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Clients' connections: authentication, limits, shutdown, readiness, the map page, idle and oversized clients.

func TestAuth(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	dir := t.TempDir()
	clients := writeClients(t, dir, map[string][]string{"token-a": {"a"}, "token-all": {"*"}})
	rf := startFeed(t, func(c *Config) { c.Clients = clients }, pub)

	for name, token := range map[string]string{"no token": "", "bad token": "nope"} {
		_, resp, err := dialRaw(rf, token, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s: err %v resp %v, want 401", name, err, resp)
		}
	}
	// The query parameter works for browsers.
	ws, _, err := websocket.DefaultDialer.Dial(rf.url("ws")+LivePath+"?token=token-a", nil)
	if err != nil {
		t.Fatalf("?token=: %v", err)
	}
	qc := startClient(t, ws)
	a := dial(t, rf, "token-a")
	all := dial(t, rf, "token-all")
	dev := dial(t, rf, devToken) // -dev-token works beside the file
	// Revoking token-a closes its connections with 4003; the others stay.
	rewriteClients(t, clients, map[string][]string{"token-all": {"*"}})
	for _, c := range []*testClient{a, qc} {
		if code := c.closeCode(10 * time.Second); code != CloseRevoked {
			t.Errorf("revoked client closed with %d, want %d", code, CloseRevoked)
		}
	}
	all.subscribe(subscribeMsg{})
	dev.subscribe(subscribeMsg{})
	if _, resp, err := dialRaw(rf, "token-a", nil); err == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("revoked token still accepted")
	}
	// Changing a token's fleets closes it too: it reconnects with the new ones.
	rewriteClients(t, clients, map[string][]string{"token-all": {"a"}})
	if code := all.closeCode(10 * time.Second); code != CloseRevoked {
		t.Errorf("client whose fleets changed closed with %d, want %d", code, CloseRevoked)
	}
	// A broken file keeps the clients in force.
	if err := writeFile(clients, "{broken"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the failed reload", func() bool {
		return testutil.ToFloat64(rf.m.reloads.WithLabelValues("error")) >= 1
	})
	dial(t, rf, "token-all")
}

func TestMaxClients(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, func(c *Config) { c.MaxClients = 2 }, pub)
	dial(t, rf, devToken)
	dial(t, rf, devToken)
	_, resp, err := dialRaw(rf, devToken, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third client: err %v resp %v, want 503", err, resp)
	}
}

func TestShutdownClosesClientsWith1001(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, nil, pub)
	c1 := dial(t, rf, devToken)
	c2 := dial(t, rf, devToken)
	c2.subscribe(subscribeMsg{})
	start := time.Now()
	rf.stop(t)
	for _, c := range []*testClient{c1, c2} {
		if code := c.closeCode(5 * time.Second); code != websocket.CloseGoingAway {
			t.Errorf("closed with %d, want 1001", code)
		}
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("stop took %v", took)
	}
	if rf.Ready() == nil {
		t.Error("Ready() = nil after the stop")
	}
}

func TestReadyNeedsARouter(t *testing.T) {
	noLeaks(t)
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DevToken = devToken
	cfg.Links = testLinks
	cfg.Routers = []string{"tcp://" + localAddr(t)} // nothing listens there
	f, err := New(cfg, testLogger(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if f.Ready() == nil {
		t.Fatal("ready before Run")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	waitFor(t, 5*time.Second, "the listener", func() bool { return f.Addr() != nil })
	time.Sleep(300 * time.Millisecond) // a few dial attempts
	if err := f.Ready(); err == nil || !strings.Contains(err.Error(), "router") {
		t.Errorf("Ready() = %v with no router, want not ready", err)
	}
	resp, err := http.Get("http://" + f.Addr().String() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/readyz = %d, want 503", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return while dialling a dead router")
	}
}

func TestSeveralRouters(t *testing.T) {
	noLeaks(t)
	p0, p1 := newPublisher(t, "r0"), newPublisher(t, "r1")
	rf := startFeed(t, nil, p0, p1)
	t0 := time.Now().UnixMilli()
	p0.publish(rec("x", "f", 1, t0, 1, 1))
	p1.publish(rec("y", "f", 1, t0, 2, 2))
	// The same reading through both routers is applied once.
	p0.publish(rec("z", "f", 1, t0, 3, 3))
	p1.publish(rec("z", "f", 1, t0, 3, 3))
	rf.waitVehicles(t, 3)
	waitFor(t, 5*time.Second, "the duplicate", func() bool { return testutil.ToFloat64(rf.m.updatesStale) == 1 })
	if n := testutil.ToFloat64(rf.m.routersConnected); n != 2 {
		t.Errorf("routers connected = %v, want 2", n)
	}
	// A gap in a router's sequence counts the lost batches.
	p0.publishSeq(10)
	waitFor(t, 5*time.Second, "the gap to be counted", func() bool { return testutil.ToFloat64(rf.m.batchesMissed) == 7 })
}

func TestVehicleTTLRemoves(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, func(c *Config) { c.VehicleTTL = 500 * time.Millisecond }, pub)
	pub.publish(rec("old", "f", 1, time.Now().UnixMilli(), 1, 1))
	rf.waitVehicles(t, 1)
	c := dial(t, rf, devToken)
	if snap := c.subscribe(subscribeMsg{}); len(snap.Vehicles) != 1 {
		t.Fatalf("snapshot %+v", snap.Vehicles)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		m := c.next(time.Until(deadline))
		if slices.Contains(m.Removed, "old") {
			break
		}
	}
	if rf.store.len() != 0 || testutil.ToFloat64(rf.m.vehicles) != 0 {
		t.Errorf("vehicles left: %d, gauge %v", rf.store.len(), testutil.ToFloat64(rf.m.vehicles))
	}
}

// TestServesMapPage: the livefeed serves the page it was built with (the
// bundle, or the placeholder that says how to build it), its
// map-config.json, and a CSP that lets the page reach nothing but itself
// when no tiles or geofences are configured.
func TestServesMapPage(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, nil, pub)
	want := map[string]string{"/": "text/html"}
	if MapBundled() {
		want["/main.js"], want["/main.css"], want["/basemap.json"] = "javascript", "text/css", "application/json"
	}
	for path, ctype := range want {
		resp, err := http.Get(rf.url("http") + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), ctype) || len(body) < 100 {
			t.Errorf("GET %s: %d %s, %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
		csp := resp.Header.Get("Content-Security-Policy")
		if !strings.Contains(csp, "img-src 'self' data:;") || !strings.Contains(csp, "connect-src 'self' ws: wss:;") ||
			!strings.Contains(csp, "script-src 'self';") {
			t.Errorf("GET %s: CSP %q, want only the page's own origin", path, csp)
		}
		if path == "/" && MapBundled() != strings.Contains(string(body), `src="main.js"`) {
			t.Errorf("GET /: MapBundled() = %v, but the page is %q", MapBundled(), body)
		}
	}
	var conf pageConfig
	getJSON(t, rf.url("http")+"/map-config.json", &conf)
	if conf.Tiles != nil || conf.GeofencesURL != "" || conf.Bundled != MapBundled() || conf.GeofencesRefreshS != 60 {
		t.Errorf("map-config.json = %+v", conf)
	}
	resp, err := http.Get(rf.url("http") + LivePath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("plain GET %s = %d, want 400", LivePath, resp.StatusCode)
	}
}

func TestIdleClientClosed(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, func(c *Config) {
		c.PingInterval = 50 * time.Millisecond
		c.IdleTimeout = 300 * time.Millisecond
	}, pub)
	// A client that reads answers pings (gorilla does it in its read loop)
	// and stays.
	alive := dial(t, rf, devToken)
	// One that never reads never answers them.
	ws, _, err := dialRaw(rf, devToken, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	ws.SetPingHandler(func(string) error { return nil }) // a dead client: no pong
	waitFor(t, 5*time.Second, "the idle client to be closed", func() bool {
		return testutil.ToFloat64(rf.m.disconnects.WithLabelValues(reasonIdle)) == 1
	})
	var code int
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			if ce, ok := err.(*websocket.CloseError); ok {
				code = ce.Code
			}
			break
		}
	}
	if code != CloseIdleTimeout {
		t.Errorf("idle client closed with %d, want %d", code, CloseIdleTimeout)
	}
	alive.subscribe(subscribeMsg{})
}

// With -compression a message under the limit on the wire may inflate
// past it: the inflated size is what is bounded (a decompression bomb).
func TestOversizedClientMessageInflated(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, func(c *Config) { c.Compression = true }, pub)
	ws, _, err := dialRaw(rf, devToken, &websocket.Dialer{HandshakeTimeout: 5 * time.Second, EnableCompression: true})
	if err != nil {
		t.Fatal(err)
	}
	c := startClient(t, ws)
	big := `{"type":"subscribe","devices":["` + strings.Repeat("x", 16*maxClientMessage) + `"]}` // ~1 KB deflated
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(big)); err != nil {
		t.Fatal(err)
	}
	if code := c.closeCode(5 * time.Second); code != websocket.CloseMessageTooBig {
		t.Errorf("closed with %d, want 1009", code)
	}
}

func TestOversizedClientMessage(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, nil, pub)
	c := dial(t, rf, devToken)
	big := `{"type":"subscribe","devices":["` + strings.Repeat("x", maxClientMessage) + `"]}`
	if err := c.ws.WriteMessage(websocket.TextMessage, []byte(big)); err != nil {
		t.Fatal(err)
	}
	if code := c.closeCode(5 * time.Second); code != websocket.CloseMessageTooBig {
		t.Errorf("closed with %d, want 1009", code)
	}
}
