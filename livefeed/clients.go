package livefeed

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/atomicfile"
	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/daemon"
)

// AllFleets in a client's fleets gives it every fleet, present and future.
const AllFleets = "*"

// ClientEntry is one client of the clients file.
type ClientEntry struct {
	// Name identifies the client in logs and metrics; it is not secret.
	Name string `json:"name"`
	// TokenSHA256 is the hex SHA-256 of the client's secret token.
	TokenSHA256 string `json:"token_sha256"`
	// Fleets are the fleets the client may see, at least one; "*" is every
	// fleet.
	Fleets []string `json:"fleets"`
	// Expires, when set, is when the token stops being accepted (RFC 3339
	// in the file, e.g. "2026-07-01T00:00:00Z"): refused from then on, and
	// a client connected with it is closed with CloseExpired at that time.
	Expires time.Time `json:"expires,omitzero"`
}

// ClientsFile is the clients file's shape:
//
//	{"clients": [{"name": "acme-dispatch", "token_sha256": "9f86d0…", "fleets": ["acme"],
//	              "expires": "2026-07-01T00:00:00Z"},
//	             {"name": "ops", "token_sha256": "…", "fleets": ["*"]}]}
type ClientsFile struct {
	Clients []ClientEntry `json:"clients"`
}

// HashToken returns the hex SHA-256 of a token, as the clients file stores
// it (see auth.HashHex).
func HashToken(token string) string { return auth.HashHex(token) }

// WriteClientsFile writes a clients file atomically and durably
// (internal/atomicfile: temp file, fsync, rename, folder fsync), readable by
// its owner only: it holds token hashes.
func WriteClientsFile(path string, clients []ClientEntry) error {
	b, err := json.MarshalIndent(ClientsFile{Clients: clients}, "", "  ")
	if err != nil {
		return fmt.Errorf("write clients file: %w", err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write clients file: %w", err)
	}
	return nil
}

// scope is the set of fleets a client may see. Immutable.
type scope struct {
	all    bool
	fleets map[string]struct{}
	list   []string // sorted, for hello and comparisons
}

func newScope(fleets []string) *scope {
	s := &scope{fleets: make(map[string]struct{}, len(fleets))}
	for _, f := range fleets {
		if f == AllFleets {
			s.all = true
			continue
		}
		s.fleets[f] = struct{}{}
	}
	if s.all {
		s.fleets = nil
		s.list = []string{AllFleets}
		return s
	}
	s.list = sortedKeys(s.fleets)
	return s
}

// allows reports whether the scope includes fleet.
func (s *scope) allows(fleet string) bool {
	if s.all {
		return true
	}
	_, ok := s.fleets[fleet]
	return ok
}

func (s *scope) equal(o *scope) bool { return slices.Equal(s.list, o.list) }

// principal is an authenticated client identity.
type principal struct {
	name    string
	hash    auth.Digest
	scope   *scope
	expires time.Time // zero: never
}

// credentials is a loaded set of principals, keyed by token hash. Immutable.
type credentials struct {
	byHash map[auth.Digest]*principal
}

// newCredentials checks a clients file's entries. The dev token, if any,
// joins them with every fleet.
func newCredentials(entries []ClientEntry, devToken string) (*credentials, error) {
	c := &credentials{byHash: make(map[auth.Digest]*principal, len(entries)+1)}
	for i, e := range entries {
		if e.Name == "" || len(e.Name) > 128 {
			return nil, fmt.Errorf("client %d: name %q: want 1-128 characters", i, e.Name)
		}
		h, err := auth.ParseDigest(e.TokenSHA256)
		if err != nil {
			return nil, fmt.Errorf("client %q: token_sha256 must be 64 hex characters", e.Name)
		}
		if len(e.Fleets) == 0 {
			return nil, fmt.Errorf("client %q: no fleets (use \"*\" for all)", e.Name)
		}
		for _, f := range e.Fleets {
			if f == "" {
				return nil, fmt.Errorf("client %q: empty fleet name", e.Name)
			}
		}
		p := &principal{name: e.Name, hash: h, scope: newScope(e.Fleets), expires: e.Expires}
		if _, dup := c.byHash[p.hash]; dup {
			return nil, fmt.Errorf("client %q: the same token hash is listed twice", e.Name)
		}
		c.byHash[p.hash] = p
	}
	if devToken != "" {
		p := &principal{name: "dev-token", hash: auth.Hash(devToken), scope: newScope([]string{AllFleets})}
		c.byHash[p.hash] = p
	}
	return c, nil
}

// authenticate returns the principal of a token valid at now, or nil and
// why not: reasonBadToken or reasonExpired. The token is hashed first: the
// map lookup compares hashes, which tells an attacker nothing about the
// token.
func (c *credentials) authenticate(token string, now time.Time) (*principal, string) {
	if token == "" {
		return nil, reasonNoToken
	}
	p := c.byHash[auth.Hash(token)]
	switch {
	case p == nil:
		return nil, reasonBadToken
	case p.expired(now):
		return nil, reasonExpired
	}
	return p, ""
}

// expired reports whether the principal's token has expired at now.
func (p *principal) expired(now time.Time) bool {
	return !p.expires.IsZero() && !now.Before(p.expires)
}

// loadClientsFile reads and parses a clients file.
func loadClientsFile(path string) ([]ClientEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read clients file: %w", err)
	}
	var f ClientsFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse clients file %s: %w", path, err)
	}
	return f.Clients, nil
}

// authStore holds the credentials in force and reloads the clients file on
// SIGHUP and when it changes. A file that fails to load is logged and
// counted; the credentials in force stay.
type authStore struct {
	path     string
	devToken string
	logger   *slog.Logger
	cur      atomic.Pointer[credentials]
	interval time.Duration
	reloads  *prometheus.CounterVec
	// onChange is called after a successful reload, from the reload
	// goroutine.
	onChange func(*credentials)

	loaded os.FileInfo // of the file last loaded (or tried)
}

func newAuthStore(path, devToken string, logger *slog.Logger, reloads *prometheus.CounterVec) (*authStore, error) {
	s := &authStore{path: path, devToken: devToken, logger: logger, interval: 2 * time.Second, reloads: reloads}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *authStore) current() *credentials { return s.cur.Load() }

func (s *authStore) reload() error {
	var entries []ClientEntry
	if s.path != "" {
		st, err := os.Stat(s.path)
		if err != nil {
			s.reloads.WithLabelValues("error").Inc()
			return fmt.Errorf("stat clients file: %w", err)
		}
		s.loaded = st
		if entries, err = loadClientsFile(s.path); err != nil {
			s.reloads.WithLabelValues("error").Inc()
			return err
		}
	}
	c, err := newCredentials(entries, s.devToken)
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("clients file %s: %w", s.path, err)
	}
	s.cur.Store(c)
	s.reloads.WithLabelValues("ok").Inc()
	return nil
}

// run reloads on SIGHUP and on file change until ctx ends.
func (s *authStore) run(ctx context.Context) {
	if s.path == "" {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			s.reloadAndLog("SIGHUP")
		case <-t.C:
			if st, err := os.Stat(s.path); err == nil && daemon.FileChanged(s.loaded, st) {
				s.reloadAndLog("file changed")
			}
		}
	}
}

func (s *authStore) reloadAndLog(why string) {
	if err := s.reload(); err != nil {
		s.logger.Error("livefeed: clients file reload failed; keeping the clients in force", "path", s.path, "trigger", why, "err", err)
		return
	}
	n := len(s.current().byHash)
	s.logger.Info("livefeed: clients file reloaded", "path", s.path, "trigger", why, "tokens", n)
	if s.onChange != nil {
		s.onChange(s.current())
	}
}
