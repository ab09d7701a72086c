package clusterlink

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/daemon"
)

const (
	sideServer = "server"
	sideClient = "client"

	// DefaultHandshakeTimeout bounds a connection's TLS and ZMTP
	// handshakes; a peer that has not finished by then is dropped.
	DefaultHandshakeTimeout = 10 * time.Second
	// leafLifetime is how long a minted certificate is valid; a process
	// mints a new one when half of it has passed.
	leafLifetime = 24 * time.Hour
	// reloadEvery is how often, at most, the key file is checked for a
	// change (when a connection is made).
	reloadEvery = 5 * time.Second
	// maxHandshakes bounds the handshakes under way on one listener; past
	// it a new connection is closed at once (counted as too_many).
	maxHandshakes = 64
)

var errWrongRole = errors.New("clusterlink: the peer's certificate is not for the role this link expects")

// Security is one component's side of the cluster links: its role, its
// certificate (minted from the current cluster key), the keys it trusts,
// and the zmq4 transports that apply them. Make one per component with
// [New]; [Security.Endpoint] turns an endpoint of a flag into the one to
// give zmq4, [Security.Listen] gives a listener for a publisher written on
// zmq4.Open. It is safe for concurrent use.
type Security struct {
	role     Role
	id       string
	log      *slog.Logger
	m        *metrics
	refusals *refusalLog
	insecure bool
	keyFile  string

	handshakeTimeout time.Duration
	maxMessage       int // MaxMessageBytes; less in tests
	now              func() time.Time

	mu        sync.Mutex // serialises reloads and minting
	keys      atomic.Pointer[keyring]
	leaf      atomic.Pointer[minted]
	fileInfo  os.FileInfo
	lastCheck time.Time

	tmu        sync.Mutex
	transports map[string]*linkTransport
}

type minted struct {
	cert    *tls.Certificate
	renewAt time.Time
}

// New loads cfg's keys (or notes that links are insecure, with a warning)
// and returns the Security of a component of role named id. logger nil
// discards; reg nil keeps the metrics unregistered; metrics already
// registered by another component of the process are shared.
func New(cfg Config, role Role, id string, logger *slog.Logger, reg prometheus.Registerer) (*Security, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !role.valid() {
		return nil, fmt.Errorf("clusterlink: unknown role %q", role)
	}
	if id == "" {
		return nil, errors.New("clusterlink: empty component id")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Security{
		role: role, id: id, log: logger, m: newMetrics(reg), refusals: newRefusalLog(),
		insecure: cfg.Insecure, keyFile: cfg.KeyFile,
		handshakeTimeout: DefaultHandshakeTimeout, maxMessage: MaxMessageBytes, now: time.Now,
		transports: map[string]*linkTransport{},
	}
	s.m.insecure.WithLabelValues(string(role)).Set(0)
	if cfg.Insecure {
		s.m.insecure.WithLabelValues(string(role)).Set(1)
		logger.Warn("cluster links are NOT authenticated and NOT encrypted (-insecure-links): anyone who can reach this process's ZeroMQ ports "+
			"can inject readings for any device, read the live stream and pose as a storage writer; for a development machine only",
			"role", role)
		return s, nil
	}
	keys := cfg.Keys
	source := "memory"
	if cfg.KeyFile != "" {
		var info os.FileInfo
		var err error
		if keys, info, err = ReadKeyFile(cfg.KeyFile); err != nil {
			return nil, err
		}
		s.fileInfo, s.lastCheck, source = info, time.Now(), cfg.KeyFile
		if readableByOthers(info) {
			logger.Warn("cluster key file is readable by other users than its owner; make it 0400 or 0600 (a Kubernetes Secret: defaultMode: 0400)",
				"file", cfg.KeyFile, "mode", info.Mode().Perm().String())
		}
	}
	kr, err := newKeyring(keys)
	if err != nil {
		return nil, err
	}
	s.keys.Store(kr)
	if _, err := s.certificate(); err != nil {
		return nil, err
	}
	fps := kr.fingerprints()
	logger.Info("cluster links: mutual TLS 1.3", "role", role, "keys", source, "current_key", fps[0], "also_accepted", strings.Join(fps[1:], ","))
	return s, nil
}

// Insecure reports whether links run without authentication.
func (s *Security) Insecure() bool { return s.insecure }

// Close unregisters what the Security lent to zmq4: endpoints it rewrote
// can no longer be dialled or bound. Close the sockets first.
func (s *Security) Close() {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	for _, t := range s.transports {
		t.sec.Store(nil)
	}
}

// certificate returns this process's certificate, minting a new one when
// half of the current one's life has passed.
func (s *Security) certificate() (*tls.Certificate, error) {
	now := s.now()
	if m := s.leaf.Load(); m != nil && now.Before(m.renewAt) {
		return m.cert, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.leaf.Load(); m != nil && now.Before(m.renewAt) {
		return m.cert, nil
	}
	return s.mintLocked(now)
}

func (s *Security) mintLocked(now time.Time) (*tls.Certificate, error) {
	c, err := mintLeaf(s.keys.Load().authorities, s.role, s.id, now, leafLifetime)
	if err != nil {
		return nil, fmt.Errorf("clusterlink: %w", err)
	}
	s.leaf.Store(&minted{cert: c, renewAt: now.Add(leafLifetime / 2)})
	return c, nil
}

// maybeReload reads the key file again when it has changed, at most every
// reloadEvery. A file that no longer parses keeps the keys in use (an
// error log says so).
func (s *Security) maybeReload() {
	if s.keyFile == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(s.lastCheck) < reloadEvery {
		return
	}
	s.lastCheck = now
	info, err := os.Stat(s.keyFile)
	if err != nil || !daemon.FileChanged(s.fileInfo, info) {
		if err != nil && s.refusals.allow("reload "+s.keyFile) {
			s.log.Error("cluster key file unreadable; keeping the keys in use", "file", s.keyFile, "err", err)
		}
		return
	}
	keys, newInfo, err := ReadKeyFile(s.keyFile)
	if err != nil {
		s.fileInfo = info // not again until it changes again
		s.log.Error("cluster key file changed and does not parse; keeping the keys in use", "err", err)
		return
	}
	kr, err := newKeyring(keys)
	if err != nil {
		s.fileInfo = info
		s.log.Error("cluster key file changed; cannot use its keys; keeping the keys in use", "err", err)
		return
	}
	old := s.keys.Swap(kr)
	s.fileInfo = newInfo
	if _, err := s.mintLocked(now); err != nil {
		s.keys.Store(old)
		s.log.Error("cluster key file changed; cannot mint a certificate with its current key; keeping the keys in use", "err", err)
		return
	}
	fps := kr.fingerprints()
	s.log.Info("cluster keys reloaded", "file", s.keyFile, "current_key", fps[0], "also_accepted", strings.Join(fps[1:], ","))
}

func (s *Security) serverConfig(link Link) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              s.keys.Load().pool,
		GetCertificate:         func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.certificate() },
		SessionTicketsDisabled: true,
		Time:                   s.now,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || cs.PeerCertificates[0].VerifyHostname(link.Client.dnsName()) != nil {
				return errWrongRole
			}
			return nil
		},
	}
}

func (s *Security) clientConfig(link Link) *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		RootCAs:                s.keys.Load().pool,
		ServerName:             link.Server.dnsName(),
		GetClientCertificate:   func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return s.certificate() },
		SessionTicketsDisabled: true,
		Time:                   s.now,
	}
}

// refuse counts and (rate-limited) logs a refused connection.
func (s *Security) refuse(link Link, side, source, reason string, err error) {
	s.m.refused.WithLabelValues(link.Name, side, reason).Inc()
	s.logRefusal(link, side, source, reason, err)
}

// classify names why a handshake failed, for the metric.
func classify(err error, timedOut bool) string {
	var (
		rhe tls.RecordHeaderError
		uae x509.UnknownAuthorityError
		cie x509.CertificateInvalidError
		hne x509.HostnameError
		ope *net.OpError
		ne  net.Error
	)
	switch {
	case timedOut:
		return "timeout"
	case errors.As(err, &rhe):
		return "not_tls"
	case errors.As(err, &uae):
		return "unknown_authority"
	case errors.As(err, &cie) && cie.Reason == x509.Expired:
		return "expired"
	case errors.As(err, &hne), errors.Is(err, errWrongRole):
		return "wrong_role"
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return "no_certificate"
	case errors.As(err, &ope) && ope.Op == "remote error":
		return "peer_refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "closed"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other"
}

// hostOf is the host of a network address (the source of a connection,
// without its port, which changes with every attempt).
func hostOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
