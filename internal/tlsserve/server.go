package tlsserve

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
)

// maxFileBytes bounds what is read of a certificate, key, CA or ticket key
// file: a chain of a few certificates is a few KiB.
const maxFileBytes = 1 << 20

// Server holds a server's TLS configuration in force and reloads it. Its
// [Server.TLSConfig] hands every handshake the configuration loaded last,
// so that a reload changes what new connections get without touching
// those already open. It is safe for concurrent use.
type Server struct {
	cfg    Config
	name   string // who serves, for logs: "frontend", "livefeed"
	logger *slog.Logger
	m      *metrics
	base   *tls.Config

	cur atomic.Pointer[tls.Config]

	mu     sync.Mutex // serialises reloads; guards loaded
	loaded map[string]os.FileInfo

	reloadsOK, reloadsFailed atomic.Uint64
}

// Reloads returns how many loads of the files succeeded and failed so far
// (the first, in New, included), as <namespace>_tls_reloads_total counts
// them.
func (s *Server) Reloads() (ok, failed uint64) { return s.reloadsOK.Load(), s.reloadsFailed.Load() }

// New reads cfg's files and returns a server of that TLS; name says whose
// it is in logs, and its metrics are registered with reg under namespace
// (drover_frontend: drover_frontend_tls_*). A file that cannot be read or
// parsed is an error: a server must not start without the TLS it was told
// to serve. New returns nil, nil when cfg serves plain TCP.
func New(cfg Config, name, namespace string, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 5 * time.Second
	}
	m, err := newMetrics(namespace, reg)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, name: name, logger: logger, m: m, loaded: map[string]os.FileInfo{}}
	vmin, _ := minVersion(cfg.MinVersion) // checked by Validate
	s.base = &tls.Config{
		MinVersion: vmin,
		// Every handshake takes the configuration loaded last. Without a
		// ticket key file the session ticket keys are this base's own,
		// which Go makes and rotates, and a reload keeps them.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return s.cur.Load(), nil },
	}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// TLSConfig returns the configuration to serve with (tls.Server,
// tls.NewListener). It is the same for the life of the server; what it
// hands each handshake follows the reloads.
func (s *Server) TLSConfig() *tls.Config { return s.base }

// Run reloads the files on SIGHUP and when one of them changes, until ctx
// ends. A reload that fails is logged and counted, and the configuration
// in force stays.
func (s *Server) Run(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(s.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			s.reloadAndLog("SIGHUP")
		case <-t.C:
			if s.changed() {
				s.reloadAndLog("file changed")
			}
		}
	}
}

// Reload reads the files again now; on failure the configuration in force
// stays and the error says why.
func (s *Server) Reload() error { return s.reload() }

func (s *Server) reloadAndLog(why string) {
	if err := s.reload(); err != nil {
		s.logger.Error(s.name+": TLS reload failed; keeping the certificate and keys in force", "trigger", why, "err", err)
		return
	}
	leaf := s.cur.Load().Certificates[0].Leaf
	s.logger.Info(s.name+": TLS certificate and keys reloaded", "trigger", why, "cert", s.cfg.CertFile,
		"subject", leaf.Subject.String(), "not_after", leaf.NotAfter)
}

// files are the files a reload reads.
func (s *Server) files() []string {
	fs := []string{s.cfg.CertFile, s.cfg.KeyFile}
	if s.cfg.ClientCAFile != "" {
		fs = append(fs, s.cfg.ClientCAFile)
	}
	if s.cfg.TicketKeyFile != "" {
		fs = append(fs, s.cfg.TicketKeyFile)
	}
	return fs
}

// changed reports whether a file differs from what the last reload read.
func (s *Server) changed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files() {
		st, err := os.Stat(f)
		if err != nil {
			continue // gone for a moment (a replacement in progress): wait
		}
		if daemon.FileChanged(s.loaded[f], st) {
			return true
		}
	}
	return false
}

// reload builds a new configuration from the files and puts it in force.
func (s *Server) reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// What is read now is what the next change is compared with, loaded or
	// not: a broken file is not retried every tick, only once it changes.
	for _, f := range s.files() {
		if st, err := os.Stat(f); err == nil {
			s.loaded[f] = st
		}
	}
	c, expiry, err := s.build()
	if err != nil {
		s.m.reloads.WithLabelValues("error").Inc()
		s.reloadsFailed.Add(1)
		return err
	}
	s.cur.Store(c)
	s.m.reloads.WithLabelValues("ok").Inc()
	s.reloadsOK.Add(1)
	s.m.certExpiry.Set(float64(expiry.Unix()))
	return nil
}

// build reads every file into a configuration.
func (s *Server) build() (*tls.Config, time.Time, error) {
	certPEM, err := readFile(s.cfg.CertFile)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("tls-cert: %w", err)
	}
	keyPEM, err := readFile(s.cfg.KeyFile)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("tls-key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	clear(keyPEM)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("tls-cert %s and tls-key %s: %w", s.cfg.CertFile, s.cfg.KeyFile, err)
	}
	leaf := cert.Leaf // parsed by X509KeyPair since Go 1.23
	if now := time.Now(); now.After(leaf.NotAfter) {
		// Serving it would fail every client that checks: say so loudly,
		// but serve it (a clock problem must not take the edge down).
		s.logger.Error(s.name+": TLS certificate has expired", "cert", s.cfg.CertFile, "not_after", leaf.NotAfter)
	}
	warnReadable(s.logger, s.name, s.cfg.KeyFile)
	c := s.base.Clone()
	c.GetConfigForClient = nil
	c.Certificates = []tls.Certificate{cert}
	// WebSocket upgrades are HTTP/1.1.
	c.NextProtos = []string{"http/1.1"}
	if s.cfg.ClientCAFile != "" {
		caPEM, err := readFile(s.cfg.ClientCAFile)
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, time.Time{}, fmt.Errorf("tls-client-ca %s: no PEM certificate in it", s.cfg.ClientCAFile)
		}
		c.ClientCAs = pool
		c.ClientAuth = s.cfg.ClientAuth
		if c.ClientAuth == tls.NoClientCert {
			c.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	if s.cfg.TicketKeyFile != "" {
		keys, err := readTicketKeys(s.cfg.TicketKeyFile)
		if err != nil {
			return nil, time.Time{}, err
		}
		warnReadable(s.logger, s.name, s.cfg.TicketKeyFile)
		c.SetSessionTicketKeys(keys)
		for i := range keys {
			clear(keys[i][:])
		}
	}
	return c, leaf.NotAfter, nil
}

// readTicketKeys reads a ticket key file: the cluster key file's format
// (clusterlink.ParseKeys), so that both are made and rotated alike.
func readTicketKeys(path string) ([][32]byte, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls-ticket-key-file: %w", err)
	}
	keys, err := clusterlink.ParseKeys(data)
	clear(data)
	if err != nil {
		return nil, fmt.Errorf("tls-ticket-key-file %s: %w", path, err)
	}
	out := make([][32]byte, len(keys))
	for i, k := range keys {
		out[i] = k
	}
	return out, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxFileBytes)
	}
	return b, nil
}

// warnedReadable holds the paths already warned about, so that a reload
// every few seconds does not repeat the warning.
var warnedReadable sync.Map

// warnReadable warns once when a secret file can be read by others than
// its owner. A warning, not a refusal: a Kubernetes Secret volume is 0644
// unless its defaultMode says otherwise.
func warnReadable(logger *slog.Logger, name, path string) {
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm()&0o077 == 0 {
		return
	}
	if _, seen := warnedReadable.LoadOrStore(path, true); seen {
		return
	}
	logger.Warn(name+": a TLS secret file is readable by others than its owner; chmod 600 it (or set the Secret volume's defaultMode)",
		"file", path, "mode", st.Mode().Perm().String())
}
