package sim

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// deviceKey carries the dialing device in the context of a WebSocket dial,
// so that the shared dialer's TLS function uses that device's session and
// certificate.
type deviceKey struct{}

// tlsClient is what the fleet's devices share for wss://: the trusted
// roots, the server name, and the CA that issues the devices' certificates
// when they authenticate with one.
type tlsClient struct {
	base   *tls.Config
	resume bool
	ca     *x509.Certificate // nil: devices present no certificate
	caKey  any
}

// newTLSClient reads the configuration's CA files.
func newTLSClient(cfg Config) (*tlsClient, error) {
	tc := &tlsClient{base: &tls.Config{ServerName: cfg.TLSServerName}, resume: !cfg.TLSNoResume}
	var err error
	if tc.base.MaxVersion, err = tlsVersion(cfg.TLSMaxVersion); err != nil {
		return nil, fmt.Errorf("tls-max-version: %w", err)
	}
	if tc.base.CurvePreferences, err = keyExchanges(cfg.TLSKeyExchanges); err != nil {
		return nil, fmt.Errorf("tls-key-exchanges: %w", err)
	}
	if cfg.TLSCAFile != "" {
		pem, err := os.ReadFile(cfg.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls-ca %s: no PEM certificate in it", cfg.TLSCAFile)
		}
		tc.base.RootCAs = pool
	}
	if cfg.TLSDeviceCACert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.TLSDeviceCACert, cfg.TLSDeviceCAKey)
		if err != nil {
			return nil, fmt.Errorf("tls-device-ca-cert: %w", err)
		}
		tc.ca, tc.caKey = pair.Leaf, pair.PrivateKey
	}
	return tc, nil
}

// tlsVersion parses a -tls-max-version: "" (Go's highest), "1.3" or "1.2".
func tlsVersion(s string) (uint16, error) {
	switch s {
	case "":
		return 0, nil
	case "1.3":
		return tls.VersionTLS13, nil
	case "1.2":
		return tls.VersionTLS12, nil
	}
	return 0, fmt.Errorf("%q: want 1.2 or 1.3", s)
}

// keyExchangeNames are the key exchanges a simulated device can offer.
var keyExchangeNames = map[string]tls.CurveID{
	"x25519mlkem768": tls.X25519MLKEM768,
	"x25519":         tls.X25519,
	"p256":           tls.CurveP256,
	"p384":           tls.CurveP384,
}

// keyExchanges parses a -tls-key-exchanges list; nil for "" (Go's).
func keyExchanges(s string) ([]tls.CurveID, error) {
	if s == "" {
		return nil, nil
	}
	var ids []tls.CurveID
	for _, name := range strings.Split(s, ",") {
		id, ok := keyExchangeNames[strings.ToLower(strings.TrimSpace(name))]
		if !ok {
			return nil, fmt.Errorf("%q: want x25519mlkem768, x25519, p256 or p384", name)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// ticketKeepFailures is how many failed handshakes in a row a device's
// session survives when none of them was the server's answer (a TLS
// alert): connections closed, reset or timed out before any, which is how
// a frontend refuses a handshake it has no room for. A server that
// rejects a ticket either ignores it (a full handshake: TLS 1.3 servers
// do when they cannot decrypt it) or aborts with an alert (a binder that
// does not verify, RFC 8446 4.2.11); this bound is for the one that
// closes instead. In a stampede a device fails several times in a row
// (the full run of scripts/bench-conns.sh connect counted ~3 failures per
// connection made), so the bound is well above that: 8 failures span ~25
// s of the device's backoff.
const ticketKeepFailures = 8

// session is a device's TLS session cache: the one session of the last
// server name it talked to, as a device with room for one ticket keeps it.
//
// Go's client calls Put(key, nil) after every failed handshake that
// offered the session, whatever failed (crypto/tls, "If we got a
// handshake failure when resuming a session, throw away the session
// ticket"): a connection that a frontend in a stampede closes before its
// handshake would cost the device its ticket, its next attempt would be a
// full handshake, which costs the frontend more CPU, so more attempts
// fail. So session keeps its ticket across those failures, as embedded TLS
// stacks (mbedTLS, wolfSSL) let the application do, and drops it when the
// server answered with an alert ([session.forget], called by dialTLS) or
// after ticketKeepFailures failures in a row (docs/ingest.md, the device
// contract).
type session struct {
	mu    sync.Mutex
	key   string
	cs    *tls.ClientSessionState
	fails int // failed handshakes in a row since cs was kept or last worked
}

// Get returns the session for key, if it is the one kept.
func (s *session) Get(key string) (*tls.ClientSessionState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cs == nil || s.key != key {
		return nil, false
	}
	return s.cs, true
}

// Put keeps cs for key. A nil cs (Go: forget it) is honoured only after
// ticketKeepFailures of them in a row for the session kept.
func (s *session) Put(key string, cs *tls.ClientSessionState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cs == nil && key == s.key && s.cs != nil {
		s.fails++
		if s.fails < ticketKeepFailures {
			return
		}
	}
	s.key, s.cs, s.fails = key, cs, 0
}

// succeeded notes a handshake that worked: the failures in a row are over.
func (s *session) succeeded() {
	s.mu.Lock()
	s.fails = 0
	s.mu.Unlock()
}

// forget drops the session: the server refused the handshake with an
// answer, which may be about the ticket.
func (s *session) forget() {
	s.mu.Lock()
	s.key, s.cs, s.fails = "", nil, 0
	s.mu.Unlock()
}

// ticketRejected reports whether a failed handshake was refused by a TLS
// alert, sent by the server or by the device (a certificate it does not
// trust, a message that does not verify): what a server does about a
// ticket it cannot take and will not ignore. A connection closed, reset
// or timed out without one is not: that is a server with no room, or the
// network.
func ticketRejected(err error) bool {
	var op *net.OpError
	var verr *tls.CertificateVerificationError
	return errors.As(err, &verr) || (errors.As(err, &op) && (op.Op == "remote error" || op.Op == "local error"))
}

// dialTLS dials addr and does the TLS handshake as the device in ctx:
// with its session (resumption) and, when the fleet has a device CA, its
// certificate, made at its first connection. It counts full and resumed
// handshakes.
func (f *Fleet) dialTLS(nd *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		d, _ := ctx.Value(deviceKey{}).(*device)
		raw, err := nd.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		cfg := f.tls.base.Clone()
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(addr)
			cfg.ServerName = host
		}
		if d != nil {
			if f.tls.resume {
				cfg.ClientSessionCache = &d.tlsSession
			}
			if f.tls.ca != nil {
				cert, err := f.tls.deviceCert(d)
				if err != nil {
					raw.Close()
					return nil, err
				}
				cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
			}
		}
		c := tls.Client(raw, cfg)
		if err := c.HandshakeContext(ctx); err != nil {
			raw.Close()
			if d != nil && ticketRejected(err) {
				d.tlsSession.forget()
			}
			return nil, &tlsError{err}
		}
		if d != nil {
			d.tlsSession.succeeded()
		}
		if c.ConnectionState().DidResume {
			f.c.tlsResumed.Add(1)
		} else {
			f.c.tlsFull.Add(1)
		}
		return c, nil
	}
}

// tlsError is a failed TLS handshake: refused by the server (a closed
// connection before any answer: it waited too long for its handshake; or
// an alert) or by the device (a certificate it does not trust).
type tlsError struct{ err error }

func (e *tlsError) Error() string { return "TLS handshake: " + e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// deviceCert returns the device's client certificate, issued by the
// fleet's device CA with the device id as common name on first use.
func (tc *tlsClient) deviceCert(d *device) (*tls.Certificate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tlsCert != nil {
		return d.tlsCert, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("device key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: d.id},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tc.ca, &key.PublicKey, tc.caKey)
	if err != nil {
		return nil, fmt.Errorf("device certificate: %w", err)
	}
	d.tlsCert = &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return d.tlsCert, nil
}

// isTLSError reports whether err is a failed TLS handshake.
func isTLSError(err error) bool {
	var te *tlsError
	return errors.As(err, &te)
}
