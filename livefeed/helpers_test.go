package livefeed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/telemetry"
)

// devToken is the -dev-token of test feeds: it sees every fleet.
const devToken = "dev-token-for-tests"

// testLogger logs to stderr when DROVER_TEST_LOG is set (debug level with
// DROVER_TEST_LOG=debug), else nowhere.
func testLogger() *slog.Logger {
	v := os.Getenv("DROVER_TEST_LOG")
	if v == "" {
		return nil
	}
	lvl := slog.LevelInfo
	if v == "debug" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// noLeaks fails the test if goroutines of the livefeed outlive it. Call it
// first, so that its cleanup runs after every other one. zmq4's PUB writer
// goroutine (pubMWriter.run) is not counted: zmq4 v0.17.0 never stops it,
// and only the tests' publishers are PUB sockets.
func noLeaks(t testing.TB) {
	t.Helper()
	t.Cleanup(func() {
		var stacks string
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
			stacks = strings.Join(leaked, "\n\n")
			if time.Now().After(deadline) {
				t.Errorf("%d goroutines leaked:\n%s", len(leaked), stacks)
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
	p, err := newPublisherAt(t, name, "tcp://127.0.0.1:0")
	if err != nil {
		t.Fatalf("publisher listen: %v", err)
	}
	return p
}

// newPublisherAt is newPublisher bound to listen; an error is a failed bind
// (the caller may try another port).
func newPublisherAt(t testing.TB, name, listen string) (*publisher, error) {
	t.Helper()
	sock := zmq4.NewPub(context.Background(), zmq4.WithID(zmq4.SocketIdentity(name)), zmq4.WithTimeout(5*time.Second),
		zmq4.WithLogger(slog.NewLogLogger(slog.DiscardHandler, slog.LevelWarn)))
	sec, err := clusterlink.New(testLinks, clusterlink.RoleRouter, name, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := sec.Endpoint(clusterlink.LinkLive, listen)
	if err != nil {
		t.Fatal(err)
	}
	if err := sock.Listen(ep); err != nil {
		_ = zmqsock.Close(sock)
		sec.Close()
		return nil, err
	}
	p := &publisher{t: t, name: name, sock: sock, ep: "tcp://" + sock.Addr().String()}
	t.Cleanup(func() { _ = sock.Close(); sec.Close() })
	return p, nil
}

// testLinks is the cluster key of the package's tests: the livefeed and the
// test publishers talk mutual TLS 1.3, as in production.
var testLinks = func() clusterlink.Config {
	k, err := clusterlink.GenerateKey()
	if err != nil {
		panic(err)
	}
	return clusterlink.Config{Keys: []clusterlink.Key{k}}
}()

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
	if err := p.sock.Send(zmq4.NewMsgFrom([]byte(LiveTopic), b)); err != nil {
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

// running is a Feed run in a goroutine of the test.
type running struct {
	*Feed
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startFeed runs a livefeed on a free loopback port subscribed to pubs, with
// the dev token, and returns once every publisher reaches it.
func startFeed(t testing.TB, mutate func(*Config), pubs ...*publisher) *running {
	t.Helper()
	return startFeedLogged(t, testLogger(), mutate, pubs...)
}

// startFeedLogged is startFeed with the feed logging to logger.
func startFeedLogged(t testing.TB, logger *slog.Logger, mutate func(*Config), pubs ...*publisher) *running {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.ID = "livefeed-test"
	cfg.DevToken = devToken
	cfg.Links = testLinks
	cfg.Routers = nil
	for _, p := range pubs {
		cfg.Routers = append(cfg.Routers, p.ep)
	}
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	f, err := New(cfg, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	f.clientsPoll = 20 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	rf := &running{Feed: f, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { rf.done <- f.Run(ctx) }()
	t.Cleanup(func() { rf.stop(t) })
	// 30 s: a ZMTP handshake that fails (its 5 s timeout, under -race on
	// a loaded machine) is tried again 5 s later; 10 s was seen to run out
	// twice in a row.
	waitFor(t, 30*time.Second, "the livefeed to be ready", func() bool {
		select {
		case err := <-rf.done:
			t.Fatalf("Run returned before ready: %v", err)
		default:
		}
		return f.Ready() == nil
	})
	// A PUB drops what it publishes before the SUB's subscription reaches
	// it: publish empty batches until each publisher's arrive.
	for _, p := range pubs {
		before := testutil.ToFloat64(f.m.batchesReceived)
		waitFor(t, 10*time.Second, "the publisher "+p.name+" to reach the livefeed", func() bool {
			p.publishSeq(0)
			time.Sleep(5 * time.Millisecond)
			return testutil.ToFloat64(f.m.batchesReceived) > before
		})
	}
	return rf
}

func (rf *running) stop(t testing.TB) {
	t.Helper()
	rf.once.Do(func() {
		rf.cancel()
		select {
		case err := <-rf.done:
			if err != nil {
				t.Errorf("livefeed Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("livefeed Run did not return within 15 s of the stop")
		}
	})
}

// url returns the feed's base URL with scheme ("http" or "ws").
func (rf *running) url(scheme string) string { return scheme + "://" + rf.Addr().String() }

// waitVehicles waits until the feed tracks n vehicles.
func (rf *running) waitVehicles(t testing.TB, n int) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%d vehicles tracked", n), func() bool { return rf.store.len() == n })
}

// vjson is a vehicle as clients see it.
type vjson struct {
	ID       string   `json:"id"`
	Fleet    string   `json:"fleet"`
	Class    string   `json:"class"`
	Region   string   `json:"region"`
	Seq      uint64   `json:"seq"`
	TimeMs   int64    `json:"time_ms"`
	RecvMs   int64    `json:"recv_ms"`
	Lat      *float64 `json:"lat"`
	Lon      *float64 `json:"lon"`
	SpeedKmh *float64 `json:"speed_kmh"`
	Heading  *float64 `json:"heading_deg"`
	Ignition *bool    `json:"ignition"`
}

// message is any message the livefeed sends.
type message struct {
	Type      string     `json:"type"`
	ID        string     `json:"id"`
	Code      string     `json:"code"`
	Message   string     `json:"message"`
	Client    string     `json:"client"`
	Fleets    []string   `json:"fleets"`
	AllFleets bool       `json:"all_fleets"`
	Total     int        `json:"total"`
	Truncated bool       `json:"truncated"`
	Filter    filterEcho `json:"filter"`
	Vehicles  []vjson    `json:"vehicles"`
	Removed   []string   `json:"removed"`
	// Alerts (docs/live-api.md, "alert").
	Alerts []json.RawMessage `json:"alerts"`

	at time.Time // when it was read
}

// ids returns the ids of the message's vehicles.
func (m message) ids() []string {
	out := make([]string, len(m.Vehicles))
	for i, v := range m.Vehicles {
		out[i] = v.ID
	}
	return out
}

// testClient is a real WebSocket client of the livefeed.
type testClient struct {
	t    testing.TB
	ws   *websocket.Conn
	msgs chan message
	done chan struct{} // closed when the read loop ends
	err  error         // the read error that ended it, set before done
}

// dial connects with token in the Authorization header and reads the
// hello message.
func dial(t testing.TB, rf *running, token string) *testClient {
	t.Helper()
	c, resp, err := dialRaw(rf, token, nil)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial livefeed: %v (HTTP %d)", err, status)
	}
	return startClient(t, c)
}

func dialRaw(rf *running, token string, d *websocket.Dialer) (*websocket.Conn, *http.Response, error) {
	if d == nil {
		d = &websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	}
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	return d.Dial(rf.url("ws")+LivePath, h)
}

func startClient(t testing.TB, ws *websocket.Conn) *testClient {
	c := &testClient{t: t, ws: ws, msgs: make(chan message, 10000), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			_, data, err := ws.ReadMessage()
			if err != nil {
				c.err = err
				return
			}
			var m message
			if os.Getenv("DROVER_TEST_DUMP") != "" { // every message, for debugging a test
				fmt.Fprintf(os.Stderr, "<- %.300s\n", data)
			}
			if err := json.Unmarshal(data, &m); err != nil {
				c.err = fmt.Errorf("bad JSON from livefeed: %v: %s", err, data)
				return
			}
			m.at = time.Now()
			select {
			case c.msgs <- m:
			default:
				c.err = errors.New("test client: message buffer full")
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = ws.Close()
		<-c.done
	})
	if h := c.next(5 * time.Second); h.Type != "hello" {
		t.Fatalf("first message: %+v, want hello", h)
	}
	return c
}

// next returns the next message, failing the test after timeout.
func (c *testClient) next(timeout time.Duration) message {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-time.After(timeout):
		c.t.Fatalf("no message from the livefeed within %s", timeout)
	case <-c.done:
		select {
		case m := <-c.msgs:
			return m
		default:
		}
		c.t.Fatalf("connection ended: %v", c.err)
	}
	return message{}
}

// send writes a message as JSON.
func (c *testClient) send(v any) {
	c.t.Helper()
	if err := c.ws.WriteJSON(v); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// subscribe sends a subscribe message and returns its snapshot, failing on
// an error message.
func (c *testClient) subscribe(m subscribeMsg) message {
	c.t.Helper()
	m.Type = "subscribe"
	if m.ID == "" {
		m.ID = fmt.Sprintf("s%d", time.Now().UnixNano())
	}
	c.send(m)
	for {
		r := c.next(5 * time.Second)
		switch {
		case r.Type == "error":
			c.t.Fatalf("subscribe %+v: error %s: %s", m, r.Code, r.Message)
		case r.Type == "snapshot" && r.ID == m.ID:
			return r
		}
	}
}

// expectError sends m and waits for an error message with code.
func (c *testClient) expectError(m any, code string) message {
	c.t.Helper()
	c.send(m)
	for {
		r := c.next(5 * time.Second)
		if r.Type == "error" {
			if r.Code != code {
				c.t.Fatalf("error %s (%s), want %s", r.Code, r.Message, code)
			}
			return r
		}
		if r.Type == "snapshot" {
			c.t.Fatalf("got a snapshot, want error %s", code)
		}
	}
}

// until reads updates until one carries a vehicle for which stop returns
// true, and returns every vehicle and removal read on the way (stop's
// vehicle included).
func (c *testClient) until(timeout time.Duration, stop func(vjson) bool) (seen []vjson, removed []string) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := c.next(time.Until(deadline))
		if r.Type == "error" {
			c.t.Fatalf("error message %s: %s", r.Code, r.Message)
		}
		removed = append(removed, r.Removed...)
		for _, v := range r.Vehicles {
			seen = append(seen, v)
			if stop(v) {
				return seen, removed
			}
		}
	}
}

// closeCode waits for the connection to end and returns its close code (0
// if it ended without a close frame).
func (c *testClient) closeCode(timeout time.Duration) int {
	c.t.Helper()
	drain := time.After(timeout)
	for {
		select {
		case <-c.msgs:
		case <-c.done:
			var ce *websocket.CloseError
			if errors.As(c.err, &ce) {
				return ce.Code
			}
			return 0
		case <-drain:
			c.t.Fatalf("connection still open after %s", timeout)
			return 0
		}
	}
}

// writeClients writes a clients file with one token per entry (name:
// token, fleets) and returns its path.
func writeClients(t testing.TB, dir string, entries map[string][]string) string {
	t.Helper()
	path := filepath.Join(dir, "clients.json")
	rewriteClients(t, path, entries)
	return path
}

func rewriteClients(t testing.TB, path string, entries map[string][]string) {
	t.Helper()
	var list []ClientEntry
	for token, fleets := range entries {
		list = append(list, ClientEntry{Name: "client-" + token, TokenSHA256: HashToken(token), Fleets: fleets})
	}
	if err := WriteClientsFile(path, list); err != nil {
		t.Fatal(err)
	}
}

// localAddr is a free loopback TCP address with nothing listening on it
// (for the test's lifetime, as far as the test knows).
func localAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
