package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/auth"
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

// authLimiter throttles failed authentications per client address and
// per API key id, with internal/auth's limiter (the one the frontend and
// the livefeed use).
type authLimiter struct {
	proxies auth.Proxies
	source  *auth.Limiter
	key     *auth.Limiter
}

func newAuthLimiter(cfg Config) *authLimiter {
	p, _ := auth.ParseProxies(cfg.TrustedProxies) // checked by Validate
	return &authLimiter{proxies: p, source: auth.NewLimiter(cfg.AuthLimit), key: auth.NewLimiter(cfg.AuthLimit)}
}

// allow reports whether an attempt from source for keyID may be checked
// now; when not, it says for how long.
func (l *authLimiter) allow(source, keyID string, now time.Time) (time.Duration, bool) {
	wait, blocked := l.source.Blocked(source, now)
	if keyID != "" {
		if w, b := l.key.Blocked(keyID, now); b {
			wait, blocked = max(wait, w), true
		}
	}
	return wait, !blocked
}

// fail records a failed attempt of source (and of keyID, when the bearer
// named one).
func (l *authLimiter) fail(source, keyID string, now time.Time) {
	l.source.Fail(source, now)
	if keyID != "" {
		l.key.Fail(keyID, now)
	}
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
	source := auth.SourceKey(s.limiter.proxies.ClientAddr(r))
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

// keyLookup reads an API key and its operator.
const keyLookup = `
SELECT k.secret_hash, k.expires_at, k.revoked_at, o.id, o.name, o.role, o.fleets, o.disabled_at
FROM api_keys k JOIN operators o ON o.id = k.operator_id WHERE k.id = $1`

// lookupKey finds and checks a key; reason names a failure for metrics
// (never for the caller). The key comes from the key cache when it holds
// it (keycache.go), else from the database; either way the secret and the
// expiry are checked now.
func (s *Server) lookupKey(ctx context.Context, keyID, secret string, now time.Time) (*principal, string, error) {
	e, cached, gen := s.keys.get(keyID, now)
	if !cached {
		var hash, opID, opName, role, fleetsJSON string
		var expires, revoked, disabled sql.NullInt64
		err := s.db.rdb.QueryRowContext(ctx, keyLookup, keyID).
			Scan(&hash, &expires, &revoked, &opID, &opName, &role, &fleetsJSON, &disabled)
		if errors.Is(err, sql.ErrNoRows) {
			secretMatches(secret, dummyHash)
			return nil, "unknown_key", nil // not cached: unknown ids must not fill memory
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
		case disabled.Valid:
			return nil, "disabled", nil
		}
		var fleets []string
		if err := json.Unmarshal([]byte(fleetsJSON), &fleets); err != nil {
			return nil, "", fmt.Errorf("operator %s: fleets: %w", opID, err)
		}
		e = cachedKey{hash: hash, expires: expires.Int64, p: newPrincipal(opID, opName, keyID, role, fleets), at: now}
		s.keys.put(keyID, e, gen)
	} else if !secretMatches(secret, e.hash) {
		return nil, "bad_secret", nil
	}
	if e.expires != 0 && now.UnixMilli() >= e.expires {
		return nil, "expired", nil
	}
	return e.p, "", nil
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
