package frontend

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/drover-telemetry/drover/internal/registry"
)

// Close codes of the registry (docs/ingest.md): a change of the registry
// ends the connections it no longer allows, within the follower's
// propagation time (well under 2 s), once the frame being stored is
// stored and acked.
const (
	// CloseCredentialsRevoked: the token this connection authenticated
	// with is no longer valid: revoked, replaced, or a rotation's overlap
	// ended. Reconnect with the device's current token.
	CloseCredentialsRevoked = 4401
	// CloseDeviceNotActive: the device was suspended, decommissioned or
	// removed from the registry. Reconnecting is refused (403 or 401)
	// until an operator resumes it: back off for minutes, not seconds.
	CloseDeviceNotActive = 4403
)

// Refusal reasons of the registry (drover_frontend_refusals_total).
const (
	reasonSuspended      = "suspended"      // 403 before the upgrade, 4403 after
	reasonDecommissioned = "decommissioned" // 403, 4403
	reasonNotActive      = "not_active"     // 403, 4403: a state this build does not know
	reasonRemoved        = "removed"        // 4403: the device left the registry
	reasonRevoked        = "revoked"        // 4401: the token was revoked or rotated
)

// followConfig is Follow with its defaults filled in: the cache beside
// the queue.
func (c Config) followConfig() registry.FollowConfig {
	fc := c.Follow
	if fc.Cache == "" {
		fc.Cache = filepath.Join(c.QueueDir, "registry.cache")
	}
	return fc
}

// openRegistry returns the registry store: the one given (its owner runs
// it), a follower of the control plane, or the file.
func (f *Frontend) openRegistry() (store *registry.Store, own bool, err error) {
	switch {
	case f.cfg.RegistryStore != nil:
		return f.cfg.RegistryStore, false, nil
	case f.cfg.Follow.Enabled():
		f.logger.Info("frontend: following the device registry from the control plane", "api", f.cfg.Follow.API.URL)
		store, err = registry.NewFollower(f.cfg.followConfig(), f.logger, f.reg)
	default:
		store, err = registry.NewStore(f.cfg.Registry, f.logger, f.reg)
	}
	return store, err == nil, err
}

var errWaitRegistry = errors.New("frontend: waiting for the device registry (no cached copy, and the control plane has not answered yet)")

// waitRegistry waits until the store holds a registry: a follower with no
// cache needs the control plane's first answer before it can let any
// device in. It returns false if ctx ended first.
func (f *Frontend) waitRegistry(ctx context.Context, store *registry.Store) bool {
	if store.Ready() == nil {
		return true
	}
	f.setReady(errWaitRegistry)
	f.logger.Info("frontend: waiting for the device registry before serving devices")
	return store.Wait(ctx) == nil
}

// refuseAuth answers a failed authentication. A wrong id or token gets
// one 401 (nothing tells which ids exist) and counts as a failure of the
// address and the id; a right token of a device that may not connect
// gets 403 with the reason (only its holder learns it), and counts as no
// failure: it is not a guess.
func (f *Frontend) refuseAuth(w http.ResponseWriter, src, id string, now time.Time, err error) {
	switch {
	case errors.Is(err, registry.ErrSuspended):
		f.refuseHTTP(w, http.StatusForbidden, reasonSuspended, "device suspended", id)
	case errors.Is(err, registry.ErrDecommissioned):
		f.refuseHTTP(w, http.StatusForbidden, reasonDecommissioned, "device decommissioned", id)
	case errors.Is(err, registry.ErrUnknownState):
		f.refuseHTTP(w, http.StatusForbidden, reasonNotActive, "device not active", id)
	default:
		f.authFailed(src, id, now)
		reason := reasonBadToken
		if errors.Is(err, registry.ErrUnknownDevice) {
			reason = reasonUnknownDevice
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="drover", error="invalid_token"`)
		f.refuseHTTP(w, http.StatusUnauthorized, reason, textUnauthorized, id)
	}
}

// admitted finishes an accepted connection's registration with the
// registry: a change that came between its authentication (against reg)
// and its attachment to the device was not seen by registryChanged, so
// it is checked here; and a previous token's overlap end is armed.
func (f *Frontend) admitted(c *conn, reg *registry.Registry) {
	if cur := f.store.Current(); cur != reg {
		f.recheck(c, cur, time.Now())
	}
	c.armGrant(c.grantUntil())
}

// registryChanged is the store's subscriber: the connections of the
// devices that changed are checked against the new registry, and those it
// no longer allows are closed.
func (f *Frontend) registryChanged(u registry.Update) {
	now := time.Now()
	if u.All {
		// The connections attached to their device; one not attached yet
		// is checked by admitted.
		for _, c := range f.devs.connected() {
			f.recheck(c, u.Registry, now)
		}
		return
	}
	for _, id := range u.Changed {
		if c := f.devs.connOf(id); c != nil {
			f.recheck(c, u.Registry, now)
		}
	}
}

// recheck checks a connection's grant against reg at now, and closes the
// connection (after the frame it is storing) if reg no longer allows it.
func (f *Frontend) recheck(c *conn, reg *registry.Registry, now time.Time) {
	if reg == nil {
		return
	}
	old := c.grant()
	var g registry.Grant
	var err error
	if c.byCert {
		// A certificate is not in the registry: only the device's state is.
		err = certAllowed(reg, c.dev.id)
	} else {
		g, err = reg.Check(c.dev.id, old.Token, now)
	}
	if err == nil {
		c.setGrant(g)
		return
	}
	code, text, reason := CloseDeviceNotActive, "", ""
	switch {
	case errors.Is(err, registry.ErrSuspended):
		text, reason = "device suspended", reasonSuspended
	case errors.Is(err, registry.ErrDecommissioned):
		text, reason = "device decommissioned", reasonDecommissioned
	case errors.Is(err, registry.ErrUnknownState):
		text, reason = "device not active", reasonNotActive
	case errors.Is(err, registry.ErrUnknownDevice):
		text, reason = "device removed from the registry", reasonRemoved
	case !old.Until.IsZero() && !now.Before(old.Until):
		code, text, reason = CloseCredentialsRevoked, "token rotated: the previous token's overlap ended", reasonRevoked
	default:
		code, text, reason = CloseCredentialsRevoked, "token revoked", reasonRevoked
	}
	if c.stopFor(code, text) {
		f.m.refusals.WithLabelValues(reason).Inc()
		c.log(slog.LevelInfo, "frontend: the registry no longer allows this connection; closing", "code", code, "reason", reason)
	}
}

// grant returns what the connection's authentication granted.
func (c *conn) grant() registry.Grant {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cred
}

func (c *conn) grantUntil() time.Time { return c.grant().Until }

// setGrant records a new grant (the registry changed and still allows the
// connection) and moves the overlap timer if its end moved.
func (c *conn) setGrant(g registry.Grant) {
	c.mu.Lock()
	moved := !g.Until.Equal(c.cred.Until)
	c.cred = g
	c.mu.Unlock()
	if moved {
		c.armGrant(g.Until)
	}
}

// armGrant checks the connection again at until, the end of the previous
// token's overlap it authenticated with (zero: none, the timer stops).
// A timer per such connection only: connections on a current token cost
// nothing.
func (c *conn) armGrant(until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expiry != nil {
		c.expiry.Stop()
		c.expiry = nil
	}
	if until.IsZero() || c.done {
		return
	}
	c.expiry = time.AfterFunc(time.Until(until), func() { c.f.recheck(c, c.f.store.Current(), time.Now()) })
}

// stopFor is stop that reports whether this call asked for the close (the
// first request wins; a connection already closing ignores it).
func (c *conn) stopFor(code int, text string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	took := c.stopCode == 0 && !c.closing
	if took {
		c.stopCode, c.stopReason = code, text
	}
	_ = c.ws.SetReadDeadline(pastDeadline)
	return took
}
