package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// opsShutdownTimeout bounds how long Run waits for in-flight scrapes and probes
// once its context ends.
const opsShutdownTimeout = 5 * time.Second

// Ops is a process's operations HTTP server. It serves
//
//   - /metrics: the Prometheus registry given to [NewOps] (main registers the
//     Go and process collectors; components register their own metrics);
//   - /healthz: 200 "ok" whenever the process is up enough to answer;
//   - /readyz: 200 "ok" when every readiness check passes, otherwise 503 with
//     one line per failing check, "name: error".
//
// Call [Ops.Listen] (or let [Ops.Run] do it) and then [Ops.Run]; [Ops.Addr]
// gives the bound address, which matters when the address asks for port 0.
type Ops struct {
	addr   string
	logger *slog.Logger
	mux    *http.ServeMux

	mu     sync.Mutex
	checks []readyCheck
	ln     net.Listener

	ready chan struct{} // closed once listening
}

type readyCheck struct {
	name string
	fn   func() error
}

// NewOps returns an ops server that will listen on addr (host:port; port 0
// picks a free port) and serve reg on /metrics. A nil reg serves an empty
// registry; a nil logger discards.
func NewOps(addr string, reg *prometheus.Registry, logger *slog.Logger) *Ops {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	o := &Ops{
		addr:   addr,
		logger: logger,
		mux:    http.NewServeMux(),
		ready:  make(chan struct{}),
	}
	metrics := promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelError),
		Registry:          reg,
		EnableOpenMetrics: true,
	}))
	o.mux.Handle("GET /metrics", metrics)
	o.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	o.mux.HandleFunc("GET /readyz", o.serveReady)
	// Profiles, on the ops port only (never the device or client port):
	// "where does the time go" must be answerable on a live process.
	o.mux.HandleFunc("/debug/pprof/", pprof.Index)
	o.mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	o.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	o.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	o.mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return o
}

// AddReadyCheck adds a readiness check: /readyz answers 200 only while every
// check returns nil. fn is called on every /readyz request, so it must be
// cheap and must not block. Checks may be added before or after Run starts.
func (o *Ops) AddReadyCheck(name string, fn func() error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.checks = append(o.checks, readyCheck{name: name, fn: fn})
}

// Handler returns the server's handler, for mounting elsewhere or testing.
func (o *Ops) Handler() http.Handler { return o.mux }

// CheckReady runs every readiness check and returns the failures joined, or
// nil when all pass.
func (o *Ops) CheckReady() error {
	o.mu.Lock()
	checks := append([]readyCheck(nil), o.checks...)
	o.mu.Unlock()
	var errs []error
	for _, c := range checks {
		if err := c.fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.name, err))
		}
	}
	return errors.Join(errs...)
}

func (o *Ops) serveReady(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := o.CheckReady(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = fmt.Fprintf(w, "not ready\n%s\n", strings.TrimSpace(err.Error()))
		return
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Listen binds the server's address. It is optional: Run calls it when it has
// not been called. Calling it twice is an error.
func (o *Ops) Listen() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ln != nil {
		return errors.New("ops server: already listening")
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return fmt.Errorf("ops server: listen on %s: %w", o.addr, err)
	}
	o.ln = ln
	close(o.ready)
	return nil
}

// Ready returns a channel closed once the server is listening; [Ops.Addr] is
// valid from then on.
func (o *Ops) Ready() <-chan struct{} { return o.ready }

// Addr returns the bound address (with the real port when port 0 was asked),
// or "" before [Ops.Listen].
func (o *Ops) Addr() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ln == nil {
		return ""
	}
	return o.ln.Addr().String()
}

// Run listens (unless [Ops.Listen] was called) and serves until ctx ends, then
// shuts down gracefully, letting in-flight requests finish for a few seconds.
// It returns nil after a stop caused by ctx, and the error otherwise.
func (o *Ops) Run(ctx context.Context) error {
	o.mu.Lock()
	listening := o.ln != nil
	o.mu.Unlock()
	if !listening {
		if err := o.Listen(); err != nil {
			return err
		}
	}
	o.mu.Lock()
	ln := o.ln
	o.mu.Unlock()

	srv := &http.Server{
		Handler:           o.mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(o.logger.Handler(), slog.LevelWarn),
	}
	o.logger.Info("ops server listening", "addr", ln.Addr().String())

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("ops server: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opsShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return fmt.Errorf("ops server: shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("ops server: serve: %w", err)
	}
	return nil
}
