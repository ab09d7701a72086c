package sim

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/frontend"
	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
)

// refusingProxy forwards TCP connections to a frontend, except the next
// refuse ones, which it closes at once without a byte: what a frontend does
// with a connection its handshake backlog has no room for. A proxy because
// a real frontend refuses whom a stampede's timing picks, and this test
// needs a known number of refusals.
type refusingProxy struct {
	ln      net.Listener
	target  string
	refuse  atomic.Int64
	refused atomic.Int64
	wg      sync.WaitGroup
}

func newRefusingProxy(t *testing.T, target string) *refusingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &refusingProxy{ln: ln, target: target}
	p.wg.Go(p.serve)
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *refusingProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.refuse.Add(-1) >= 0 {
			p.refused.Add(1)
			c.Close()
			continue
		}
		p.refuse.Store(0)
		p.wg.Go(func() { p.pipe(c) })
	}
}

func (p *refusingProxy) pipe(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(up, c)
		up.Close()
	}()
	_, _ = io.Copy(c, up)
	c.Close()
	<-done
}

// TestKeepsTicketWhenRefusedBeforeHandshake is the device contract of
// docs/ingest.md: a device whose connection is closed before any TLS answer
// (a frontend in a stampede with no room for its handshake) keeps its
// session ticket, and its next connection resumes. Go's client would
// forget the ticket after such a failure (and pay, and make the frontend
// pay, a full handshake).
func TestKeepsTicketWhenRefusedBeforeHandshake(t *testing.T) {
	const devices, refusals = 4, 6 // fewer refusals than ticketKeepFailures, whoever gets them
	ca := tlstest.NewCA(t, "sim test CA")
	dir := t.TempDir()
	cert, key := ca.Server(t, "edge").Write(t, dir, "server")
	cfg := testConfig()
	cfg.Devices, cfg.Rate, cfg.FrameReadings = devices, 50, 5
	reg := filepath.Join(dir, "registry.json")
	if err := WriteRegistry(reg, cfg); err != nil {
		t.Fatal(err)
	}
	fe := newRealFrontend(t, reg, func(c *frontend.Config) {
		c.TLS.CertFile, c.TLS.KeyFile = cert, key
		c.LameDuck = 0
	})
	proxy := newRefusingProxy(t, fe.cfg.Listen)
	cfg.URLs, cfg.TLSCAFile = []string{"wss://" + proxy.ln.Addr().String()}, ca.WriteCA(t, dir, "ca.pem")
	f, cancel := startFleet(t, cfg)
	waitFor(t, 10*time.Second, "every device connected and acked", func() bool {
		st := f.Stats()
		return st.Connected == devices && st.Acked > 50
	})

	proxy.refuse.Store(refusals)
	connects := f.Stats().Connects
	f.Stampede()
	waitFor(t, 15*time.Second, "every device back after the refusals", func() bool {
		st := f.Stats()
		return proxy.refused.Load() == refusals && st.Connects >= connects+devices && st.Connected == devices
	})
	st := f.Stats()
	if st.ConnectFailures["tls"] != refusals {
		t.Errorf("failed TLS attempts: %d, want the %d refusals", st.ConnectFailures["tls"], refusals)
	}
	if st.TLSFull != devices || st.TLSResumed != devices {
		t.Fatalf("after %d connections closed before their handshake: %d full, %d resumed handshakes; want %d full (the first connections) and %d resumed",
			refusals, st.TLSFull, st.TLSResumed, devices, devices)
	}
	cancel()
	<-f.Done()
}

// TestSessionForgetsAfterRefusalsInARow: a session survives
// ticketKeepFailures-1 failed handshakes in a row (Go's Put(nil)), not one
// more; a handshake that works starts the count again; forget drops it at
// once.
func TestSessionForgetsAfterRefusalsInARow(t *testing.T) {
	cs := &tls.ClientSessionState{}
	var s session
	s.Put("edge", cs)
	for i := 1; i < ticketKeepFailures; i++ {
		s.Put("edge", nil)
		if _, ok := s.Get("edge"); !ok {
			t.Fatalf("session forgotten after %d failures in a row, want kept until %d", i, ticketKeepFailures)
		}
	}
	s.succeeded()
	for i := 1; i < ticketKeepFailures; i++ {
		s.Put("edge", nil)
	}
	if _, ok := s.Get("edge"); !ok {
		t.Fatal("a handshake that worked did not start the failures in a row again")
	}
	s.Put("edge", nil)
	if _, ok := s.Get("edge"); ok {
		t.Fatalf("session kept after %d failures in a row", ticketKeepFailures)
	}
	s.Put("edge", cs)
	s.forget()
	if _, ok := s.Get("edge"); ok {
		t.Fatal("forget kept the session")
	}
	s.Put("other", cs)
	if got, ok := s.Get("other"); !ok || got != cs {
		t.Fatal("a new session was not kept")
	}
}

// TestTicketRejectedOnlyByAlerts: a handshake refused by the server's TLS
// alert is a rejection (the ticket may be the cause); one closed before any
// answer, or timed out, is not.
func TestTicketRejectedOnlyByAlerts(t *testing.T) {
	ca := tlstest.NewCA(t, "sim test CA")
	client := &tls.Config{RootCAs: ca.Pool(), ServerName: "localhost"}
	handshake := func(t *testing.T, serve func(net.Conn), wait time.Duration) error {
		t.Helper()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serve(c)
		}()
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		err = tls.Client(raw, client).HandshakeContext(ctx)
		if err == nil {
			t.Fatal("handshake succeeded")
		}
		return err
	}
	cases := []struct {
		name   string
		serve  func(net.Conn)
		reject bool
	}{
		{"closed before the handshake", func(c net.Conn) { c.Close() }, false},
		{"no answer", func(c net.Conn) { time.Sleep(time.Second); c.Close() }, false},
		{"alert from the server", func(c net.Conn) {
			s := tls.Server(c, &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				return nil, errors.New("refused")
			}})
			_ = s.Handshake()
			c.Close()
		}, true},
		{"certificate the device does not trust", func(c net.Conn) {
			other := tlstest.NewCA(t, "another CA").Server(t, "edge").TLS(t)
			_ = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{other}}).Handshake()
			c.Close()
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// The cases the server answers get ample time (a loaded CI machine
			// ran tests 20 times slower than here): a handshake cut by the
			// client's deadline is not a rejection, and would fail them. Only
			// "no answer" is meant to end by the deadline.
			wait := 10 * time.Second
			if tc.name == "no answer" {
				wait = 300 * time.Millisecond
			}
			err := handshake(t, tc.serve, wait)
			if got := ticketRejected(err); got != tc.reject {
				t.Fatalf("ticketRejected(%v) = %v, want %v", err, got, tc.reject)
			}
		})
	}
}

// TestTLSDeviceOffers: -tls-max-version and -tls-key-exchanges are what a
// device offers in its ClientHello, so that a run can measure a fleet of
// trackers whose TLS stacks stop at 1.2 or offer no post-quantum key
// exchange; by default a device offers Go's (TLS 1.3, X25519MLKEM768
// first). A TLS 1.2 device resumes its session like a TLS 1.3 one.
func TestTLSDeviceOffers(t *testing.T) {
	ca := tlstest.NewCA(t, "sim test CA")
	hellos := make(chan *tls.ClientHelloInfo, 4)
	srv := &tls.Config{
		Certificates: []tls.Certificate{ca.Server(t, "edge").TLS(t)},
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			hellos <- h
			return nil, nil
		},
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				// A byte after the handshake, so that a TLS 1.3 client takes in its ticket.
				if err := c.(*tls.Conn).Handshake(); err == nil {
					_, _ = c.Write([]byte{1})
					_, _ = io.Copy(io.Discard, c)
				}
			})
		}
	})
	dir := t.TempDir()
	for _, tc := range []struct {
		maxVersion, kx string
		version        uint16
		offered        []tls.CurveID
	}{
		{"", "", tls.VersionTLS13, []tls.CurveID{tls.X25519MLKEM768}},
		{"1.2", "x25519,p256", tls.VersionTLS12, []tls.CurveID{tls.X25519, tls.CurveP256}},
		{"1.3", "P256", tls.VersionTLS13, []tls.CurveID{tls.CurveP256}},
	} {
		t.Run(tc.maxVersion+"/"+tc.kx, func(t *testing.T) {
			cfg := testConfig()
			cfg.URLs = []string{"wss://" + ln.Addr().String()}
			cfg.TLSCAFile, cfg.TLSMaxVersion, cfg.TLSKeyExchanges = ca.WriteCA(t, dir, "ca.pem"), tc.maxVersion, tc.kx
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			tcl, err := newTLSClient(cfg)
			if err != nil {
				t.Fatal(err)
			}
			f := &Fleet{tls: tcl}
			d := &device{}
			dial := f.dialTLS(&net.Dialer{})
			ctx := context.WithValue(t.Context(), deviceKey{}, d)
			for i := range 2 {
				c, err := dial(ctx, "tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				if _, err := c.Read(make([]byte, 1)); err != nil {
					t.Fatal(err)
				}
				cs := c.(*tls.Conn).ConnectionState()
				c.Close()
				h := <-hellos
				if cs.Version != tc.version || cs.DidResume != (i == 1) {
					t.Errorf("connection %d: version %x resumed %v; want %x, resumed %v", i, cs.Version, cs.DidResume, tc.version, i == 1)
				}
				if len(h.SupportedCurves) < len(tc.offered) || !slices.Equal(h.SupportedCurves[:len(tc.offered)], tc.offered) {
					t.Errorf("connection %d: key exchanges offered %v, want %v first", i, h.SupportedCurves, tc.offered)
				}
				if tc.kx != "" && len(h.SupportedCurves) != len(tc.offered) {
					t.Errorf("connection %d: key exchanges offered %v, want only %v", i, h.SupportedCurves, tc.offered)
				}
			}
		})
	}
	cfg := testConfig()
	cfg.URLs = []string{"wss://" + ln.Addr().String()}
	cfg.TLSMaxVersion, cfg.TLSKeyExchanges = "1.1", "x448"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "tls-max-version") || !strings.Contains(err.Error(), "tls-key-exchanges") {
		t.Errorf("Validate with a bad version and key exchange: %v", err)
	}
}
