package tlsserve

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
)

// Sharing a port, the configuration's checks, TLS 1.2.

// TestReusePort binds two listeners to one port with SO_REUSEPORT, which
// fails without it.
func TestReusePort(t *testing.T) {
	if !ReusePortSupported {
		t.Skip("SO_REUSEPORT: Linux only")
	}
	a, err := Listen(context.Background(), "127.0.0.1:0", true)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Listen(context.Background(), a.Addr().String(), true)
	if err != nil {
		t.Fatalf("a second listener with SO_REUSEPORT on %s: %v", a.Addr(), err)
	}
	defer b.Close()
	if _, err := Listen(context.Background(), a.Addr().String(), false); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("a listener without SO_REUSEPORT on a shared port: %v, want address in use", err)
	}
	// The kernel spreads connections over both.
	got := map[net.Listener]int{}
	accepted := make(chan net.Listener, 64)
	for _, l := range []net.Listener{a, b} {
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
				accepted <- l
			}
		}()
	}
	for range 64 {
		c, err := net.Dial("tcp", a.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	for range 64 {
		select {
		case l := <-accepted:
			got[l]++
		case <-time.After(5 * time.Second):
			t.Fatal("connections not accepted")
		}
	}
	if got[a] == 0 || got[b] == 0 {
		t.Fatalf("accepted %d and %d: the kernel did not spread 64 connections over both listeners", got[a], got[b])
	}
}

// TestConfigValidate lists what a configuration may not be.
func TestConfigValidate(t *testing.T) {
	ok := Config{CertFile: "c", KeyFile: "k", Limits: DefaultLimits()}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid: %v", err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("plain: %v", err)
	}
	for name, c := range map[string]Config{
		"cert only":      {CertFile: "c"},
		"key only":       {KeyFile: "k"},
		"ca, no tls":     {ClientCAFile: "ca"},
		"tickets no tls": {TicketKeyFile: "t"},
		"version":        {CertFile: "c", KeyFile: "k", MinVersion: "1.1", Limits: DefaultLimits()},
		"no slots":       {CertFile: "c", KeyFile: "k", Limits: Limits{Backlog: 1, HandshakeTimeout: time.Second}},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: valid, want an error", name)
		}
	}
}

// TestTLS12 checks the older version: a TLS 1.2 client is served, resumes
// across servers sharing the ticket key file as a TLS 1.3 one does, is
// charged less for it, and is refused by a server with -tls-min-version 1.3.
func TestTLS12(t *testing.T) {
	ca := tlstest.NewCA(t, "test CA")
	f := writeServer(t, ca, "edge")
	keyFile := filepath.Join(f.dir, "tickets")
	writeTicketKeys(t, keyFile, newKey(t))
	cfg := Config{CertFile: f.cert, KeyFile: f.key, TicketKeyFile: keyFile}
	a, b := startEcho(t, cfg), startEcho(t, cfg)
	sessions := tls.NewLRUClientSessionCache(2)
	c12 := clientConfig(ca, sessions)
	c12.MaxVersion = tls.VersionTLS12
	for i, e := range []*echo{a, b} {
		c, err := dial(t, e.addr, c12)
		if err != nil {
			t.Fatal(err)
		}
		c.roundTrip(t, "hello")
		cs := c.c.ConnectionState()
		c.c.Close()
		if cs.Version != tls.VersionTLS12 || cs.DidResume != (i == 1) {
			t.Fatalf("connection %d: version %x, resumed %v", i, cs.Version, cs.DidResume)
		}
		if i == 1 && HandshakeCost(cs) >= 1 {
			t.Errorf("a TLS 1.2 resumption costs %v full handshakes", HandshakeCost(cs))
		}
	}
	cfg.MinVersion = "1.3"
	only13 := startEcho(t, cfg)
	if c, err := dial(t, only13.addr, c12); err == nil {
		c.c.Close()
		t.Fatal("a TLS 1.2 client was served with -tls-min-version 1.3")
	}
}
