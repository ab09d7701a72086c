package livefeed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/tlsserve"
)

// LivePath is the URL path of the client WebSocket API.
const LivePath = "/v1/live"

// QueryToken is the query parameter that carries a client token for clients
// that cannot set the Authorization header (browsers' WebSocket).
const QueryToken = "token"

var (
	errStarting = errors.New("livefeed: starting")
	errNoRouter = errors.New("livefeed: not yet subscribed to any router")
	errStopping = errors.New("livefeed: shutting down")
	errRanTwice = errors.New("livefeed: Run called twice")
)

// Feed is one livefeed process's worth of subscriptions, vehicle state and
// client server.
type Feed struct {
	cfg    Config
	logger *slog.Logger
	reg    prometheus.Registerer
	m      *metrics
	store  *store
	sec    *clusterlink.Security
	tls    *tlsserve.Server // nil: plain
	alerts activeAlerts
	watch  *endpoints.Watcher

	// subs are the router subscriptions, by endpoint (see setRouters).
	subsMu  sync.Mutex
	subs    map[string]*routerSub
	subsN   int // subscriptions made, for their ZeroMQ identities
	subsCtx context.Context
	subsWG  sync.WaitGroup

	upgrader websocket.Upgrader

	started    atomic.Bool
	state      atomic.Pointer[error] // errStarting, nil while serving, errStopping
	addr       atomic.Pointer[net.Addr]
	subscribed atomic.Int32 // listed router endpoints subscribed to at least once
	auth       atomic.Pointer[authStore]
	// registry, with -registry-api, hides the vehicles of decommissioned
	// and removed devices (registry.go); nil without. Set by Run before
	// ingest starts.
	registry *registry.Store

	// Failed authentications per client address.
	proxies  auth.Proxies
	srcLimit *auth.Limiter

	// clientsPoll is how often the clients file is checked for changes;
	// tests shorten it.
	clientsPoll time.Duration

	// hub: who gets the updates of which fleet. Read-locked by ingest for
	// each batch; write-locked when a client comes or goes.
	hubMu   sync.RWMutex
	byFleet map[string]map[*client]struct{}
	all     map[*client]struct{} // clients that may see every fleet
	// Shared streams (stream.go): by key, and the subscribed clients of
	// each key. A client in a stream is out of byFleet and all; its
	// stream is in them instead.
	streams map[string]*stream
	keys    map[string]int

	mu      sync.Mutex // guards the fields below
	closing bool
	active  int // connections admitted, from before the upgrade until released
	conns   map[*client]struct{}
	connWG  sync.WaitGroup
}

// New checks cfg and returns a livefeed that logs to logger and registers its
// metrics with reg. A nil logger discards; a nil reg keeps the metrics
// unregistered. New opens nothing: [Feed.Run] does.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Feed, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	logger = logger.With("component", "livefeed")
	sec, err := clusterlink.New(cfg.Links, clusterlink.RoleLivefeed, cfg.ID, logger, reg)
	if err != nil {
		return nil, fmt.Errorf("livefeed: %w", err)
	}
	for _, ep := range endpoints.Static(cfg.Routers) {
		if _, err := sec.Endpoint(clusterlink.LinkLive, ep); err != nil {
			sec.Close()
			return nil, fmt.Errorf("livefeed: routers: %w", err)
		}
	}
	for _, ep := range cfg.Alerts {
		if _, err := sec.Endpoint(clusterlink.LinkAlerts, ep); err != nil {
			sec.Close()
			return nil, fmt.Errorf("livefeed: alerts: %w", err)
		}
	}
	watch, err := endpoints.NewWatcher(cfg.Routers, cfg.Resolve, "livefeed", logger, reg)
	if err != nil {
		sec.Close()
		return nil, fmt.Errorf("livefeed: routers: %w", err)
	}
	f := &Feed{
		cfg:         cfg.clone(),
		logger:      logger,
		reg:         reg,
		sec:         sec,
		watch:       watch,
		subs:        make(map[string]*routerSub),
		m:           m,
		store:       newStore(),
		alerts:      activeAlerts{byDev: map[string]map[string]clientAlert{}},
		clientsPoll: 2 * time.Second,
		byFleet:     make(map[string]map[*client]struct{}),
		streams:     make(map[string]*stream),
		keys:        make(map[string]int),
		all:         make(map[*client]struct{}),
		conns:       make(map[*client]struct{}),
	}
	if f.tls, err = tlsserve.New(cfg.TLS, "livefeed", "drover_livefeed", logger, reg); err != nil {
		sec.Close()
		return nil, fmt.Errorf("livefeed config: %w", err)
	}
	f.proxies, _ = auth.ParseProxies(cfg.TrustedProxies) // checked by Validate
	f.srcLimit = auth.NewLimiter(cfg.AuthLimit)
	if err := auth.RegisterMetrics(reg, "drover_livefeed", "source", f.srcLimit); err != nil {
		return nil, err
	}
	f.upgrader = websocket.Upgrader{
		HandshakeTimeout: cfg.WriteTimeout,
		// Clients send a few small subscribe messages: a small read
		// buffer keeps an idle connection cheap. Writes go through a
		// pooled buffer held only while a message is written.
		ReadBufferSize:  256,
		WriteBufferSize: 16 << 10,
		WriteBufferPool: &sync.Pool{},
		// permessage-deflate without context takeover (gorilla's only
		// mode), so that a shared message compressed once is valid on
		// every member's connection.
		EnableCompression: cfg.Compression,
		// Clients authenticate with a token, never with cookies a browser
		// would attach to a cross-site request: an Origin check protects
		// nothing here and would refuse the map page served elsewhere.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	f.setState(errStarting)
	return f, nil
}

func (f *Feed) setState(err error) { f.state.Store(&err) }

// Addr returns the address the client server listens on, nil before it
// does. With Listen "127.0.0.1:0" it tells tests the port.
func (f *Feed) Addr() net.Addr {
	if a := f.addr.Load(); a != nil {
		return *a
	}
	return nil
}

// Ready reports whether the livefeed serves clients: nil once its server
// listens and it has subscribed to at least one router endpoint, an error
// saying why not otherwise. It stays nil while routers restart (clients are
// still served the last known state). It is cheap and never blocks, for
// /readyz.
func (f *Feed) Ready() error {
	if err := *f.state.Load(); err != nil {
		return err
	}
	if f.subscribed.Load() == 0 {
		return errNoRouter
	}
	return nil
}

// Run subscribes and serves clients until ctx ends, then closes every client
// connection and subscription and returns nil. It returns an error when it
// cannot start or goes wrong.
func (f *Feed) Run(ctx context.Context) error {
	if !f.started.CompareAndSwap(false, true) {
		return errRanTwice
	}
	defer f.sec.Close()
	devToken, generated := f.cfg.DevToken, false
	if devToken == "" && f.cfg.Clients == "" && f.cfg.Dev {
		var b [16]byte
		_, _ = rand.Read(b[:])
		devToken, generated = hex.EncodeToString(b[:]), true
	}
	auth, err := newAuthStore(f.cfg.Clients, devToken, f.logger, f.m.reloads)
	if err != nil {
		f.setState(fmt.Errorf("livefeed: clients: %w", err))
		return fmt.Errorf("livefeed: load clients: %w", err)
	}
	auth.interval = f.clientsPoll
	auth.onChange = f.credentialsChanged
	f.auth.Store(auth)
	var tokens *tokenFollower
	if f.cfg.API.Enabled() {
		tokensCache := ""
		if f.cfg.CacheDir != "" {
			tokensCache = filepath.Join(f.cfg.CacheDir, "tokens.cache")
		}
		if tokens, err = newTokenFollower(f.cfg.API, tokensCache, auth, f.logger, f.reg); err != nil {
			f.setState(fmt.Errorf("livefeed: control plane: %w", err))
			return fmt.Errorf("livefeed: control plane: %w", err)
		}
		tokens.loadCache()
	}
	reg, ownReg, err := f.openRegistry()
	if err != nil {
		f.setState(fmt.Errorf("livefeed: registry: %w", err))
		return fmt.Errorf("livefeed: registry: %w", err)
	}
	if reg != nil {
		f.registry = reg
		defer reg.Subscribe(f.registryChanged)()
	}

	ln, err := tlsserve.Listen(ctx, f.cfg.Listen, f.cfg.ReusePort)
	if err != nil {
		f.setState(fmt.Errorf("livefeed: listen: %w", err))
		return fmt.Errorf("livefeed: listen on %s: %w", f.cfg.Listen, err)
	}
	addr := ln.Addr()
	f.addr.Store(&addr)
	scheme := "http"
	if f.tls != nil {
		ln = f.tls.NewListener(ln)
		scheme = "https"
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET "+LivePath, f.serveLive)
	mux.HandleFunc("GET /readyz", f.serveReady)
	mux.Handle("GET /", pageHandler(f.cfg.Map))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: f.cfg.WriteTimeout,
		IdleTimeout:       f.cfg.IdleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(f.logger.Handler(), slog.LevelDebug),
	}

	failed := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			failed <- fmt.Errorf("livefeed: serve: %w", err)
		}
	})
	bgCtx, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBg()
	var bg sync.WaitGroup
	f.subsCtx = bgCtx
	f.setRouters(f.watch.Current())
	bg.Go(func() { f.watch.Run(bgCtx, f.setRouters) })
	for i, ep := range f.cfg.Alerts {
		bg.Go(func() { f.subscribeAlerts(bgCtx, i, ep) })
	}
	bg.Go(func() { auth.run(bgCtx) })
	if f.tls != nil {
		bg.Go(func() { f.tls.Run(bgCtx) })
	}
	if tokens != nil {
		bg.Go(func() { tokens.run(bgCtx, f.cfg.NotBefore) })
	}
	if ownReg {
		bg.Go(func() { runRegistry(bgCtx, reg) })
	}
	if f.cfg.VehicleTTL > 0 {
		bg.Go(func() { f.expireLoop(bgCtx) })
	}

	f.setState(nil)
	url := scheme + "://" + browsable(addr) + "/"
	f.logger.Info("livefeed: serving clients", "addr", addr.String(), "path", LivePath, "map", url,
		"routers", strings.Join(f.cfg.Routers, ","))
	switch {
	case generated:
		// Development only (-dev): the one place a secret is logged, so
		// that a laptop run is usable and never open.
		f.logger.Warn("livefeed: -dev: no clients file and no dev token, so made up a dev token that sees every fleet; "+
			"open the map with it", "map", url+"?token="+devToken)
	case devToken == "" && f.cfg.Clients == "" && !f.cfg.API.Enabled():
		f.logger.Warn("livefeed: no -clients file and no dev token: every client is refused; give -clients FILE " +
			"(docs/live-api.md), or -dev on a laptop")
	}
	if !MapBundled() {
		f.logger.Warn("livefeed: this binary was built without the live map page (scripts/build-map.sh did not run before go build): " +
			"/ serves a page saying how to build it; the live API is unaffected")
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-failed:
		f.logger.Info("livefeed: stopping after a failure")
	}

	f.setState(errStopping)
	start := time.Now()
	graceCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(graceCtx); err != nil {
		_ = srv.Close()
	}
	wg.Wait()
	n := f.closeClients()
	f.logger.Info("livefeed: client connections closed", "clients", n, "took", time.Since(start))
	stopBg()
	bg.Wait()
	f.subsWG.Wait()
	f.logger.Info("livefeed: stopped", "took", time.Since(start))
	return runErr
}

// browsable turns a listen address into one a browser on this host can
// open: 127.0.0.1 for every interface.
func browsable(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func (f *Feed) serveReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := f.Ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "not ready\n%v\n", err)
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

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

// expireLoop forgets vehicles silent for longer than VehicleTTL.
func (f *Feed) expireLoop(ctx context.Context) {
	every := min(max(f.cfg.VehicleTTL/10, time.Second), time.Minute)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			gone := f.store.expire(now.Add(-f.cfg.VehicleTTL).UnixNano())
			if len(gone) == 0 {
				continue
			}
			f.m.vehicles.Sub(float64(len(gone)))
			f.m.vehiclesExpired.Add(float64(len(gone)))
			f.dispatch(gone, now.UnixNano())
			f.logger.Debug("livefeed: forgot silent vehicles", "vehicles", len(gone), "ttl", f.cfg.VehicleTTL)
		}
	}
}
