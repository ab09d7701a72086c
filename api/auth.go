package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Roles. A role says what a key may do; its fleets say where.
const (
	// RoleAdmin may do everything within its fleets; with every fleet
	// ("*") it also manages fleets, classes, regions and all operators.
	RoleAdmin = "admin"
	// RoleOperator manages the devices and live-client tokens of its
	// fleets.
	RoleOperator = "operator"
	// RoleViewer reads what is in its fleets.
	RoleViewer = "viewer"
	// RoleFollower is a service credential for frontends and routers:
	// the change feed and presence reports, nothing else. Always every
	// fleet.
	RoleFollower = "follower"
)

var roles = []string{RoleAdmin, RoleOperator, RoleViewer, RoleFollower}

// allFleets in a fleet list is every fleet, present and future.
const allFleets = "*"

// principal is the authenticated caller of a request.
type principal struct {
	OperatorID   string
	OperatorName string
	KeyID        string
	Role         string
	all          bool
	fleets       map[string]bool
}

func newPrincipal(opID, opName, keyID, role string, fleets []string) *principal {
	p := &principal{OperatorID: opID, OperatorName: opName, KeyID: keyID, Role: role, fleets: map[string]bool{}}
	for _, f := range fleets {
		if f == allFleets {
			p.all = true
		}
		p.fleets[f] = true
	}
	return p
}

// sees reports whether the caller may see objects of fleet. Objects with no
// fleet belong to no tenant: only all-fleet keys see them.
func (p *principal) sees(fleet string) bool { return p.all || (fleet != "" && p.fleets[fleet]) }

// covers reports whether every fleet of list is within the caller's scope
// (["*"] only for an all-fleet caller).
func (p *principal) covers(list []string) bool {
	if p.all {
		return true
	}
	for _, f := range list {
		if f == allFleets || !p.fleets[f] {
			return false
		}
	}
	return true
}

// fleetList is the caller's scope as stored: ["*"] or the sorted fleets.
func (p *principal) fleetList() []string {
	if p.all {
		return []string{allFleets}
	}
	l := make([]string, 0, len(p.fleets))
	for f := range p.fleets {
		l = append(l, f)
	}
	slices.Sort(l)
	return l
}

// actor names the caller in the audit log and device state changes.
func (p *principal) actor() string { return p.OperatorID }

// perm is what a route requires of the caller's role.
type perm int

const (
	permAny      perm = iota // any authenticated key (GET /v1/me)
	permRead                 // admin, operator, viewer
	permDevices              // admin, operator
	permAdmin                // admin (scoped or not)
	permAdminAll             // admin of every fleet
	permFollower             // follower, or admin of every fleet
)

// allows reports whether p's role passes the route's perm; the fleet
// scope of each object is checked by the handler.
func (pm perm) allows(p *principal) bool {
	switch pm {
	case permAny:
		return true
	case permRead:
		return p.Role == RoleAdmin || p.Role == RoleOperator || p.Role == RoleViewer
	case permDevices:
		return p.Role == RoleAdmin || p.Role == RoleOperator
	case permAdmin:
		return p.Role == RoleAdmin
	case permAdminAll:
		return p.Role == RoleAdmin && p.all
	case permFollower:
		return p.Role == RoleFollower || (p.Role == RoleAdmin && p.all)
	}
	return false
}

func (pm perm) String() string {
	return [...]string{"any key", "admin, operator or viewer", "admin or operator", "admin", "admin of every fleet", "follower"}[pm]
}

// authLimiter throttles failed authentications. The API keeps its own
// small one here, behind this interface, until drover has one shared
// implementation for devices, live clients and the API.
type authLimiter interface {
	// allow reports whether an attempt from source for keyID may be
	// checked now; when not, it says for how long both stay refused.
	allow(source, keyID string, now time.Time) (retryAfter time.Duration, ok bool)
	// fail records a failed attempt.
	fail(source, keyID string, now time.Time)
}

// dummyHash is compared against when a key id is unknown, so that an
// unknown id costs the same as a bad secret.
var dummyHash = hashSecret("no such key")

// authenticate checks the request's bearer key. It answers 429 while the
// source address or the key id is throttled (before looking at the key, so
// a throttled attacker learns nothing), and one 401 for every other
// failure.
func (s *Server) authenticate(r *http.Request) (*principal, error) {
	now := time.Now()
	source := sourceAddr(r)
	bearer, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	keyID, secret, parsed := parseAPIKey(strings.TrimSpace(bearer))
	if retry, ok := s.limiter.allow(source, keyID, now); !ok {
		s.metrics.authFailures.WithLabelValues("throttled").Inc()
		return nil, errTooMany(retry)
	}
	reason := ""
	var p *principal
	switch {
	case !hasBearer:
		reason = "missing"
	case !parsed:
		reason = "malformed"
	default:
		var err error
		p, reason, err = s.lookupKey(r.Context(), keyID, secret, now)
		if err != nil {
			return nil, err
		}
	}
	if p == nil {
		s.metrics.authFailures.WithLabelValues(reason).Inc()
		s.limiter.fail(source, keyID, now)
		return nil, errUnauthorized()
	}
	s.touchKey(keyID, now)
	return p, nil
}

// lookupKey finds and checks a key; reason names a failure for metrics
// (never for the caller).
func (s *Server) lookupKey(ctx context.Context, keyID, secret string, now time.Time) (*principal, string, error) {
	var hash, opID, opName, role, fleetsJSON string
	var expires, revoked, disabled sql.NullInt64
	err := s.db.rdb.QueryRowContext(ctx, `
SELECT k.secret_hash, k.expires_at, k.revoked_at, o.id, o.name, o.role, o.fleets, o.disabled_at
FROM api_keys k JOIN operators o ON o.id = k.operator_id WHERE k.id = $1`, keyID).
		Scan(&hash, &expires, &revoked, &opID, &opName, &role, &fleetsJSON, &disabled)
	if errors.Is(err, sql.ErrNoRows) {
		secretMatches(secret, dummyHash)
		return nil, "unknown_key", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("look up api key: %w", err)
	}
	if !secretMatches(secret, hash) {
		return nil, "bad_secret", nil
	}
	switch {
	case revoked.Valid:
		return nil, "revoked", nil
	case expires.Valid && now.UnixMilli() >= expires.Int64:
		return nil, "expired", nil
	case disabled.Valid:
		return nil, "disabled", nil
	}
	var fleets []string
	if err := json.Unmarshal([]byte(fleetsJSON), &fleets); err != nil {
		return nil, "", fmt.Errorf("operator %s: fleets: %w", opID, err)
	}
	return newPrincipal(opID, opName, keyID, role, fleets), "", nil
}

// touchKey records a key's last use, at most once a minute per key: a
// write per request would make every read a write.
func (s *Server) touchKey(keyID string, now time.Time) {
	s.touchMu.Lock()
	last, ok := s.touched[keyID]
	if ok && now.Sub(last) < time.Minute {
		s.touchMu.Unlock()
		return
	}
	if len(s.touched) > 100_000 {
		clear(s.touched)
	}
	s.touched[keyID] = now
	s.touchMu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := s.db.wdb.ExecContext(ctx, `UPDATE api_keys SET last_used_at = $1 WHERE id = $2`, now.UnixMilli(), keyID); err != nil &&
			!errors.Is(err, sql.ErrConnDone) && !strings.Contains(err.Error(), "database is closed") {
			s.log.Warn("api: record key use", "key", keyID, "err", err)
		}
	}()
}

// sourceAddr is the request's TCP peer address, without the port: what
// failed authentications are counted by. (A proxy in front makes every
// caller one source: put the limit there, or give the API its own port.)
func sourceAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// failLimiter counts failures per source address and per key id within a
// window; past the limit, the source or id is refused for a backoff that
// doubles with each further failure, up to a maximum. Memory is bounded:
// past maxEntries, expired entries are swept, and if that is not enough
// the oldest half is dropped (an attacker spraying addresses can at worst
// shorten its own refusals; it can never lock out others).
type failLimiter struct {
	limit              int
	window             time.Duration
	backoff, maxBackof time.Duration
	maxEntries         int

	mu      sync.Mutex
	entries map[string]*failEntry
}

type failEntry struct {
	start    time.Time // of the counting window
	count    int
	until    time.Time // refused until
	backoff  time.Duration
	lastSeen time.Time
}

func newFailLimiter(cfg Config) *failLimiter {
	return &failLimiter{
		limit: cfg.AuthFailures, window: cfg.AuthWindow, backoff: cfg.AuthBackoff, maxBackof: cfg.AuthMaxBackoff,
		maxEntries: 100_000, entries: map[string]*failEntry{},
	}
}

func (l *failLimiter) keys(source, keyID string) []string {
	k := []string{"addr " + source}
	if keyID != "" {
		k = append(k, "key "+keyID)
	}
	return k
}

func (l *failLimiter) allow(source, keyID string, now time.Time) (time.Duration, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var wait time.Duration
	for _, k := range l.keys(source, keyID) {
		if e := l.entries[k]; e != nil && now.Before(e.until) {
			wait = max(wait, e.until.Sub(now))
		}
	}
	return wait, wait == 0
}

func (l *failLimiter) fail(source, keyID string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range l.keys(source, keyID) {
		e := l.entries[k]
		if e == nil {
			if len(l.entries) >= l.maxEntries {
				l.sweep(now)
			}
			e = &failEntry{start: now}
			l.entries[k] = e
		}
		if now.Sub(e.start) > l.window && now.After(e.until) {
			// A quiet window: start counting again, and forget the backoff
			// once a whole window passed after the last refusal.
			e.start, e.count = now, 0
			if now.Sub(e.until) > l.window {
				e.backoff = 0
			}
		}
		e.count++
		e.lastSeen = now
		if e.count >= l.limit {
			if e.backoff == 0 {
				e.backoff = l.backoff
			} else {
				e.backoff = min(2*e.backoff, l.maxBackof)
			}
			e.until = now.Add(e.backoff)
		}
	}
}

func (l *failLimiter) sweep(now time.Time) {
	for k, e := range l.entries {
		if now.After(e.until) && now.Sub(e.lastSeen) > l.window {
			delete(l.entries, k)
		}
	}
	if len(l.entries) < l.maxEntries {
		return
	}
	type kv struct {
		k string
		t time.Time
	}
	all := make([]kv, 0, len(l.entries))
	for k, e := range l.entries {
		all = append(all, kv{k, e.lastSeen})
	}
	slices.SortFunc(all, func(a, b kv) int { return a.t.Compare(b.t) })
	for _, x := range all[:len(all)/2] {
		delete(l.entries, x.k)
	}
}
