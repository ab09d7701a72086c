package frontend

import (
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/tlsserve"
	"github.com/drover-telemetry/drover/internal/tlsserve/tlstest"
)

// tlsFiles are a frontend's certificate, key and ticket keys, made by a
// test CA in a test directory.
type tlsFiles struct {
	ca                    *tlstest.CA
	dir, cert, key, ticks string
}

func newTLSFiles(t testing.TB, cn string) *tlsFiles {
	t.Helper()
	ca := tlstest.NewCA(t, "frontend test CA")
	dir := t.TempDir()
	cert, key := ca.Server(t, cn).Write(t, dir, "server")
	return &tlsFiles{ca: ca, dir: dir, cert: cert, key: key, ticks: filepath.Join(dir, "tickets")}
}

// withTLS serves wss:// with the files (and their ticket keys when
// tickets), the files polled every 20 ms.
func (tf *tlsFiles) withTLS(tickets bool) func(*Config) {
	return func(c *Config) {
		c.TLS.CertFile, c.TLS.KeyFile, c.TLS.Poll = tf.cert, tf.key, 20*time.Millisecond
		if tickets {
			c.TLS.TicketKeyFile = tf.ticks
		}
	}
}

// tlsDialer is a device's TLS dialer trusting the test CA, with a session
// cache (nil: none) and a client certificate (nil: none).
func (tf *tlsFiles) tlsDialer(sessions tls.ClientSessionCache, cert *tls.Certificate) *websocket.Dialer {
	cfg := &tls.Config{RootCAs: tf.ca.Pool(), ClientSessionCache: sessions}
	if cert != nil {
		// Sent whatever CAs the server names, as a device with one
		// certificate does (Go's client would rather send none).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return &websocket.Dialer{HandshakeTimeout: 5 * time.Second, TLSClientConfig: cfg}
}

// wssURL is the frontend's wss:// URL.
func (e *env) wssURL() string { return "wss://" + e.f.Addr().String() + IngestPath }

// dialWith connects device i with d (its token unless token is "-").
func (e *env) dialWith(d *websocket.Dialer, i int, token string) (*websocket.Conn, *http.Response, error) {
	h := http.Header{}
	h.Set(HeaderDevice, deviceID(i))
	if token != "-" {
		h.Set("Authorization", "Bearer "+token)
	}
	return d.Dial(e.wssURL(), h)
}

func peerCN(ws *websocket.Conn) string {
	return ws.NetConn().(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName
}

func resumed(ws *websocket.Conn) bool {
	return ws.NetConn().(*tls.Conn).ConnectionState().DidResume
}

// TestTLSReloadKeepsDevices replaces the certificate of a serving frontend:
// a device connected before goes on sending and being acked, a new one
// gets the new certificate, and a certificate that does not load leaves
// the one in force.
func TestTLSReloadKeepsDevices(t *testing.T) {
	tf := newTLSFiles(t, "first")
	e := startWith(t, 2, tf.withTLS(false))
	d := tf.tlsDialer(nil, nil)
	old, _, err := e.dialWith(d, 0, tokenOf(0))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	ack(t, old, false, readings(time.Now(), 1), 1)
	if cn := peerCN(old); cn != "first" {
		t.Fatalf("served %q, want first", cn)
	}
	reloads := func(r string) float64 { return e.gathered(t, "drover_frontend_tls_reloads_total", "result", r) }

	tf.ca.Server(t, "second").Write(t, tf.dir, "server")
	waitFor(t, 5*time.Second, "the certificate reloaded", func() bool { return reloads("ok") >= 2 })
	ack(t, old, false, readings(time.Now(), 2), 2) // the old connection is not dropped
	fresh, _, err := e.dialWith(d, 1, tokenOf(1))
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	if cn := peerCN(fresh); cn != "second" {
		t.Fatalf("a new device got %q, want second", cn)
	}
	ack(t, fresh, false, readings(time.Now(), 1), 1)

	tlstest.WriteFileAtomic(t, tf.key, []byte("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n"), 0o600)
	waitFor(t, 5*time.Second, "the failed reload", func() bool { return reloads("error") >= 1 })
	again, _, err := e.dialWith(d, 1, tokenOf(1))
	if err != nil {
		t.Fatalf("after a broken key file: %v", err)
	}
	defer again.Close()
	if cn := peerCN(again); cn != "second" {
		t.Fatalf("after a broken key file a new device got %q, want second (still in force)", cn)
	}
	ack(t, old, false, readings(time.Now(), 3), 3)
	if e.f.scheme() != "wss" {
		t.Errorf("scheme %q", e.f.scheme())
	}
}

// TestTLSResumptionAcrossRestart restarts a frontend on its port: with the
// shared ticket key file, a device that was connected before resumes its
// TLS session; without it (Go's per-process keys), it needs a full
// handshake.
func TestTLSResumptionAcrossRestart(t *testing.T) {
	for _, tickets := range []bool{true, false} {
		name := map[bool]string{true: "ticket key file", false: "per-process keys"}[tickets]
		t.Run(name, func(t *testing.T) {
			tf := newTLSFiles(t, "edge")
			k, err := clusterlink.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			if err := clusterlink.WriteKeyFile(tf.ticks, k); err != nil {
				t.Fatal(err)
			}
			cfg := testConfig(t, 1)
			tf.withTLS(tickets)(&cfg)
			first := start(t, cfg)
			sessions := tls.NewLRUClientSessionCache(4)
			d := tf.tlsDialer(sessions, nil)
			ws, _, err := first.dialWith(d, 0, tokenOf(0))
			if err != nil {
				t.Fatal(err)
			}
			ack(t, ws, false, readings(time.Now(), 1), 1) // reading the ack takes in the ticket
			if resumed(ws) {
				t.Fatal("the first connection resumed")
			}
			ws.Close()
			// The same process resumes whatever its keys.
			ws, _, err = first.dialWith(d, 0, tokenOf(0))
			if err != nil {
				t.Fatal(err)
			}
			ack(t, ws, false, readings(time.Now(), 2), 2)
			if !resumed(ws) {
				t.Fatal("a reconnection to the same process did not resume")
			}
			ws.Close()

			// Restart on the same address, queue and files.
			if _, err := first.stop(t); err != nil {
				t.Fatal(err)
			}
			cfg.Listen = first.f.Addr().String()
			second := start(t, cfg)
			ws, _, err = second.dialWith(d, 0, tokenOf(0))
			if err != nil {
				t.Fatal(err)
			}
			defer ws.Close()
			ack(t, ws, false, readings(time.Now(), 3), 3)
			if got := resumed(ws); got != tickets {
				t.Fatalf("after the restart resumed=%v, want %v", got, tickets)
			}
			res := second.gathered(t, "drover_frontend_tls_handshakes_total", "result", "resumed")
			full := second.gathered(t, "drover_frontend_tls_handshakes_total", "result", "full")
			if (tickets && (res != 1 || full != 0)) || (!tickets && (res != 0 || full != 1)) {
				t.Errorf("restarted frontend counted %v resumed, %v full", res, full)
			}
		})
	}
}

// TestDeviceCertificates runs -device-auth cert and cert-or-token: a device
// with a certificate of the device CA naming a registered device connects
// without a token; an unregistered one, a certificate of another CA, none
// at all, or a header naming another device than the certificate is
// refused. With cert-or-token a device without a certificate uses its token.
func TestDeviceCertificates(t *testing.T) {
	tf := newTLSFiles(t, "edge")
	devCA, other := tlstest.NewCA(t, "device CA"), tlstest.NewCA(t, "other CA")
	caFile := devCA.WriteCA(t, tf.dir, "devices.pem")
	certOf := func(ca *tlstest.CA, id string) *tls.Certificate {
		c := ca.Client(t, id).TLS(t)
		return &c
	}
	for _, mode := range []string{DeviceAuthCert, DeviceAuthCertOrToken} {
		t.Run(mode, func(t *testing.T) {
			e := startWith(t, 3, func(c *Config) {
				tf.withTLS(false)(c)
				c.TLS.ClientCAFile, c.DeviceAuth = caFile, mode
			})
			// Device 0 by its certificate alone: no header, no token.
			ws, _, err := tf.tlsDialer(nil, certOf(devCA, deviceID(0))).Dial(e.wssURL(), nil)
			if err != nil {
				t.Fatalf("a registered device with its certificate: %v", err)
			}
			ack(t, ws, false, readings(time.Now(), 1), 1)
			ws.Close()
			// The header may name the device too; a bad token is ignored.
			ws, _, err = e.dialWith(tf.tlsDialer(nil, certOf(devCA, deviceID(1))), 1, "wrong")
			if err != nil {
				t.Fatalf("certificate and matching header: %v", err)
			}
			ws.Close()

			refused401 := func(name string, d *websocket.Dialer, i int, token, reason string) {
				t.Helper()
				before := e.refusals(reason)
				_, resp, err := e.dialWith(d, i, token)
				if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
					t.Errorf("%s: %v (response %v), want 401", name, err, resp)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				if strings.TrimSpace(string(body)) != textUnauthorized {
					t.Errorf("%s: body %q", name, body)
				}
				if e.refusals(reason) != before+1 {
					t.Errorf("%s: refusals{%s} did not count it", name, reason)
				}
			}
			refused401("unregistered device", tf.tlsDialer(nil, certOf(devCA, "dev-99")), 99, "-", reasonUnknownDevice)
			refused401("header names another device", tf.tlsDialer(nil, certOf(devCA, deviceID(1))), 2, tokenOf(2), reasonCertMismatch)

			// A certificate of another CA never passes the handshake.
			if _, _, err := e.dialWith(tf.tlsDialer(nil, certOf(other, deviceID(0))), 0, tokenOf(0)); err == nil {
				t.Error("a certificate of another CA was accepted")
			}
			noCert := tf.tlsDialer(nil, nil)
			ws, resp, err := e.dialWith(noCert, 2, tokenOf(2))
			switch mode {
			case DeviceAuthCert:
				if err == nil {
					ws.Close()
					t.Error("a device without a certificate was accepted under -device-auth cert")
				} else if resp != nil {
					t.Errorf("without a certificate: HTTP %d, want the handshake refused", resp.StatusCode)
				}
			case DeviceAuthCertOrToken:
				if err != nil {
					t.Fatalf("cert-or-token, token and no certificate: %v", err)
				}
				ack(t, ws, false, readings(time.Now(), 1), 1)
				ws.Close()
				refused401("no certificate, bad token", noCert, 2, "wrong", reasonBadToken)
			}
		})
	}
}

// TestPlainFrontendRefusesTLS checks that a frontend without a certificate
// serves ws:// only: a wss:// client fails its handshake.
func TestPlainFrontendRefusesTLS(t *testing.T) {
	e := startWith(t, 1, nil)
	tf := newTLSFiles(t, "edge")
	_, _, err := e.dialWith(tf.tlsDialer(nil, nil), 0, tokenOf(0))
	var re tls.RecordHeaderError
	if err == nil || !errors.As(err, &re) && !strings.Contains(err.Error(), "tls") {
		t.Fatalf("wss:// to a plain frontend: %v, want a TLS failure", err)
	}
	if e.f.scheme() != "ws" {
		t.Errorf("scheme %q", e.f.scheme())
	}
}

// TestReusePortSharesDevices runs two frontends, each with its own queue
// and id, on one port with -reuse-port: both start, the kernel spreads
// devices over them, and each acks the devices it holds.
func TestReusePortSharesDevices(t *testing.T) {
	if !tlsserve.ReusePortSupported {
		t.Skip("SO_REUSEPORT: Linux only")
	}
	const n = 40
	a := startWith(t, n, func(c *Config) { c.ReusePort = true })
	b := startWith(t, n, func(c *Config) {
		c.ReusePort, c.Listen, c.ID = true, a.f.Addr().String(), "frontend-test-2"
		c.Registry = a.cfg.Registry
	})
	for i := range n {
		ws := a.connect(t, i, false) // the same address as b's
		ack(t, ws, false, readings(time.Now(), 1), 1)
	}
	na, nb := a.metric(a.f.m.connections), b.metric(b.f.m.connections)
	if na+nb != n || na == 0 || nb == 0 {
		t.Fatalf("connections %v and %v: want %d spread over both frontends", na, nb, n)
	}
}

// TestDeviceCertificatesFollowTheRegistry: a connection made with a
// device certificate has no token for a registry change to revoke; a
// reload of the registry closes it (4403) only when its device left the
// registry. A device whose token changed meanwhile keeps its connection.
func TestDeviceCertificatesFollowTheRegistry(t *testing.T) {
	tf := newTLSFiles(t, "edge")
	devCA := tlstest.NewCA(t, "device CA")
	caFile := devCA.WriteCA(t, tf.dir, "devices.pem")
	e := startWith(t, 3, func(c *Config) {
		tf.withTLS(false)(c)
		c.TLS.ClientCAFile, c.DeviceAuth = caFile, DeviceAuthCert
	})
	conns := make([]*websocket.Conn, 3)
	for i := range conns {
		cert := devCA.Client(t, deviceID(i)).TLS(t)
		ws, _, err := tf.tlsDialer(nil, &cert).Dial(e.wssURL(), nil)
		if err != nil {
			t.Fatalf("device %d by its certificate: %v", i, err)
		}
		t.Cleanup(func() { ws.Close() })
		ack(t, ws, false, readings(time.Now(), 1), 1)
		conns[i] = ws
	}
	devs := []registry.Device{
		{ID: deviceID(1), TokenSHA256: registry.HashToken("a new token")},
		{ID: deviceID(2), TokenSHA256: registry.HashToken(tokenOf(2))},
	}
	if err := registry.Write(e.cfg.Registry, devs); err != nil {
		t.Fatal(err)
	}
	if text := expectClose(t, conns[0], CloseDeviceNotActive); text != "device removed from the registry" {
		t.Errorf("removed: %q", text)
	}
	// A second reload (device 0 back) is applied by the same goroutine
	// after the first one's checks of every connection have finished.
	devs = append(devs, registry.Device{ID: deviceID(0), TokenSHA256: registry.HashToken(tokenOf(0))})
	if err := registry.Write(e.cfg.Registry, devs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the second reload", func() bool {
		_, ok := e.f.store.Current().Lookup(deviceID(0))
		return ok
	})
	ack(t, conns[1], false, readings(time.Now(), 2), 2)
	ack(t, conns[2], false, readings(time.Now(), 2), 2)
	if n := e.refusals(reasonRevoked); n != 0 {
		t.Errorf("refusals{revoked} = %v: a certificate's connection was checked as a token's", n)
	}
}
