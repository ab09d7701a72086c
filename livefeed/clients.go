package livefeed

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/apiclient"
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

// scope is what a client may see: the vehicles of its fleets, narrowed,
// for a token the control plane issued with them, to a set of devices and
// to a map area. Immutable.
type scope struct {
	all    bool
	fleets map[string]struct{}
	list   []string // sorted, for hello and comparisons

	devices    map[string]struct{} // nil: any device of the fleets
	deviceList []string            // sorted
	area       *box                // nil: anywhere
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

// narrowed returns the scope limited to devices (none: no limit) and to
// area (nil: none).
func (s *scope) narrowed(devices []string, area *box) *scope {
	n := *s
	if len(devices) > 0 {
		n.devices = make(map[string]struct{}, len(devices))
		for _, d := range devices {
			n.devices[d] = struct{}{}
		}
		n.deviceList = sortedKeys(n.devices)
	}
	n.area = area
	return &n
}

// allows reports whether the scope includes fleet.
func (s *scope) allows(fleet string) bool {
	if s.all {
		return true
	}
	_, ok := s.fleets[fleet]
	return ok
}

// permits reports whether the client may see vehicle v now: its fleet,
// and, when the scope is narrowed, its id and its position (a vehicle with
// no position is outside every area: it cannot be shown to be inside).
func (s *scope) permits(v *vehicle) bool {
	if !s.allows(v.fleet) {
		return false
	}
	if s.devices != nil {
		if _, ok := s.devices[v.id]; !ok {
			return false
		}
	}
	if s.area != nil && (v.has&hasPos == 0 || !s.area.contains(v.latE7, v.lonE7)) {
		return false
	}
	return true
}

func (s *scope) equal(o *scope) bool {
	return slices.Equal(s.list, o.list) && slices.Equal(s.deviceList, o.deviceList) &&
		(s.area == nil) == (o.area == nil) && (s.area == nil || *s.area == *o.area)
}

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
	// onChange is called after a successful reload or a new set of
	// control-plane tokens, from the goroutine that made it.
	onChange func(*credentials)

	loaded os.FileInfo // of the file last loaded (or tried)

	// The two sources of credentials, merged by rebuild: the file's
	// entries as last loaded, and the control plane's tokens in force
	// (apitokens.go).
	mu          sync.Mutex
	fileEntries []ClientEntry
	apiTokens   []apiclient.LiveToken
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
	s.mu.Lock()
	defer s.mu.Unlock()
	c, err := newCredentials(entries, s.devToken)
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("clients file %s: %w", s.path, err)
	}
	s.fileEntries = entries
	s.addAPITokens(c)
	s.cur.Store(c)
	s.reloads.WithLabelValues("ok").Inc()
	return nil
}

// setAPITokens puts a new set of control-plane tokens in force beside the
// file's, and tells onChange.
func (s *authStore) setAPITokens(tokens []apiclient.LiveToken) {
	s.mu.Lock()
	s.apiTokens = tokens
	c, err := newCredentials(s.fileEntries, s.devToken) // checked when loaded: cannot fail now
	if err != nil {
		s.mu.Unlock()
		s.logger.Error("livefeed: credentials", "err", err)
		return
	}
	s.addAPITokens(c)
	s.cur.Store(c)
	s.mu.Unlock()
	if s.onChange != nil {
		s.onChange(c)
	}
}

// addAPITokens adds the control plane's tokens to c. A token that cannot
// be used (a bad hash or area, a hash the file lists too) is left out and
// logged: the others work.
func (s *authStore) addAPITokens(c *credentials) {
	for _, lt := range s.apiTokens {
		p, err := apiPrincipal(lt)
		if err == nil {
			if _, dup := c.byHash[p.hash]; dup {
				err = errors.New("its hash is also in the clients file")
			}
		}
		if err != nil {
			s.logger.Warn("livefeed: control-plane token left out", "token", lt.ID, "name", lt.Name, "err", err)
			continue
		}
		c.byHash[p.hash] = p
	}
}

// apiPrincipal turns a control-plane token into a principal: its fleets,
// narrowed to its devices and area, until its expiry.
func apiPrincipal(lt apiclient.LiveToken) (*principal, error) {
	h, err := auth.ParseDigest(lt.H)
	if err != nil {
		return nil, fmt.Errorf("h: %w", err)
	}
	if len(lt.Fleets) == 0 {
		return nil, errors.New("no fleets")
	}
	var area *box
	if a := lt.Area; a != nil {
		b, err := newBox(BBox{West: a.MinLon, South: a.MinLat, East: a.MaxLon, North: a.MaxLat})
		if err != nil {
			return nil, fmt.Errorf("area: %w", err)
		}
		area = &b
	}
	name := lt.Name
	if name == "" {
		name = lt.ID
	}
	return &principal{name: name, hash: h, scope: newScope(lt.Fleets).narrowed(lt.Devices, area),
		expires: time.UnixMilli(lt.ExpiresAt)}, nil
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
