package tlsserve

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
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

// files is a server certificate, key and optionally ticket keys in a
// test's directory.
type files struct {
	dir, cert, key, tickets string
}

func writeServer(t testing.TB, ca *tlstest.CA, cn string) files {
	t.Helper()
	dir := t.TempDir()
	cert, key := ca.Server(t, cn).Write(t, dir, "server")
	return files{dir: dir, cert: cert, key: key}
}

func writeTicketKeys(t testing.TB, path string, keys ...clusterlink.Key) {
	t.Helper()
	if err := clusterlink.WriteKeyFile(path, keys...); err != nil {
		t.Fatal(err)
	}
}

func newKey(t testing.TB) clusterlink.Key {
	k, err := clusterlink.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// echo is a TLS echo server on loopback: each line a client writes comes
// back. It reports the handshakes it saw through its Listener's metrics.
type echo struct {
	s    *Server
	ln   *Listener
	reg  *prometheus.Registry
	addr string
}

func startEcho(t testing.TB, cfg Config) *echo {
	t.Helper()
	if cfg.Limits == (Limits{}) {
		cfg.Limits = DefaultLimits()
	}
	reg := prometheus.NewRegistry()
	s, err := New(cfg, "test", "test", nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	inner, err := Listen(context.Background(), "127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	ln := s.NewListener(inner)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		<-done
	})
	return &echo{s: s, ln: ln, reg: reg, addr: inner.Addr().String()}
}

func (e *echo) handshakes(result string) float64 {
	return testutil.ToFloat64(e.s.m.handshakes.WithLabelValues(result))
}

// client is a TLS client of an echo server.
type client struct {
	c *tls.Conn
	r *bufio.Reader
}

// dial connects to addr trusting ca, as server name "localhost" (so that
// servers on other ports share the session cache's key), with sessions.
func dial(t testing.TB, addr string, cfg *tls.Config) (*client, error) {
	t.Helper()
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &client{c: c.(*tls.Conn), r: bufio.NewReader(c)}, nil
}

func clientConfig(ca *tlstest.CA, sessions tls.ClientSessionCache) *tls.Config {
	return &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost", ClientSessionCache: sessions}
}

// roundTrip writes a line and reads it back. Reading also takes in the
// session tickets a TLS 1.3 server sends after the handshake.
func (c *client) roundTrip(t testing.TB, line string) {
	t.Helper()
	_ = c.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.c, line+"\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if got != line+"\n" {
		t.Fatalf("echo %q, want %q", got, line)
	}
}

func (c *client) subject() string {
	return c.c.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestReloadWithoutDroppingConnections replaces the certificate under a
// serving listener, by file change and by SIGHUP: new connections get the
// new one, a connection opened before goes on working, and a broken
// replacement leaves the one in force (SIGHUP: TestSIGHUPReloads).
func TestReloadWithoutDroppingConnections(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	f := writeServer(t, ca, "first")
	e := startEcho(t, Config{CertFile: f.cert, KeyFile: f.key, Poll: 20 * time.Millisecond})
	old, err := dial(t, e.addr, clientConfig(ca, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer old.c.Close()
	old.roundTrip(t, "before")
	if got := old.subject(); got != "first" {
		t.Fatalf("served %q, want first", got)
	}
	reloads := func(result string) float64 { return testutil.ToFloat64(e.s.m.reloads.WithLabelValues(result)) }

	// A file change: the poll picks it up.
	second := ca.Server(t, "second")
	second.Write(t, f.dir, "server")
	waitFor(t, 5*time.Second, "the reload after the change", func() bool { return reloads("ok") >= 2 })
	c2, err := dial(t, e.addr, clientConfig(ca, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.c.Close()
	if got := c2.subject(); got != "second" {
		t.Fatalf("after the change a new connection got %q, want second", got)
	}
	old.roundTrip(t, "after the change") // not dropped

	// A broken certificate: refused, counted, the one in force stays.
	tlstest.WriteFileAtomic(t, f.cert, []byte("not a certificate"), 0o644)
	waitFor(t, 5*time.Second, "the failed reload", func() bool { return reloads("error") >= 1 })
	c3, err := dial(t, e.addr, clientConfig(ca, nil))
	if err != nil {
		t.Fatal(err)
	}
	c3.c.Close()
	if got := c3.subject(); got != "second" {
		t.Fatalf("after a broken file a new connection got %q, want second (still in force)", got)
	}

	old.roundTrip(t, "after the broken file")
	if exp := testutil.ToFloat64(e.s.m.certExpiry); exp != float64(second.Cert.NotAfter.Unix()) {
		t.Errorf("certificate expiry metric %v, want %v", exp, second.Cert.NotAfter.Unix())
	}
}

// TestSIGHUPReloads checks the signal alone: the files change neither size
// nor time nor inode that the poll would see, since it polls hourly.
func TestSIGHUPReloads(t *testing.T) {
	// Until the server's Run subscribes, SIGHUP's default action would end
	// the test process: hold it here too.
	hold := make(chan os.Signal, 1)
	signal.Notify(hold, syscall.SIGHUP)
	defer signal.Stop(hold)
	ca := tlstest.NewCA(t, "test CA")
	f := writeServer(t, ca, "first")
	e := startEcho(t, Config{CertFile: f.cert, KeyFile: f.key, Poll: time.Hour})
	reloads := func() float64 { return testutil.ToFloat64(e.s.m.reloads.WithLabelValues("ok")) }
	waitFor(t, time.Second, "the first load", func() bool { return reloads() == 1 })
	ca.Server(t, "second").Write(t, f.dir, "server")
	// Run may not have subscribed yet: signal until it has reloaded.
	deadline := time.Now().Add(5 * time.Second)
	for reloads() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no reload within 5 s of SIGHUP")
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c, err := dial(t, e.addr, clientConfig(ca, nil))
	if err != nil {
		t.Fatal(err)
	}
	c.c.Close()
	if got := c.subject(); got != "second" {
		t.Fatalf("after SIGHUP a new connection got %q, want second", got)
	}
}

// TestTicketKeyFileResumesAcrossServers stands for a restart and for a
// move to another replica: a client that got a ticket from one server
// resumes with another that reads the same ticket key file, keeps
// resuming while the key it got is the previous one (rotation), and does a
// full handshake once that key is gone, or when servers have Go's own
// per-process keys.
func TestTicketKeyFileResumesAcrossServers(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	f := writeServer(t, ca, "edge")
	keyFile := filepath.Join(f.dir, "tickets")
	k1, k2 := newKey(t), newKey(t)
	writeTicketKeys(t, keyFile, k1)
	shared := Config{CertFile: f.cert, KeyFile: f.key, TicketKeyFile: keyFile, Poll: 20 * time.Millisecond}

	// connect dials addr with the client's sessions, talks, and says
	// whether the handshake resumed.
	connect := func(addr string, sessions tls.ClientSessionCache) bool {
		t.Helper()
		c, err := dial(t, addr, clientConfig(ca, sessions))
		if err != nil {
			t.Fatal(err)
		}
		defer c.c.Close()
		c.roundTrip(t, "hello") // takes in the new ticket
		return c.c.ConnectionState().DidResume
	}

	a, b := startEcho(t, shared), startEcho(t, shared)
	sessions := tls.NewLRUClientSessionCache(4)
	if connect(a.addr, sessions) {
		t.Fatal("the first connection resumed")
	}
	if !connect(b.addr, sessions) {
		t.Fatal("a server with the same ticket key file did not resume the session the other one issued")
	}
	if a.handshakes(resultFull) != 1 || b.handshakes(resultResumed) != 1 {
		t.Errorf("metrics: a full %v, b resumed %v; want 1 and 1", a.handshakes(resultFull), b.handshakes(resultResumed))
	}

	// Rotation, step 2: the new key first, the old one still accepted.
	// The client's ticket (under k1, from b above) still resumes.
	writeTicketKeys(t, keyFile, k2, k1)
	waitFor(t, 5*time.Second, "both servers reloaded", func() bool {
		return testutil.ToFloat64(a.s.m.reloads.WithLabelValues("ok")) >= 2 && testutil.ToFloat64(b.s.m.reloads.WithLabelValues("ok")) >= 2
	})
	if !connect(a.addr, sessions) {
		t.Fatal("a ticket under the previous key did not resume during the rotation")
	}
	// Step 3: the old key is gone; the ticket the client holds now is
	// under k2 (issued just above), so it still resumes...
	writeTicketKeys(t, keyFile, k2)
	waitFor(t, 5*time.Second, "both servers reloaded", func() bool {
		return testutil.ToFloat64(a.s.m.reloads.WithLabelValues("ok")) >= 3 && testutil.ToFloat64(b.s.m.reloads.WithLabelValues("ok")) >= 3
	})
	if !connect(b.addr, sessions) {
		t.Fatal("a ticket under the current key did not resume")
	}
	// ...but one under a key no longer in the file does not.
	stale := tls.NewLRUClientSessionCache(4)
	writeTicketKeys(t, keyFile, k1)
	waitFor(t, 5*time.Second, "a reloaded", func() bool { return testutil.ToFloat64(a.s.m.reloads.WithLabelValues("ok")) >= 4 })
	connect(a.addr, stale) // a ticket under k1
	writeTicketKeys(t, keyFile, k2)
	waitFor(t, 5*time.Second, "a reloaded", func() bool { return testutil.ToFloat64(a.s.m.reloads.WithLabelValues("ok")) >= 5 })
	if connect(a.addr, stale) {
		t.Fatal("a ticket under a key removed from the file resumed")
	}

	// Without the file, each server has keys of its own: a session from
	// one is a full handshake at the other (as after a restart).
	own := Config{CertFile: f.cert, KeyFile: f.key}
	c, d := startEcho(t, own), startEcho(t, own)
	sessions = tls.NewLRUClientSessionCache(4)
	connect(c.addr, sessions)
	if !connect(c.addr, sessions) {
		t.Fatal("the same server did not resume its own session")
	}
	if connect(d.addr, sessions) {
		t.Fatal("a server with its own ticket keys resumed another's session")
	}
}

// TestClientCertificates checks the client CA: a certificate it issued is
// accepted and visible to the server, none or another CA's is refused when
// one is required.
func TestClientCertificates(t *testing.T) {
	ca, devices, other := tlstest.NewCA(t, "server CA"), tlstest.NewCA(t, "device CA"), tlstest.NewCA(t, "other CA")
	f := writeServer(t, ca, "edge")
	cfg := Config{CertFile: f.cert, KeyFile: f.key, ClientCAFile: devices.WriteCA(t, f.dir, "devices.pem"),
		ClientAuth: tls.RequireAndVerifyClientCert}
	e := startEcho(t, cfg)
	withCert := func(leaf *tlstest.Leaf) *tls.Config {
		c := clientConfig(ca, nil)
		if leaf != nil {
			c.Certificates = []tls.Certificate{leaf.TLS(t)}
		}
		return c
	}
	good := devices.Client(t, "truck-7")
	c, err := dial(t, e.addr, withCert(&good))
	if err != nil {
		t.Fatalf("a device certificate of the CA: %v", err)
	}
	c.roundTrip(t, "ok")
	c.c.Close()

	for name, leaf := range map[string]*tlstest.Leaf{"no certificate": nil, "another CA's": new(other.Client(t, "truck-7"))} {
		c, err := dial(t, e.addr, withCert(leaf))
		if err == nil {
			// TLS 1.3: the client learns of the refusal at its first read.
			_ = c.c.SetDeadline(time.Now().Add(5 * time.Second))
			_, _ = io.WriteString(c.c, "x\n")
			_, err = c.r.ReadString('\n')
			c.c.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("%s: %v, want a refusal naming the certificate", name, err)
		}
	}
	waitFor(t, 5*time.Second, "two failed handshakes", func() bool { return e.handshakes(resultFailed) >= 2 })
}

// TestFullBacklogLeavesConnectionsWaiting fills the handshake slot and the
// backlog with connections that never send a hello. The next connection is
// not closed (that would fail its handshake, and a Go client would forget
// its session ticket): it waits in the kernel's accept queue and gets its
// handshake once there is room. The one that waited in the backlog past
// half the handshake timeout is closed when its turn comes (wait).
func TestFullBacklogLeavesConnectionsWaiting(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	f := writeServer(t, ca, "edge")
	e := startEcho(t, Config{CertFile: f.cert, KeyFile: f.key,
		Limits: Limits{MaxHandshakes: 1, Backlog: 1, HandshakeTimeout: 3 * time.Second}})
	refused := func(reason string) float64 { return testutil.ToFloat64(e.s.m.refused.WithLabelValues(reason)) }
	silent := fillListener(t, e)
	// The first handshake times out after 3 s; the second waited longer
	// than 1.5 s by then and is closed without a handshake; then the third
	// is accepted and served. Until then the kernel holds it.
	type result struct {
		c   *client
		err error
	}
	got := make(chan result, 1)
	go func() {
		c, err := dial(t, e.addr, clientConfig(ca, nil))
		got <- result{c, err}
	}()
	if runtime.GOOS == "linux" {
		waitFor(t, 3*time.Second, "the third connection in the kernel's accept queue", func() bool {
			return testutil.ToFloat64(e.s.m.waiting) == 1 && gathered(t, e.reg, "test_tls_accept_queue") == 1
		})
	}
	r := <-got
	third, err := r.c, r.err
	if err != nil {
		t.Fatalf("third connection, after a full backlog: %v, want it served once there was room", err)
	}
	if runtime.GOOS == "linux" && gathered(t, e.reg, "test_tls_accept_queue") != 0 {
		t.Errorf("accept queue %v once the third was accepted, want 0", gathered(t, e.reg, "test_tls_accept_queue"))
	}
	third.roundTrip(t, "ok")
	third.c.Close()
	if refused(refusedWait) != 1 {
		t.Errorf("wait refusals %v, want 1", refused(refusedWait))
	}
	_ = silent[1].SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent[1].Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Fatalf("waiting connection: %v, want it closed", err)
	}
	if e.handshakes(resultFailed) != 1 {
		t.Errorf("failed handshakes %v, want 1 (the silent first one)", e.handshakes(resultFailed))
	}
}

// fillListener takes the one handshake slot and the one backlog place of
// e with connections that never send a hello, in that order.
func fillListener(t *testing.T, e *echo) []net.Conn {
	t.Helper()
	var silent []net.Conn
	for i := range 2 {
		c, err := net.Dial("tcp", e.addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
		t.Cleanup(func() { c.Close() })
		// One at a time: the first in its handshake, then the second waiting.
		waitFor(t, 5*time.Second, "the connection in its place", func() bool {
			return testutil.ToFloat64(e.s.m.inProgress) == 1 && testutil.ToFloat64(e.s.m.waiting) == float64(i)
		})
	}
	return silent
}

// TestNoHandshakeForAClientThatLeft: a connection whose client sent its
// hello and closed while it waited for a handshake slot is closed without
// a handshake (gone), not handshaken for nobody.
func TestNoHandshakeForAClientThatLeft(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("peerGone reads TCP_INFO: Linux only")
	}
	ca := tlstest.NewCA(t, "test CA")
	f := writeServer(t, ca, "edge")
	e := startEcho(t, Config{CertFile: f.cert, KeyFile: f.key,
		Limits: Limits{MaxHandshakes: 1, Backlog: 1, HandshakeTimeout: 10 * time.Second}})
	refused := func(reason string) float64 { return testutil.ToFloat64(e.s.m.refused.WithLabelValues(reason)) }
	first, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	waitFor(t, 5*time.Second, "the first connection in its handshake", func() bool {
		return testutil.ToFloat64(e.s.m.inProgress) == 1
	})
	// A client that gives up: its hello sent, then closed, while it waits.
	quitter, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	hello := make(chan []byte, 1)
	go func() {
		// A real ClientHello, captured from a handshake that cannot finish.
		a, b := net.Pipe()
		go func() { _ = tls.Client(a, clientConfig(ca, nil)).Handshake() }()
		buf := make([]byte, 4096)
		n, _ := b.Read(buf)
		a.Close()
		hello <- buf[:n]
	}()
	if _, err := quitter.Write(<-hello); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the quitter in the backlog", func() bool { return testutil.ToFloat64(e.s.m.waiting) == 1 })
	quitter.Close()
	first.Close() // its handshake fails: the slot is free for the quitter
	waitFor(t, 5*time.Second, "the quitter closed", func() bool { return refused(refusedGone) == 1 })
	if got := e.handshakes(resultFailed); got != 1 {
		t.Errorf("failed handshakes %v, want 1 (the first; none for the client that left)", got)
	}
	// The listener serves on.
	c, err := dial(t, e.addr, clientConfig(ca, nil))
	if err != nil {
		t.Fatal(err)
	}
	c.roundTrip(t, "ok")
	c.c.Close()
}

// gathered is the value of the gauge name in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// TestHandshakeBudget checks that the handshake rate holds back full
// handshakes (a lower bound on the time n of them take: never faster than
// the budget) and that resumed ones cost less of it.
func TestHandshakeBudget(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	f := writeServer(t, ca, "edge")
	lim := DefaultLimits()
	lim.HandshakeRate = 20 // burst: 2
	e := startEcho(t, Config{CertFile: f.cert, KeyFile: f.key, Limits: lim})
	const n = 12
	start := time.Now()
	for range n {
		c, err := dial(t, e.addr, clientConfig(ca, nil))
		if err != nil {
			t.Fatal(err)
		}
		c.c.Close()
	}
	// n full handshakes at 20/s with a burst of 2: at least (n-2)/20 s.
	if took, least := time.Since(start), time.Duration(n-2)*time.Second/20; took < least {
		t.Fatalf("%d full handshakes took %v, faster than the budget allows (%v)", n, took, least)
	}
	e.ln.SetRateFactor(0.5)
	if got := testutil.ToFloat64(e.s.m.rate); got != 10 {
		t.Errorf("rate gauge %v after factor 0.5, want 10", got)
	}
}
