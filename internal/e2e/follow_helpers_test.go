package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/telemetry"
)

// apiProc is a drover api process and an admin client of it.
type apiProc struct {
	*proc
	t        testing.TB
	dir, url string
	adminKey string
	keyFile  string // the follower key file it keeps
}

// startAPIProc starts drover api on SQLite in dir (or with more flags,
// e.g. PostgreSQL), with a follower key file, and waits until it is ready.
func startAPIProc(t *testing.T, ctx context.Context, dir string, args ...string) *apiProc {
	t.Helper()
	addr := freeAddr(t)
	a := &apiProc{t: t, dir: dir, url: "http://" + addr, keyFile: filepath.Join(dir, "follower-key")}
	a.proc = newProc(t, "api", "api", append([]string{"-listen", addr, "-data-dir", dir,
		"-follower-key-file", a.keyFile, "-feed-poll", "50ms"}, args...)...)
	a.start(ctx)
	b, err := os.ReadFile(filepath.Join(dir, "api-admin-key"))
	if err != nil {
		t.Fatal(err)
	}
	a.adminKey = strings.TrimSpace(string(b))
	return a
}

// followerArgs are the flags of a frontend, router or livefeed following a.
func (a *apiProc) followerArgs() []string {
	return []string{"-registry-api", a.url, "-registry-api-key-file", a.keyFile}
}

// call sends a request with the admin key and decodes a 2xx answer into out.
func (a *apiProc) call(method, path string, body, out any) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+a.adminKey)
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Timeout: 2 * time.Minute}
	resp, err := c.Do(req)
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

// presence is what the api holds of device id's presence (nil for none).
func (a *apiProc) presence(id string) *presenceView {
	a.t.Helper()
	var d struct{ Presence *presenceView }
	a.call("GET", "/v1/devices/"+id, nil, &d)
	return d.Presence
}

// presenceView is the part of a device's presence the tests read.
type presenceView struct {
	LastSeenAt time.Time `json:"last_seen_at"`
	Frontend   string    `json:"frontend"`
	Connected  bool      `json:"connected"`
}

// importFleet registers the simulated fleet of sc (its token hashes) and
// the fleets, classes and regions it names.
func (a *apiProc) importFleet(sc sim.Config) {
	a.t.Helper()
	var rows []map[string]any
	for _, d := range sim.Devices(sc) {
		rows = append(rows, map[string]any{"id": d.ID, "fleet": d.Fleet, "class": d.Class, "region": d.Region, "token_sha256": d.TokenSHA256})
	}
	a.call("POST", "/v1/imports/devices?create_missing=true", map[string]any{"devices": rows}, nil)
}

// register creates device id in fleet and returns its token and the
// change's version.
func (a *apiProc) register(id, fleet string) (token string, version int64) {
	a.t.Helper()
	var d struct {
		Token   string
		Version int64
	}
	body := map[string]any{"id": id, "issue_token": true}
	if fleet != "" {
		body["fleet"] = fleet
	}
	a.call("POST", "/v1/devices", body, &d)
	return d.Token, d.Version
}

// feedVersion is the registry version a follower process holds.
func feedVersion(ctx context.Context, pr *proc) int64 {
	m, err := pr.metrics(ctx)
	if err != nil {
		return -1
	}
	v, _ := metricValue(m, "drover_registry_feed_version", nil)
	return int64(v)
}

// probe is a device of the test's own: it sends readings with seq 1, 2,
// ... (on reconnect from what was acked, as a real device does) and keeps
// the highest seq acked, for the sink checks.
type probe struct {
	t      *testing.T
	url    string
	id     string
	mu     sync.Mutex
	token  string
	acked  uint64
	ws     *websocket.Conn
	closed chan *websocket.CloseError // the close of the last connection
}

func newProbe(t *testing.T, url, id, token string) *probe {
	return &probe{t: t, url: url, id: id, token: token}
}

// dial connects with the probe's token; the HTTP status of a refusal, or
// 101.
func (p *probe) dial() int {
	ws, resp, err := dialDevice(p.url+"/v1/ingest", p.id, p.token)
	if err != nil {
		if resp != nil {
			return resp.StatusCode
		}
		p.t.Fatalf("probe %s: %v", p.id, err)
	}
	p.mu.Lock()
	if p.ws != nil {
		p.ws.Close()
	}
	p.ws = ws
	p.closed = make(chan *websocket.CloseError, 1)
	p.mu.Unlock()
	return http.StatusSwitchingProtocols
}

// send sends n readings, the next seqs, and waits for their ack; it
// returns the close error if the connection was closed instead.
func (p *probe) send(n int) *websocket.CloseError {
	p.t.Helper()
	p.mu.Lock()
	ws, from := p.ws, p.acked+1
	p.mu.Unlock()
	u := &telemetry.Uplink{}
	now := time.Now()
	for i := range n {
		r := &telemetry.Reading{Seq: from + uint64(i), TimeMs: now.UnixMilli()}
		r.SetPosition(-26.2, 28.0+float64(from+uint64(i))/1e4)
		speed := float32(40)
		r.SpeedKmh = &speed
		u.Readings = append(u.Readings, r)
	}
	b, _ := telemetry.EncodeUplink(u, false)
	_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		return p.readClose(ws)
	}
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := ws.ReadMessage()
	if err != nil {
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce
		}
		p.t.Fatalf("probe %s: %v", p.id, err)
	}
	d, err := telemetry.DecodeDownlink(msg, false)
	if err != nil || d.GetAck() == nil {
		p.t.Fatalf("probe %s: %v %v", p.id, d, err)
	}
	p.mu.Lock()
	p.acked = max(p.acked, d.GetAck().GetSeq())
	p.mu.Unlock()
	return nil
}

// readClose reads until the connection's close and returns it (nil if it
// ended without one).
func (p *probe) readClose(ws *websocket.Conn) *websocket.CloseError {
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce
		}
		return nil
	}
}

// awaitClose waits up to d for the open connection to be closed by the
// frontend, and returns the close and when it came.
func (p *probe) awaitClose(d time.Duration) (*websocket.CloseError, time.Time) {
	p.t.Helper()
	p.mu.Lock()
	ws := p.ws
	p.mu.Unlock()
	_ = ws.SetReadDeadline(time.Now().Add(d))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce, time.Now()
		}
		p.t.Fatalf("probe %s: no close within %v: %v", p.id, d, err)
	}
}

func (p *probe) highest() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acked
}

// liveWatch is a live client subscribed to everything that keeps the
// newest fleet seen and the removals of each vehicle.
type liveWatch struct {
	mu      sync.Mutex
	fleet   map[string]string
	removed map[string]time.Time
	err     error
}

func watchVehicles(ctx context.Context, t *testing.T, url, token string) *liveWatch {
	t.Helper()
	h := http.Header{"Authorization": {"Bearer " + token}}
	c, resp, err := websocket.DefaultDialer.DialContext(ctx, url, h)
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%w (HTTP %s)", err, resp.Status)
		}
		t.Fatalf("live client: %v", err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","id":"follow"}`)); err != nil {
		t.Fatal(err)
	}
	w := &liveWatch{fleet: map[string]string{}, removed: map[string]time.Time{}}
	go func() {
		defer c.Close()
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				w.mu.Lock()
				w.err = err
				w.mu.Unlock()
				return
			}
			var m struct {
				Vehicles []struct{ ID, Fleet string }
				Removed  []string
			}
			if json.Unmarshal(b, &m) != nil {
				continue
			}
			w.mu.Lock()
			for _, v := range m.Vehicles {
				w.fleet[v.ID] = v.Fleet
				delete(w.removed, v.ID)
			}
			for _, id := range m.Removed {
				w.removed[id] = time.Now()
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *liveWatch) fleetOf(id string) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fleet[id]
}

func (w *liveWatch) wasRemoved(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.removed[id]
	return ok
}
