package tlsserve

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"time"
)

// Config is the TLS of one server: its certificate, the keys of its
// session tickets, optionally the CAs of client certificates, and the
// limits on handshakes. The zero Config serves plain TCP.
type Config struct {
	// CertFile is a PEM file holding the server's certificate, then the
	// intermediates of its chain; KeyFile holds its private key (PEM,
	// PKCS #8, SEC 1 or PKCS #1). Both or neither: with neither the server
	// speaks plain TCP (ws://). Both are read again on SIGHUP and when
	// either changes; connections already open keep what they
	// negotiated.
	CertFile string
	KeyFile  string
	// ClientCAFile is a PEM file of the CAs whose client certificates are
	// accepted; empty: no client certificate is asked for. What a
	// certificate is needed for is the owner's business (ClientAuth).
	ClientCAFile string
	// ClientAuth is how client certificates are asked for when
	// ClientCAFile is set: tls.VerifyClientCertIfGiven or
	// tls.RequireAndVerifyClientCert. The owner sets it; it is no flag.
	ClientAuth tls.ClientAuthType `json:"-"`
	// TicketKeyFile holds the keys of session tickets, in the cluster key
	// file's format (one base64 key of 32 random bytes a line; the first
	// encrypts new tickets, every one decrypts). Replicas that share it
	// resume each other's sessions, and so does a restarted process.
	// Empty: Go's own keys, made at start and rotated daily, which no
	// other process has: every restart turns resumptions into full
	// handshakes.
	TicketKeyFile string
	// MinVersion is the oldest TLS version accepted: "1.2" (the default)
	// or "1.3".
	MinVersion string
	// Poll is how often the files are checked for changes; 0: 5 s.
	Poll time.Duration `json:"-"`

	Limits
}

// Limits bound the work of TLS handshakes, which cost the CPU that the
// connections already open need. A handshake is admitted when the
// budget allows, at most MaxHandshakes run at once, and accepted
// connections wait for their turn in a backlog of Backlog; while it is
// full, no more are accepted (they wait in the kernel's accept queue). A
// connection that waits longer than half the handshake timeout, or whose
// client leaves, is closed before its handshake: no TLS, so no HTTP
// answer (docs/ingest.md says what a device does then).
type Limits struct {
	// HandshakeRate is the budget of handshakes per second, counted in
	// full handshakes (see HandshakeCost). 0: no limit.
	HandshakeRate float64
	// MaxHandshakes is the most handshakes in progress at once.
	MaxHandshakes int
	// Backlog is the most accepted connections waiting for a handshake;
	// the next wait in the kernel's accept queue, unaccepted.
	Backlog int
	// HandshakeTimeout bounds one handshake, from the client's hello to
	// the server's finished.
	HandshakeTimeout time.Duration
}

// DefaultLimits are the handshake limits of a frontend or a livefeed: 1,000
// full handshakes a second (a third of what one core of the reference
// machine does, BenchmarkHandshake: the rest is for acks; the governor
// lowers it further while the CPU is short); 1,024 in progress, because a
// handshake holds its slot for the client's round trips too (on a cellular
// link half a second or more: 1,024 slots then still pass ~2,000 a
// second); a backlog of 2,048 (with 15,000 devices connected a process
// stays under a 20,000 open-file limit); 10 s per handshake.
func DefaultLimits() Limits {
	return Limits{HandshakeRate: 1000, MaxHandshakes: 1024, Backlog: 2048, HandshakeTimeout: 10 * time.Second}
}

// Enabled reports whether the configuration serves TLS.
func (c Config) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" }

// RegisterFlags defines the TLS flags in fs, bound to c: -tls-cert,
// -tls-key, -tls-ticket-key-file, -tls-min-version, the handshake limits
// and, with clientCA, -tls-client-ca.
func (c *Config) RegisterFlags(fs *flag.FlagSet, clientCA bool) {
	fs.StringVar(&c.CertFile, "tls-cert", c.CertFile,
		"PEM `file` of the server certificate and its chain (with -tls-key: serve wss://, else ws://); reread on SIGHUP and when it changes, without dropping connections")
	fs.StringVar(&c.KeyFile, "tls-key", c.KeyFile,
		"PEM `file` of the private key of -tls-cert (ECDSA P-256 recommended); reread with it")
	if clientCA {
		fs.StringVar(&c.ClientCAFile, "tls-client-ca", c.ClientCAFile,
			"PEM `file` of the CAs that issue device certificates (mutual TLS, see -device-auth); reread with -tls-cert")
	}
	fs.StringVar(&c.TicketKeyFile, "tls-ticket-key-file", c.TicketKeyFile,
		"`file` of TLS session ticket keys shared by every replica (base64 of 32 random bytes a line; the first encrypts, all decrypt), so that devices resume their sessions across restarts and replicas; empty: per-process keys (every restart forces full handshakes)")
	fs.StringVar(&c.MinVersion, "tls-min-version", c.MinVersion,
		"oldest TLS `version` accepted: 1.2 or 1.3")
	fs.Float64Var(&c.HandshakeRate, "tls-handshake-rate", c.HandshakeRate,
		"TLS handshakes per second, counted in full handshakes (a TLS 1.2 resumption costs 0.3 of one; a TLS 1.3 one does a key exchange and costs a whole one); more wait in the backlog; 0: no limit (`number`)")
	fs.IntVar(&c.MaxHandshakes, "tls-max-handshakes", c.MaxHandshakes,
		"most TLS handshakes in progress at once (`number`)")
	fs.IntVar(&c.Backlog, "tls-handshake-backlog", c.Backlog,
		"most accepted connections waiting for a TLS handshake; past it, connections are left in the kernel's accept queue (net.core.somaxconn) until there is room; one that waited more than half of -tls-handshake-timeout here, or whose client left, is closed before its handshake (`number`)")
	fs.DurationVar(&c.HandshakeTimeout, "tls-handshake-timeout", c.HandshakeTimeout,
		"longest TLS handshake (`duration`)")
}

// Validate reports every problem of the configuration at once (the files
// are read by New).
func (c Config) Validate() error {
	var errs []error
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("tls-cert: give it and -tls-key, or neither"))
	}
	if !c.Enabled() {
		if c.ClientCAFile != "" {
			errs = append(errs, errors.New("tls-client-ca: needs -tls-cert and -tls-key"))
		}
		if c.TicketKeyFile != "" {
			errs = append(errs, errors.New("tls-ticket-key-file: needs -tls-cert and -tls-key"))
		}
	}
	if _, err := minVersion(c.MinVersion); err != nil {
		errs = append(errs, err)
	}
	if c.Enabled() {
		if c.HandshakeRate < 0 {
			errs = append(errs, fmt.Errorf("tls-handshake-rate: %v: want 0 (no limit) or more", c.HandshakeRate))
		}
		if c.MaxHandshakes < 1 {
			errs = append(errs, fmt.Errorf("tls-max-handshakes: %d: want at least 1", c.MaxHandshakes))
		}
		if c.Backlog < 1 {
			errs = append(errs, fmt.Errorf("tls-handshake-backlog: %d: want at least 1", c.Backlog))
		}
		if c.HandshakeTimeout < 100*time.Millisecond {
			errs = append(errs, fmt.Errorf("tls-handshake-timeout: %v: want at least 100ms", c.HandshakeTimeout))
		}
	}
	return errors.Join(errs...)
}

// minVersion parses MinVersion.
func minVersion(s string) (uint16, error) {
	switch s {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("tls-min-version: %q: want 1.2 or 1.3", s)
}
