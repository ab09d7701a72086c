package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/drover-telemetry/drover/internal/auth"
)

// opsShutdownTimeout bounds how long Run waits for in-flight scrapes and probes
// once its context ends.
const opsShutdownTimeout = 5 * time.Second

// OpsConfig is the ops server's configuration. Start from
// [DefaultOpsConfig].
type OpsConfig struct {
	// Listen is the address, host:port (port 0 picks a free port). The
	// default binds loopback: a Prometheus that scrapes from another host
	// or pod needs an address it can reach (0.0.0.0:PORT, or the pod's IP).
	Listen string
	// Pprof serves /debug/pprof/: profiles, goroutine dumps and the
	// command line. Off by default: a CPU profile or trace costs the
	// process, and it shows more of the process than metrics do.
	Pprof bool
	// Token, when set, is the bearer token /metrics and /debug/pprof/ ask
	// for ("Authorization: Bearer TOKEN"; Prometheus: authorization.
	// credentials_file). /healthz and /readyz stay open: probes carry no
	// credentials, and they say no more than ok or which part is not
	// ready.
	Token string
}

// DefaultOpsConfig returns an ops server on loopback at port, without
// pprof or token.
func DefaultOpsConfig(port int) OpsConfig {
	return OpsConfig{Listen: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
}

// RegisterFlags defines -ops-listen, -pprof and -ops-token (a secret, see
// [SecretVar]) in fs, bound to c.
func (c *OpsConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "ops-listen", c.Listen,
		"`address` (host:port) of the ops HTTP server: /metrics, /healthz, /readyz and, with -pprof, /debug/pprof/; loopback unless told otherwise (Prometheus on another host or pod: 0.0.0.0:PORT, ideally with -ops-token)")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof,
		"serve /debug/pprof/ on the ops server (needs -ops-token when -ops-listen is not loopback)")
	SecretVar(fs, &c.Token, "ops-token",
		"bearer `token` that /metrics and /debug/pprof/ ask for; /healthz and /readyz stay open")
}

// Validate checks the address, and refuses pprof reachable from other
// hosts without a token: a profile request is work anyone could make the
// process do, and the profiles show its memory and code.
func (c OpsConfig) Validate() error {
	if err := ValidateListenAddr(c.Listen); err != nil {
		return fmt.Errorf("ops-listen: %w", err)
	}
	if c.Pprof && c.Token == "" && !IsLoopbackListen(c.Listen) {
		return fmt.Errorf("pprof: -ops-listen %s is reachable from other hosts: give -ops-token too, or bind loopback and use kubectl port-forward or ssh", c.Listen)
	}
	return nil
}

// IsLoopbackListen reports whether a listen address binds loopback only:
// localhost or a loopback IP. An empty host binds every interface.
func IsLoopbackListen(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// Ops is a process's operations HTTP server. It serves
//
//   - /metrics: the Prometheus registry given to [NewOps] (main registers the
//     Go and process collectors; components register their own metrics);
//   - /healthz: 200 "ok" whenever the process is up enough to answer;
//   - /readyz: 200 "ok" when every readiness check passes, otherwise 503 with
//     one line per failing check, "name: error";
//   - /debug/pprof/, only with [OpsConfig.Pprof].
//
// With [OpsConfig.Token], /metrics and /debug/pprof/ answer 401 to a
// request without that bearer token (counted in
// drover_ops_unauthorized_total); the probes stay open.
//
// Call [Ops.Listen] (or let [Ops.Run] do it) and then [Ops.Run]; [Ops.Addr]
// gives the bound address, which matters when the address asks for port 0.
type Ops struct {
	addr   string
	logger *slog.Logger
	mux    *http.ServeMux
	cfg    OpsConfig

	mu     sync.Mutex
	checks []readyCheck
	ln     net.Listener

	ready chan struct{} // closed once listening
}

type readyCheck struct {
	name string
	fn   func() error
}

// NewOps checks cfg and returns an ops server that will listen on
// cfg.Listen and serve reg on /metrics. A nil reg serves an empty registry;
// a nil logger discards.
func NewOps(cfg OpsConfig, reg *prometheus.Registry, logger *slog.Logger) (*Ops, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	unauthorized := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_ops_unauthorized_total",
		Help: "Requests to /metrics or /debug/pprof/ refused for a missing or wrong -ops-token, by path.",
	}, []string{"path"})
	if err := reg.Register(unauthorized); err != nil {
		return nil, fmt.Errorf("register ops metrics: %w", err)
	}
	o := &Ops{
		addr:   cfg.Listen,
		logger: logger,
		mux:    http.NewServeMux(),
		cfg:    cfg,
		ready:  make(chan struct{}),
	}
	guard := func(path string, h http.Handler) http.Handler { return h }
	if cfg.Token != "" {
		want := auth.Hash(cfg.Token)
		guard = func(path string, h http.Handler) http.Handler {
			refused := unauthorized.WithLabelValues(path)
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				// Header only: a token in a URL ends up in access logs.
				if !want.Matches(auth.Bearer(r.Header.Get("Authorization"))) {
					refused.Inc()
					w.Header().Set("WWW-Authenticate", `Bearer realm="drover-ops"`)
					http.Error(w, "unauthorized", http.StatusUnauthorized)
					return
				}
				h.ServeHTTP(w, r)
			})
		}
	}
	metrics := promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelError),
		Registry:          reg,
		EnableOpenMetrics: true,
	}))
	o.mux.Handle("GET /metrics", guard("/metrics", metrics))
	o.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	o.mux.HandleFunc("GET /readyz", o.serveReady)
	if cfg.Pprof {
		// Profiles, on the ops port only (never the device or client port),
		// when asked for: "where does the time go" must be answerable on a
		// live process, by those allowed to ask.
		o.mux.Handle("/debug/pprof/", guard("/debug/pprof/", http.HandlerFunc(pprof.Index)))
		o.mux.Handle("/debug/pprof/cmdline", guard("/debug/pprof/", http.HandlerFunc(pprof.Cmdline)))
		o.mux.Handle("/debug/pprof/profile", guard("/debug/pprof/", http.HandlerFunc(pprof.Profile)))
		o.mux.Handle("/debug/pprof/symbol", guard("/debug/pprof/", http.HandlerFunc(pprof.Symbol)))
		o.mux.Handle("/debug/pprof/trace", guard("/debug/pprof/", http.HandlerFunc(pprof.Trace)))
	}
	return o, nil
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
	o.logger.Info("ops server listening", "addr", ln.Addr().String(), "pprof", o.cfg.Pprof, "metrics_token", o.cfg.Token != "")
	if !IsLoopbackListen(o.cfg.Listen) && o.cfg.Token == "" {
		o.logger.Warn("ops server: /metrics is open to every host that reaches this address; give -ops-token to require a bearer token", "addr", ln.Addr().String())
	}

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
