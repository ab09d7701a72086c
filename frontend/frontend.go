package frontend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/tlsserve"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// IngestPath is the URL path of the device WebSocket endpoint.
const IngestPath = "/v1/ingest"

// Headers and query parameters that carry a device's credentials. Headers
// win; the query parameters are for devices whose WebSocket client cannot set
// headers.
const (
	// HeaderDevice is the request header naming the device; the token goes
	// in "Authorization: Bearer <token>".
	HeaderDevice = "X-Drover-Device"
	// QueryDevice is the query parameter naming the device.
	QueryDevice = "device"
	// QueryToken is the query parameter carrying the device's token.
	QueryToken = "token"
	// QueryEncoding=json tells the frontend that the device reads JSON
	// text frames: what the server sends before the device's first frame
	// (a command queued while it was away) is then JSON. Afterwards the
	// encoding of the device's last frame decides.
	QueryEncoding = "encoding"
)

var (
	errStarting = errors.New("frontend: starting")
	errStopping = errors.New("frontend: shutting down")
	errRanTwice = errors.New("frontend: Run called twice")
)

// Frontend is one frontend process's worth of device server, queue and
// drainer.
type Frontend struct {
	cfg    Config
	logger *slog.Logger
	reg    prometheus.Registerer
	m      *metrics
	limits telemetry.Limits

	// newDrainer builds the drainer of the queue. Tests replace it with a
	// fake where a real router is not the point.
	newDrainer func(q *queue.Queue) (drainer, error)

	upgrader websocket.Upgrader
	devs     *devices

	// Failed authentications, per client address and per device id.
	proxies  auth.Proxies
	srcLimit *auth.Limiter
	devLimit *auth.Limiter

	// TLS (nil: plain ws://) and admission (tls.go, admission.go).
	tls   *tlsserve.Server
	tlsLn *tlsserve.Listener // set by Run when TLS is on
	// front is the device listener's front door (upgrade.go), set by Run
	// once it serves.
	front atomic.Pointer[upgradeListener]
	gate  *gate
	gov   *governor
	am    *admissionMetrics

	started atomic.Bool
	ready   atomic.Pointer[error]
	addr    atomic.Pointer[net.Addr]
	// routers says whether a router has answered since the start (see
	// upstreamReady).
	routers routerWatch

	// Set by Run before the server starts; read-only afterwards.
	q        *queue.Queue
	store    *registry.Store
	presence *presence  // nil unless following the control plane
	commands *commander // nil unless following the control plane
	// firmwareLim caps firmware bytes served, all downloads together.
	firmwareLim *rate.Limiter
	appendCtx   context.Context // cancelled when connections are closed by force

	mu      sync.Mutex // guards the fields below
	closing bool
	active  int // connections admitted, from before the upgrade until released
	conns   map[*conn]struct{}
	connWG  sync.WaitGroup // one per admitted connection
}

// New checks cfg and returns a frontend that logs to logger and registers its
// metrics with reg. A nil logger discards; a nil reg keeps the metrics
// unregistered. New opens nothing: [Frontend.Run] does.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Frontend, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Links.KeyFile != "" {
		// The drainer loads it when Run starts; a bad file is a
		// configuration error, said now.
		if _, _, err := clusterlink.ReadKeyFile(cfg.Links.KeyFile); err != nil {
			return nil, fmt.Errorf("frontend config: %w", err)
		}
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
	f := &Frontend{
		cfg:    cfg.clone(),
		logger: logger.With("component", "frontend"),
		reg:    reg,
		m:      m,
		limits: telemetry.Limits{MaxFrameBytes: cfg.MaxFrameBytes, MaxReadingsPerFrame: cfg.MaxReadingsPerFrame},
		conns:  make(map[*conn]struct{}),
	}
	f.proxies, _ = auth.ParseProxies(cfg.TrustedProxies) // checked by Validate
	f.srcLimit = auth.NewLimiter(cfg.AuthLimit)
	devLimit := cfg.AuthLimit
	devLimit.Failures = cfg.AuthDeviceFailures
	f.devLimit = auth.NewLimiter(devLimit)
	if err := auth.RegisterMetrics(reg, "drover_frontend", "source", f.srcLimit); err != nil {
		return nil, err
	}
	if err := auth.RegisterMetrics(reg, "drover_frontend", "device", f.devLimit); err != nil {
		return nil, err
	}
	if err := f.newAdmission(reg); err != nil {
		return nil, err
	}
	tcfg := cfg.TLS
	tcfg.ClientAuth = cfg.clientAuth()
	if f.tls, err = tlsserve.New(tcfg, "frontend", "drover_frontend", logger, reg); err != nil {
		return nil, fmt.Errorf("frontend config: %w", err)
	}
	f.newDrainer = f.forwardDrainer
	f.devs = newDevices(cfg.MaxIdleDevices, func(n int) { m.devices.Set(float64(n)) })
	f.upgrader = websocket.Upgrader{
		HandshakeTimeout: cfg.WriteTimeout,
		// 256 bytes: an idle connection's biggest buffer. Frames are read
		// through it into a pooled buffer, so a small one costs only a few
		// more read calls for big frames (measured: TestIdleConnectionMemory).
		ReadBufferSize: 256,
		// Acks are a few dozen bytes; a pooled write buffer is held only
		// while a message is written.
		WriteBufferSize: 512,
		WriteBufferPool: &sync.Pool{},
		// Devices authenticate with a token, not with cookies a browser
		// would attach to a cross-site request: the Origin check gorilla
		// does by default protects nothing here and refuses browser-based
		// test tools.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	f.setReady(errStarting)
	return f, nil
}

// queueRecordBytes is the most one stored frame can take: its readings as
// sent (binary is never larger than JSON) plus, per reading, the Record
// wrapper with a device id of at most 128 bytes and received_ms.
func queueRecordBytes(cfg Config) int {
	return max(512<<10, cfg.MaxFrameBytes+cfg.MaxReadingsPerFrame*(128+32)+4096)
}

// Addr returns the address the device server listens on, nil before it
// does. With Listen "127.0.0.1:0" it tells tests the port.
func (f *Frontend) Addr() net.Addr {
	if a := f.addr.Load(); a != nil {
		return *a
	}
	return nil
}

// Ready reports whether the frontend accepts and acks readings: nil once its
// queue is open, its registry loaded, its server listening and a router
// has answered its drainer since the start (upstreamReady), an error saying
// why not otherwise. It is cheap and never blocks, for /readyz.
func (f *Frontend) Ready() error {
	if err := *f.ready.Load(); err != nil {
		return err
	}
	return f.routers.ready()
}

func (f *Frontend) setReady(err error) { f.ready.Store(&err) }

// Run serves devices and drains the queue to the routers until ctx ends, then
// stops accepting, closes the connections gradually over LameDuck (1012,
// each once the frame it is storing is stored and acked), closes what is
// left with 1001 (by force after ShutdownGrace), stops the drainer, and
// closes the queue; what is queued stays on disk for the next start. It
// returns nil after a requested stop, and an error when it cannot start or a
// part of it fails (which also stops the rest).
func (f *Frontend) Run(ctx context.Context) error {
	if !f.started.CompareAndSwap(false, true) {
		return errRanTwice
	}
	store, ownStore, err := f.openRegistry()
	if err != nil {
		f.setReady(fmt.Errorf("frontend: registry: %w", err))
		return fmt.Errorf("frontend: load registry: %w", err)
	}
	storeCtx, stopStore := context.WithCancel(context.WithoutCancel(ctx))
	storeDone := make(chan struct{})
	go func() {
		defer close(storeDone)
		if ownStore {
			_ = store.Run(storeCtx)
		}
	}()
	defer func() { stopStore(); <-storeDone }()
	q, err := queue.Open(f.cfg.QueueDir, queue.Options{
		Name:           "frontend",
		MaxBytes:       f.cfg.QueueMaxBytes,
		MaxRecordBytes: queueRecordBytes(f.cfg),
		CommitDelay:    f.cfg.CommitDelay,
	}, f.logger, f.reg)
	if err != nil {
		f.setReady(fmt.Errorf("frontend: queue: %w", err))
		return fmt.Errorf("frontend: open queue: %w", err)
	}
	ln, err := tlsserve.Listen(ctx, f.cfg.Listen, f.cfg.ReusePort)
	if err != nil {
		_ = f.closeQueue(q) // the listen error is the one to report
		f.setReady(fmt.Errorf("frontend: listen: %w", err))
		return fmt.Errorf("frontend: listen on %s: %w", f.cfg.Listen, err)
	}
	dr, err := f.newDrainer(q)
	if err != nil {
		_ = ln.Close()
		_ = f.closeQueue(q) // the drainer error is the one to report
		f.setReady(fmt.Errorf("frontend: drainer: %w", err))
		return fmt.Errorf("frontend: start drainer: %w", err)
	}
	addr := ln.Addr()
	f.addr.Store(&addr)
	if f.tls != nil {
		f.tlsLn = f.tls.NewListener(ln, tlsserve.WrapConn(newAheadConnUnderTLS))
		ln = f.tlsLn
	}
	f.routers.watch(dr)
	appendCtx, forceStop := context.WithCancel(context.WithoutCancel(ctx))
	defer forceStop()
	f.q, f.appendCtx = q, appendCtx
	pres, err := f.startPresence()
	if err != nil {
		_ = ln.Close()
		_ = f.closeQueue(q)
		f.setReady(fmt.Errorf("frontend: presence: %w", err))
		return fmt.Errorf("frontend: presence: %w", err)
	}
	cmdr, err := f.startCommands()
	if err != nil {
		_ = ln.Close()
		_ = f.closeQueue(q)
		f.setReady(fmt.Errorf("frontend: commands: %w", err))
		return fmt.Errorf("frontend: commands: %w", err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc(IngestPath, f.serveIngest)
	if cmdr != nil {
		f.firmwareLim = newFirmwareLimiter(f.cfg.FirmwareBytesPerSecond)
		mux.HandleFunc(FirmwarePath, f.serveFirmware)
	}
	srv := &http.Server{
		Handler:           withTLSState(mux),
		ConnContext:       connContext, // upgrade.go: connections handed over by the front door
		ReadHeaderTimeout: f.cfg.WriteTimeout,
		IdleTimeout:       f.cfg.IdleTimeout, // plain HTTP keep-alive only
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(f.logger.Handler(), slog.LevelDebug),
	}

	// Each part runs until its context ends; one that stops on its own stops
	// the frontend. The drainer starts first: what the queue holds from
	// before goes to the routers even while the registry is awaited.
	failed := make(chan error, 3)
	drainCtx, stopDrain := context.WithCancel(context.WithoutCancel(ctx))
	defer stopDrain()
	drainDone := make(chan struct{})
	go func() {
		defer close(drainDone)
		err := dr.Run(drainCtx)
		if drainCtx.Err() == nil {
			if err == nil {
				err = errors.New("returned")
			}
			failed <- fmt.Errorf("frontend: drainer stopped: %w", err)
		}
	}()
	presCtx, stopPresence := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPresence()
	presDone := make(chan struct{})
	go func() {
		defer close(presDone)
		if pres != nil {
			pres.run(presCtx)
		}
	}()
	// Commands start once the registry is in force (a poll before it would
	// only find the API not ready, or its follower key not yet written, as
	// in drover all) and stop with the presence reports, after the
	// connections.
	cmdDone := make(chan struct{})
	startCommands := func() {
		go func() {
			defer close(cmdDone)
			if cmdr != nil {
				cmdr.run(presCtx)
			}
		}()
	}
	// The TLS reloads and the admission governor, until the stop.
	edgeCtx, stopEdge := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEdge()
	edgeDone := f.runEdge(edgeCtx)

	var runErr error
	serveDone := make(chan struct{})
	var front *upgradeListener
	if f.waitRegistry(ctx, store) {
		f.store = store
		defer store.Subscribe(f.registryChanged)()
		startCommands()
		front = newUpgradeListener(f, ln)
		f.front.Store(front)
		go func() {
			defer close(serveDone)
			if err := srv.Serve(front); err != nil && !errors.Is(err, http.ErrServerClosed) {
				failed <- fmt.Errorf("frontend: serve: %w", err)
			}
		}()
		f.setReady(nil)
		f.logger.Info("frontend: serving devices", "addr", addr.String(), "scheme", f.scheme(), "path", IngestPath,
			"device_auth", f.cfg.DeviceAuth, "reuse_port", f.cfg.ReusePort,
			"queue", f.cfg.QueueDir, "routers", strings.Join(f.cfg.Routers, ","), "devices_registered", store.Current().Len())
		select {
		case <-ctx.Done():
		case runErr = <-failed:
			// Returned, and logged by the caller; here only the stop is said.
			f.logger.Info("frontend: stopping after a failure")
		}
	} else {
		_ = ln.Close()
		close(serveDone)
		close(cmdDone)
	}

	// Stop: devices first (stop accepting, then the lame duck: close them
	// gradually, then what is left at once), then the drainer (it finishes
	// its in-flight batches), then the queue.
	f.setReady(errStopping)
	start := time.Now()
	shutCtx, cancelShut := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.ShutdownGrace)
	if err := srv.Shutdown(shutCtx); err != nil {
		_ = srv.Close()
	}
	cancelShut()
	<-serveDone
	if front != nil {
		front.wait() // the upgrades the front door was serving outside net/http
	}
	if runErr == nil {
		f.lameDuck(context.WithoutCancel(ctx), f.cfg.LameDuck)
	}
	graceCtx, cancelGrace := context.WithTimeout(context.WithoutCancel(ctx), f.cfg.ShutdownGrace)
	defer cancelGrace()
	n := f.closeConns(graceCtx, forceStop)
	f.logger.Info("frontend: device connections closed", "connections", n, "took", time.Since(start))
	stopPresence() // after the connections: their disconnects go in its last batch
	<-presDone
	<-cmdDone
	stopDrain()
	<-drainDone
	stopEdge()
	<-edgeDone
	if err := f.closeQueue(q); err != nil && runErr == nil {
		runErr = err
	}
	f.logger.Info("frontend: stopped", "took", time.Since(start))
	return runErr
}

// closeQueue closes the queue; the caller returns the error.
func (f *Frontend) closeQueue(q *queue.Queue) error {
	if err := q.Close(); err != nil {
		return fmt.Errorf("frontend: close queue: %w", err)
	}
	return nil
}

// admit reserves a connection slot, or says why there is none.
func (f *Frontend) admit() (ok bool, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closing:
		return false, reasonShuttingDown
	case f.active >= f.cfg.MaxConnections:
		return false, reasonMaxConnections
	}
	f.active++
	f.connWG.Add(1)
	return true, ""
}

// unadmit gives back a slot that admit reserved for a connection that was
// never established.
func (f *Frontend) unadmit() {
	f.mu.Lock()
	f.active--
	f.mu.Unlock()
	f.connWG.Done()
}

// track registers an established connection, unless the frontend is
// stopping.
func (f *Frontend) track(c *conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

// release forgets an ended connection and frees its slot.
func (f *Frontend) release(c *conn) {
	if f.devs.detach(c.dev, c) {
		f.presence.report(c.dev.id, c.client, "", false, time.Now())
	}
	f.mu.Lock()
	delete(f.conns, c)
	f.active--
	f.mu.Unlock()
	f.m.connections.Dec()
	f.connWG.Done()
}

// serveIngest authenticates a device, upgrades its connection and starts its
// read loop. It is served by the listener's front door (upgrade.go), outside
// net/http, unless the request head was too large for it.
func (f *Frontend) serveIngest(w http.ResponseWriter, r *http.Request) {
	if !websocket.IsWebSocketUpgrade(r) {
		f.refuseHTTP(w, http.StatusBadRequest, reasonNotWebSocket, "expected a WebSocket upgrade", "")
		return
	}
	// The cheapest checks first: an address that failed too often, the
	// accept rate, then the connection limit (during a reconnect stampede
	// most requests end there), all before any hashing or upgrade.
	now := time.Now()
	src := auth.SourceKey(f.proxies.ClientAddr(r))
	if left, blocked := f.srcLimit.Blocked(src, now); blocked {
		f.refuseRateLimited(w, left, "")
		return
	}
	id, token := credentials(r)
	certID := certDevice(r)
	if id == "" {
		id = certID
	}
	if !f.admitNew(w, id, now) {
		return
	}
	if ok, reason := f.admit(); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(f.retryAfter()))
		f.refuseHTTP(w, http.StatusServiceUnavailable, reason, "server busy, retry later", "")
		return
	}
	if certID != "" && id != certID {
		f.unadmit()
		f.authFailed(src, "", now)
		w.Header().Set("WWW-Authenticate", `Bearer realm="drover", error="invalid_token"`)
		f.refuseHTTP(w, http.StatusUnauthorized, reasonCertMismatch, textUnauthorized, id[:min(len(id), telemetry.MaxDeviceIDLen)])
		return
	}
	if id == "" || (token == "" && certID == "") {
		f.unadmit()
		f.authFailed(src, "", now)
		w.Header().Set("WWW-Authenticate", `Bearer realm="drover"`)
		f.refuseHTTP(w, http.StatusUnauthorized, reasonNoCredentials, "device id and token required", id)
		return
	}
	// An id outside the one definition is in no registry: refuse it with the
	// rule before hashing the token or looking it up. Saying so tells an
	// attacker nothing about which ids are registered; it still counts as a
	// failure of the source address.
	if err := telemetry.ValidateDeviceID(id); err != nil {
		f.unadmit()
		f.authFailed(src, "", now)
		f.refuseHTTP(w, http.StatusBadRequest, reasonBadDeviceID, err.Error(), id[:min(len(id), telemetry.MaxDeviceIDLen)])
		return
	}
	fwVersion, err := firmwareVersion(r)
	if err != nil {
		f.unadmit()
		f.refuseHTTP(w, http.StatusBadRequest, reasonBadFirmware, err.Error(), id)
		return
	}
	if left, blocked := f.devLimit.Blocked(id, now); blocked {
		f.unadmit()
		f.refuseRateLimited(w, left, id)
		return
	}
	reg := f.store.Current()
	grant, err := authenticate(reg, id, token, certID, now)
	if err != nil {
		f.unadmit()
		f.refuseAuth(w, src, id, now, err)
		return
	}
	if !f.notFlapping(w, id, now) {
		f.unadmit()
		return
	}
	ws, err := f.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// The upgrader has answered with the status.
		f.unadmit()
		f.m.refusals.WithLabelValues(reasonBadUpgrade).Inc()
		f.m.connectionsRefused.Inc()
		f.logger.Info("frontend: upgrade failed", "device", id, "err", err)
		return
	}
	f.m.connectionsAccepted.Inc()
	ws.SetReadLimit(int64(f.cfg.MaxFrameBytes))
	c := &conn{f: f, ws: ws, cred: grant, byCert: certID != "", client: src, firmware: fwVersion}
	if a := aheadOf(ws.NetConn()); a != nil {
		c.ahead, a.settle = a, c.settleInRead
	}
	c.text.Store(r.URL.Query().Get(QueryEncoding) == "json")
	if !f.track(c) {
		// Shutdown began during the upgrade: this connection never
		// reaches a read loop.
		msg := websocket.FormatCloseMessage(closeGoingAway, reasonTextGoingAway)
		_ = ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(f.cfg.WriteTimeout))
		_ = ws.Close()
		f.m.connectionsClosed.WithLabelValues(strconv.Itoa(closeGoingAway)).Inc()
		f.unadmit()
		return
	}
	// Counted once tracked: the gauge never shows a connection that the
	// stop's snapshot of f.conns could miss.
	f.m.connections.Inc()
	d, old := f.devs.attach(id, c) // sets c.dev
	f.connected(d, now)
	if old != nil {
		old.stop(CloseReplaced, reasonTextReplaced)
		c.log(slog.LevelInfo, "frontend: device reconnected; closing its older connection")
	}
	f.admitted(c, reg)
	f.presence.report(id, src, fwVersion, true, now)
	c.extend()
	ws.SetPongHandler(c.pongReceived)
	ws.SetPingHandler(c.pingReceived)
	ws.SetCloseHandler(c.closeReceived)
	c.startPing()
	c.log(slog.LevelDebug, "frontend: device connected")
	go c.readLoop()
}

// textUnauthorized is the body of every 401 for a wrong id or token.
const textUnauthorized = "unknown device or bad token"

// authFailed counts a failed authentication against the client's address
// and, when one was given, the device id, and logs the block either one
// reaches (once per block, not per refusal).
func (f *Frontend) authFailed(src, id string, now time.Time) {
	if d := f.srcLimit.Fail(src, now); d > 0 {
		f.logger.Warn("frontend: too many failed authentications from one address; refusing it", "source", src, "for", d)
	}
	if id == "" {
		return
	}
	if d := f.devLimit.Fail(id, now); d > 0 {
		f.logger.Warn("frontend: too many failed authentications for one device id; refusing it", "device", id, "for", d)
	}
}

// refuseRateLimited answers 429 to a client address or device id blocked
// for failing to authenticate, with the whole seconds left as Retry-After.
func (f *Frontend) refuseRateLimited(w http.ResponseWriter, left time.Duration, device string) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(left.Seconds()))))
	f.refuseHTTP(w, http.StatusTooManyRequests, reasonAuthRateLimit, "too many failed authentications, retry later", device)
}

// refuseHTTP answers a request refused before the upgrade, counts and logs it.
func (f *Frontend) refuseHTTP(w http.ResponseWriter, status int, reason, text, device string) {
	f.m.refusals.WithLabelValues(reason).Inc()
	f.m.connectionsRefused.Inc()
	level := slog.LevelInfo
	if status == http.StatusServiceUnavailable || status == http.StatusTooManyRequests {
		level = slog.LevelDebug // a stampede or an attack would flood the log; the metric counts it
	}
	f.logger.Log(context.Background(), level, "frontend: connection refused", "device", device, "status", status, "reason", reason)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, text)
}

// retryAfter draws a Retry-After in whole seconds, uniform in
// [RetryAfter/2, RetryAfter*3/2], at least 1.
func (f *Frontend) retryAfter() int {
	base := f.cfg.RetryAfter.Seconds()
	return max(1, int(base/2+rand.Float64()*base+0.5))
}

// credentials returns the device id and token of a request: from the
// X-Drover-Device and Authorization: Bearer headers, else from the device
// and token query parameters.
func credentials(r *http.Request) (id, token string) {
	id = r.Header.Get(HeaderDevice)
	if id == "" {
		id = r.URL.Query().Get(QueryDevice)
	}
	return id, auth.RequestToken(r, QueryToken)
}
