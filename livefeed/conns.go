package livefeed

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/auth"
)

// The clients' connections: admission, the hub of subscriptions that
// ingest's changes are dispatched through, credentials that change under
// open connections, and serveLive, which authenticates and upgrades.

// closeClients stops admitting clients, closes every one with 1001 and
// waits for them; a client that does not take its close frame within
// ShutdownGrace is cut (kill's timer). It returns how many were open.
func (f *Feed) closeClients() int {
	f.mu.Lock()
	f.closing = true
	conns := make([]*client, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	for _, c := range conns {
		c.kill(websocket.CloseGoingAway, "going away", reasonShutdown)
	}
	f.connWG.Wait()
	return len(conns)
}

// admit reserves a connection slot, or says why there is none.
func (f *Feed) admit() (ok bool, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closing:
		return false, reasonShutdown
	case f.active >= f.cfg.MaxClients:
		return false, reasonMaxClients
	}
	f.active++
	f.connWG.Add(1)
	return true, ""
}

func (f *Feed) unadmit() {
	f.mu.Lock()
	f.active--
	f.mu.Unlock()
	f.connWG.Done()
}

// track registers an established client with the server and the hub,
// unless the livefeed is stopping.
func (f *Feed) track(c *client) bool {
	f.mu.Lock()
	if f.closing {
		f.mu.Unlock()
		return false
	}
	f.conns[c] = struct{}{}
	f.mu.Unlock()
	f.hubMu.Lock()
	f.hubAdd(c)
	f.hubMu.Unlock()
	return true
}

// release forgets an ended client and frees its slot.
func (f *Feed) release(c *client) {
	f.hubMu.Lock()
	if c.stream != nil {
		f.leaveLocked(c, leaveClosed)
	} else {
		f.hubRemove(c)
	}
	f.unkeyLocked(c)
	f.hubMu.Unlock()
	c.stopExpiry()
	f.mu.Lock()
	delete(f.conns, c)
	f.active--
	f.mu.Unlock()
	f.m.clients.Dec()
	f.connWG.Done()
}

// hubAdd makes c one of those offered the updates of its scope's fleets.
// The caller holds hubMu.
func (f *Feed) hubAdd(c *client) {
	if sc := c.who.scope; sc.all {
		f.all[c] = struct{}{}
	} else {
		for fl := range sc.fleets {
			set := f.byFleet[fl]
			if set == nil {
				set = make(map[*client]struct{})
				f.byFleet[fl] = set
			}
			set[c] = struct{}{}
		}
	}
}

// hubRemove undoes hubAdd. The caller holds hubMu.
func (f *Feed) hubRemove(c *client) {
	if sc := c.who.scope; sc.all {
		delete(f.all, c)
	} else {
		for fl := range sc.fleets {
			if set := f.byFleet[fl]; set != nil {
				delete(set, c)
				if len(set) == 0 {
					delete(f.byFleet, fl)
				}
			}
		}
	}
}

// dispatch hands changes to every client that may be concerned: those whose
// scope includes the vehicle's fleet now, or included it before (a vehicle
// that moved to another fleet is removed from their maps). Each client is
// offered the changes of one fleet at once, under one lock.
func (f *Feed) dispatch(changes []change, now int64) {
	if len(changes) == 0 {
		return
	}
	f.hubMu.RLock()
	defer f.hubMu.RUnlock()
	if len(f.byFleet) > 0 {
		groups := make(map[string][]change, 4)
		for _, ch := range changes {
			if _, ok := f.byFleet[ch.v.fleet]; ok {
				groups[ch.v.fleet] = append(groups[ch.v.fleet], ch)
			}
			if ch.old != nil && ch.old.fleet != ch.v.fleet {
				if _, ok := f.byFleet[ch.old.fleet]; ok {
					groups[ch.old.fleet] = append(groups[ch.old.fleet], ch)
				}
			}
		}
		for fl, chs := range groups {
			for c := range f.byFleet[fl] {
				c.offer(chs, now)
			}
		}
	}
	for c := range f.all {
		c.offer(changes, now)
	}
}

// credentialsChanged closes the clients whose token is gone or whose fleets
// changed: their scope is fixed for the life of a connection.
func (f *Feed) credentialsChanged(cr *credentials) {
	f.mu.Lock()
	conns := make([]*client, 0, len(f.conns))
	for c := range f.conns {
		conns = append(conns, c)
	}
	f.mu.Unlock()
	for _, c := range conns {
		p := cr.byHash[c.who.hash]
		switch {
		case p == nil:
			c.log(slog.LevelInfo, "livefeed: client token revoked; closing")
			c.kill(CloseRevoked, "token revoked", reasonRevoked)
		case !p.scope.equal(c.who.scope):
			c.log(slog.LevelInfo, "livefeed: client fleets changed; closing so that it reconnects with them")
			c.kill(CloseRevoked, "token fleets changed; reconnect", reasonRevoked)
		case !p.expires.Equal(c.who.expires):
			// Moved (or removed): the timer follows; one already passed
			// fires at once.
			c.setExpiry(p.expires)
		}
	}
}

// serveLive authenticates a client, upgrades its connection and starts its
// two goroutines. It returns right after the upgrade, so that net/http
// frees the buffers it holds for the request.
func (f *Feed) serveLive(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		f.refuseHTTP(w, http.StatusBadRequest, reasonNotWebSocket, "expected a WebSocket upgrade")
		return
	}
	now := time.Now()
	src := auth.SourceKey(f.proxies.ClientAddr(r))
	if left, blocked := f.srcLimit.Blocked(src, now); blocked {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(left.Seconds()))))
		f.refuseHTTP(w, http.StatusTooManyRequests, reasonAuthLimit, "too many failed authentications, retry later")
		return
	}
	if ok, reason := f.admit(); !ok {
		w.Header().Set("Retry-After", "5")
		f.refuseHTTP(w, http.StatusServiceUnavailable, reason, "server busy, retry later")
		return
	}
	who, why := f.auth.Load().current().authenticate(auth.RequestToken(r, QueryToken), now)
	if who == nil {
		f.unadmit()
		if d := f.srcLimit.Fail(src, now); d > 0 {
			f.logger.Warn("livefeed: too many failed authentications from one address; refusing it", "source", src, "for", d)
		}
		switch why {
		case reasonNoToken:
			w.Header().Set("WWW-Authenticate", `Bearer realm="drover"`)
			f.refuseHTTP(w, http.StatusUnauthorized, why, "client token required")
		case reasonExpired:
			// Only the holder of a token that was valid learns this.
			w.Header().Set("WWW-Authenticate", `Bearer realm="drover", error="invalid_token", error_description="token expired"`)
			f.refuseHTTP(w, http.StatusUnauthorized, why, "token expired")
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="drover", error="invalid_token"`)
			f.refuseHTTP(w, http.StatusUnauthorized, why, "bad token")
		}
		return
	}
	ws, err := f.upgrader.Upgrade(w, r, nil)
	if err != nil {
		f.unadmit()
		f.m.refusals.WithLabelValues(reasonBadUpgrade).Inc()
		f.logger.Info("livefeed: upgrade failed", "client", who.name, "err", err)
		return
	}
	f.m.clients.Inc()
	f.m.clientsAccepted.Inc()
	c := newClient(f, ws, who)
	if !f.track(c) {
		msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "going away")
		_ = ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		_ = ws.Close()
		f.m.clients.Dec()
		f.m.disconnects.WithLabelValues(reasonShutdown).Inc()
		f.unadmit()
		return
	}
	c.setExpiry(who.expires)
	c.log(slog.LevelDebug, "livefeed: client connected", "fleets", strings.Join(who.scope.list, ","))
	c.hello()
	go c.readLoop()
	go c.writeLoop()
}

// refuseHTTP answers a request refused before the upgrade and counts it.
func (f *Feed) refuseHTTP(w http.ResponseWriter, status int, reason, text string) {
	f.m.refusals.WithLabelValues(reason).Inc()
	level := slog.LevelInfo
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		level = slog.LevelDebug // a stampede or an attack would flood the log; the metric counts it
	}
	f.logger.Log(context.Background(), level, "livefeed: client refused", "status", status, "reason", reason)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, text)
}
