package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/cors"

	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/tlsserve"
)

// Server is the control plane's REST API: one replica. Build it with
// [New] and run it with [Server.Run].
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	limiter *authLimiter
	tls     *tlsserve.Server // nil without TLS (drover_api_tls_* metrics)

	db      *store
	notify  *notifier
	handoff *handoffs
	holds   *holds // commands_holds.go
	events  *eventBus
	handler http.Handler
	routes  []route

	mu       sync.Mutex
	addr     string
	started  chan struct{} // closed once the database is open and the port bound
	polledOK atomic.Int64  // unix ms of the last successful version poll
	// listening: this replica hears the command notifications of every
	// replica, its own included (PostgreSQL; commands_notify.go).
	listening atomic.Bool

	// keys caches the active API keys this replica read (keycache.go).
	keys *keyCache

	touchMu sync.Mutex
	touched map[string]time.Time // key id → last recorded use
}

// New checks cfg and returns a server; nothing is opened until Run. reg may
// be nil.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: logger, metrics: m, limiter: newAuthLimiter(cfg),
		started: make(chan struct{}), touched: map[string]time.Time{}, notify: newNotifier(),
		handoff: newHandoffs(),
		holds:   newHolds(),
	}
	if reg != nil {
		if err := auth.RegisterMetrics(reg, "drover_api", "source", s.limiter.source); err != nil {
			return nil, err
		}
		if err := auth.RegisterMetrics(reg, "drover_api", "key", s.limiter.key); err != nil {
			return nil, err
		}
	}
	if cfg.TLSCert != "" {
		// The frontend's and the livefeed's TLS plumbing: reloaded on SIGHUP
		// and when a file changes, handshakes limited.
		tc := tlsserve.Config{CertFile: cfg.TLSCert, KeyFile: cfg.TLSKey, Limits: tlsserve.DefaultLimits()}
		if s.tls, err = tlsserve.New(tc, "api", "drover_api", logger, reg); err != nil {
			return nil, fmt.Errorf("api config: %w", err)
		}
	}
	// On PostgreSQL the key cache is off until this replica listens for
	// the evictions of the others (commands_notify.go).
	s.keys = newKeyCache(cfg.KeyCacheMaxAge, cfg.KeyCacheSize, cfg.Driver == DriverSQLite, m.keyLookups, m.keyEvictions)
	s.events = newEventBus(s)
	s.routes = s.routeTable()
	s.handler = s.buildHandler()
	return s, nil
}

// Started is closed once the server has opened its database and bound its
// port; [Server.Addr] is valid from then on.
func (s *Server) Started() <-chan struct{} { return s.started }

// Addr is the bound address, or "" before [Server.Started].
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Ready reports whether the replica serves: started, and its database
// answered within the last few seconds. Cheap: it reads what the version
// poller last saw.
func (s *Server) Ready() error {
	select {
	case <-s.started:
	default:
		return errors.New("not started: opening the database")
	}
	last := time.UnixMilli(s.polledOK.Load())
	if age := time.Since(last); age > 5*time.Second+5*s.cfg.FeedPoll {
		return fmt.Errorf("database not answering for %s", age.Round(time.Second))
	}
	return nil
}

// Run opens the database (retrying while it is unreachable), applies the
// migrations, creates the bootstrap admin key on a first start, serves
// until ctx ends and then stops gracefully.
func (s *Server) Run(ctx context.Context) error {
	db, err := s.openWithRetry(ctx)
	if err != nil {
		return err
	}
	s.db = db
	defer db.close()
	if err := s.bootstrap(ctx); err != nil {
		return err
	}
	if err := s.ensureFollowerKey(ctx); err != nil {
		return err
	}
	if err := s.seed(ctx); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("api: listen on %s: %w", s.cfg.Listen, err)
	}
	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.mu.Unlock()
	s.polledOK.Store(time.Now().UnixMilli())
	scheme := "http"
	if s.tls != nil {
		scheme = "https"
		ln = s.tls.NewListener(ln)
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		// A whole request body (an import of 100,000 rows) within 5
		// minutes; no WriteTimeout: long polls and snapshots stream for
		// longer, and end with the server's context.
		ReadTimeout: 5 * time.Minute,
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	// Long polls end with the server's context, so that Shutdown does not
	// wait for them.
	baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv.BaseContext = func(net.Listener) context.Context { return baseCtx }

	bg, cancelBg := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.pollVersion(bg) })
	wg.Go(func() { s.pruneTombstones(bg) })
	wg.Go(func() { s.sweepCommands(bg) })
	wg.Go(func() { s.events.run(bg) })
	wg.Go(func() { s.runCampaigns(bg) })
	if s.tls != nil {
		wg.Go(func() { s.tls.Run(bg) })
	}
	defer func() { cancelBg(); wg.Wait() }()
	if s.cfg.Driver == DriverPostgres {
		// Serve once listening, so that a stream opened at once hears
		// the other replicas (or once the first attempt failed).
		listening := make(chan struct{})
		wg.Go(func() { s.listenCommands(bg, listening) })
		select {
		case <-listening:
		case <-ctx.Done():
			ln.Close()
			return nil
		}
	}

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("api listening", "url", scheme+"://"+s.Addr(), "db", s.cfg.Driver)
	close(s.started)
	select {
	case err := <-errc:
		return fmt.Errorf("api: serve: %w", err)
	case <-ctx.Done():
	}
	cancelBase()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("api: shutdown: %w", err)
	}
	return nil
}

// openWithRetry opens the store, retrying with backoff while the database
// is unreachable (PostgreSQL starting after the api), until ctx ends. A
// migration error on a reachable database is not retried.
func (s *Server) openWithRetry(ctx context.Context) (*store, error) {
	backoff := 500 * time.Millisecond
	for {
		db, err := openStore(ctx, s.cfg, s.log)
		if err == nil {
			db.groupSize = func(n int) { s.metrics.writeGroups.Observe(float64(n)) }
			db.groupRetries = s.metrics.groupRetries.Inc
			db.commitTime = func(d time.Duration) { s.metrics.commitTime.Observe(d.Seconds()) }
			db.keys = s.keys
			if db.driver == DriverPostgres {
				s.metrics.pg.Store(&db.pgCount)
			}
			return db, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("api: open database: %w", ctx.Err())
		}
		if s.cfg.Driver == DriverSQLite {
			return nil, fmt.Errorf("api: %w", err)
		}
		s.log.Warn("api: database unreachable; retrying", "in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("api: open database: %w", ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// pollVersion reads the database's change version every FeedPoll, so that
// long polls wake for changes committed by other replicas, and so that
// /readyz knows the database answers.
func (s *Server) pollVersion(ctx context.Context) {
	t := time.NewTicker(s.cfg.FeedPoll)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := s.db.currentVersion(qctx)
		cancel()
		if err != nil {
			if !failing && ctx.Err() == nil {
				s.log.Error("api: database not answering", "err", err)
			}
			failing = true
			continue
		}
		if failing {
			s.log.Info("api: database answering again")
			failing = false
		}
		s.polledOK.Store(time.Now().UnixMilli())
		s.db.observe(v)
		s.metrics.feedVersion.Set(float64(s.db.knownVersion()))
	}
}

// buildHandler wraps the routes with CORS when origins are configured.
func (s *Server) buildHandler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range s.routes {
		mux.Handle(rt.method+" "+rt.pattern, s.wrap(rt))
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.metrics.requests.WithLabelValues("unknown", "404").Inc()
		writeError(w, &Error{Status: http.StatusNotFound, Code: "not_found", Message: "no such endpoint: " + r.Method + " " + r.URL.Path})
	})
	if len(s.cfg.CORSOrigins) == 0 {
		return mux
	}
	return cors.New(cors.Options{
		AllowedOrigins: s.cfg.CORSOrigins,
		AllowedMethods: []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete},
		AllowedHeaders: []string{"Authorization", "Content-Type", "If-Match"},
		ExposedHeaders: []string{"ETag", "Location", "Retry-After", "X-Request-Id"},
		MaxAge:         600,
	}).Handler(mux)
}

// statusWriter remembers the status written.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// ctxKey keys request-scoped values.
type ctxKey int

const requestIDKey ctxKey = 0

// requestID returns the request's id (for logs and the audit log).
func requestID(r *http.Request) string {
	id, _ := r.Context().Value(requestIDKey).(string)
	return id
}

// wrap authenticates, checks the route's role, runs the handler and turns
// its error into the one error shape; it counts and times every request.
func (s *Server) wrap(rt route) http.Handler {
	label := rt.method + " " + rt.pattern
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		rid := hex.EncodeToString(b)
		w.Header().Set("X-Request-Id", rid)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey, rid))
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
		sw := &statusWriter{ResponseWriter: w}
		err := s.serve(rt, sw, r)
		if err != nil {
			e := asAPIError(err)
			if e == errInternal {
				s.log.Error("api: request failed", "route", label, "request_id", rid, "err", err)
			} else if e.Status == http.StatusBadRequest || e.Status == http.StatusUnprocessableEntity ||
				e.Status == http.StatusConflict || e.Status == http.StatusRequestEntityTooLarge {
				s.metrics.refused.WithLabelValues(e.Code).Inc()
			}
			if sw.status == 0 {
				writeError(sw, e)
			}
		}
		s.metrics.requests.WithLabelValues(label, fmt.Sprint(sw.status)).Inc()
		s.metrics.duration.WithLabelValues(label).Observe(time.Since(start).Seconds())
	})
}

func (s *Server) serve(rt route, w http.ResponseWriter, r *http.Request) error {
	if rt.public {
		return rt.h(w, r, nil)
	}
	p, err := s.authenticate(r)
	if err != nil {
		return err
	}
	if !rt.perm.allows(p) {
		return errForbidden("this endpoint needs %s; your key is %s of %v", rt.perm, p.Role, p.fleetList())
	}
	return rt.h(w, r, p)
}
