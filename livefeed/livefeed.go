package livefeed

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
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
