package endpoints

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// DNSScheme is the scheme of an endpoint that stands for every address its
// name resolves to: dns+tcp://name:port.
const DNSScheme = "dns+tcp"

// Defaults of Config.
const (
	DefaultInterval = 10 * time.Second
	// lookupTimeout bounds one lookup of one name (at most the interval).
	lookupTimeout = 5 * time.Second
	// minInterval keeps a typo (1ms) from turning into a DNS flood.
	minInterval = 100 * time.Millisecond
)

// Config says how dns+tcp:// endpoints are resolved. Start from
// [DefaultConfig].
type Config struct {
	// Interval is the time between two lookups of every dns+tcp:// name.
	Interval time.Duration
	// Server, when set, is the DNS server (host:port) every lookup asks
	// instead of the system's resolver.
	Server string
}

// DefaultConfig resolves every 10 s through the system's resolver.
func DefaultConfig() Config { return Config{Interval: DefaultInterval} }

// RegisterFlags defines -resolve-interval and -dns-server in fs, bound to c.
// what names the list they apply to in the usage ("-routers").
func (c *Config) RegisterFlags(fs *flag.FlagSet, what string) {
	fs.DurationVar(&c.Interval, "resolve-interval", c.Interval,
		"how often the "+DNSScheme+"://name:port entries of "+what+" are resolved again, to follow routers that come and go (`duration`)")
	fs.StringVar(&c.Server, "dns-server", c.Server,
		"DNS `server` (host:port) that resolves "+DNSScheme+":// entries instead of the system's resolver; empty: /etc/resolv.conf")
}

// Validate checks the interval and the server address.
func (c Config) Validate() error {
	var errs []error
	if c.Interval < minInterval {
		errs = append(errs, fmt.Errorf("resolve-interval: %s: want at least %s", c.Interval, minInterval))
	}
	if c.Server != "" {
		if _, port, err := net.SplitHostPort(c.Server); err != nil || port == "" || port == "0" {
			errs = append(errs, fmt.Errorf("dns-server: %q: want host:port", c.Server))
		}
	}
	return errors.Join(errs...)
}

// IsDNS reports whether an endpoint is of the dns+tcp:// form.
func IsDNS(ep string) bool { return strings.HasPrefix(ep, DNSScheme+"://") }

// Dynamic reports whether any endpoint of the list needs resolving.
func Dynamic(eps []string) bool { return slices.ContainsFunc(eps, IsDNS) }

// Static returns the endpoints of the list that are connected to as given.
func Static(eps []string) []string {
	var out []string
	for _, ep := range eps {
		if !IsDNS(ep) {
			out = append(out, ep)
		}
	}
	return out
}

// SplitDNS returns the name and port of a dns+tcp://name:port endpoint.
func SplitDNS(ep string) (name, port string, err error) {
	rest, ok := strings.CutPrefix(ep, DNSScheme+"://")
	if !ok {
		return "", "", fmt.Errorf("endpoint %q: not %s://name:port", ep, DNSScheme)
	}
	name, port, err = net.SplitHostPort(rest)
	if err != nil {
		return "", "", fmt.Errorf("endpoint %q: want %s://name:port: %w", ep, DNSScheme, err)
	}
	if name == "" || name == "*" {
		return "", "", fmt.Errorf("endpoint %q: a %s endpoint must name a host", ep, DNSScheme)
	}
	return name, port, nil
}

// Watcher follows one component's endpoint list: the static endpoints as
// they are, each dns+tcp:// name as the addresses it resolves to now.
type Watcher struct {
	consumer string
	cfg      Config
	static   []string
	names    []dnsName
	resolver *net.Resolver
	log      *slog.Logger
	m        *metrics

	mu      sync.Mutex
	current []string
}

type dnsName struct {
	spec, name, port string
	// Owned by Refresh's caller (one goroutine).
	addrs   []string // tcp://addr:port, sorted; nil before the first answer
	failing bool
}

// NewWatcher checks the list and returns its watcher. consumer names the
// component in logs and metrics ("frontend", "storage-writer/lake",
// "livefeed"). A nil logger discards; a nil reg keeps the metrics
// unregistered. Nothing is resolved before [Watcher.Refresh] or
// [Watcher.Run].
func NewWatcher(eps []string, cfg Config, consumer string, logger *slog.Logger, reg prometheus.Registerer) (*Watcher, error) {
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
	w := &Watcher{consumer: consumer, cfg: cfg, log: logger, m: m, resolver: newResolver(cfg.Server)}
	seen := map[string]bool{}
	for _, ep := range eps {
		if seen[ep] {
			return nil, fmt.Errorf("endpoint %q: listed twice", ep)
		}
		seen[ep] = true
		if !IsDNS(ep) {
			w.static = append(w.static, ep)
			continue
		}
		name, port, err := SplitDNS(ep)
		if err != nil {
			return nil, err
		}
		w.names = append(w.names, dnsName{spec: ep, name: name, port: port})
	}
	w.current = w.merge()
	w.m.endpoints.WithLabelValues(consumer).Set(float64(len(w.current)))
	return w, nil
}

// newResolver is the system's resolver, or one that asks server.
func newResolver(server string) *net.Resolver {
	if server == "" {
		return net.DefaultResolver
	}
	d := net.Dialer{Timeout: lookupTimeout}
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, server)
		},
	}
}

// Dynamic reports whether the list has a dns+tcp:// name to follow.
func (w *Watcher) Dynamic() bool { return len(w.names) > 0 }

// Current returns the endpoints as of the last refresh (before the first:
// the static ones). The caller may keep the slice.
func (w *Watcher) Current() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.current)
}

// Refresh looks every name up once and returns the endpoints and whether
// they differ from the last refresh. A name whose lookup fails keeps its
// previous addresses (see the package documentation). Refresh is not safe
// for concurrent use; [Watcher.Run] calls it.
func (w *Watcher) Refresh(ctx context.Context) (eps []string, changed bool) {
	for i := range w.names {
		n := &w.names[i]
		addrs, err := w.lookup(ctx, n)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			w.m.failures.WithLabelValues(w.consumer, n.name).Inc()
			if !n.failing {
				n.failing = true
				w.log.Warn("endpoints: lookup failed; keeping the addresses it had", "consumer", w.consumer,
					"name", n.name, "kept", len(n.addrs), "err", err)
			}
			continue
		}
		if n.failing {
			n.failing = false
			w.log.Info("endpoints: lookup works again", "consumer", w.consumer, "name", n.name, "addresses", len(addrs))
		}
		n.addrs = addrs
	}
	eps = w.merge()
	w.mu.Lock()
	changed = !slices.Equal(eps, w.current)
	if changed {
		w.log.Info("endpoints: list changed", "consumer", w.consumer, "endpoints", strings.Join(eps, ","),
			"added", strings.Join(minus(eps, w.current), ","), "removed", strings.Join(minus(w.current, eps), ","))
		w.current = eps
		w.m.changes.WithLabelValues(w.consumer).Inc()
		w.m.endpoints.WithLabelValues(w.consumer).Set(float64(len(eps)))
	}
	w.mu.Unlock()
	return slices.Clone(eps), changed
}

// lookup resolves one name into sorted tcp://addr:port endpoints.
func (w *Watcher) lookup(ctx context.Context, n *dnsName) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, min(lookupTimeout, w.cfg.Interval))
	defer cancel()
	// A and AAAA apart: LookupHost answers with the addresses of one
	// family when the other's query timed out (Go's resolver returns a
	// partial answer without an error), which would drop every router of
	// that family until the next refresh. A lookup counts only if neither
	// family failed; a family with no records ("not found") is an answer.
	var v6 []netip.Addr
	var err6 error
	done := make(chan struct{})
	go func() {
		defer close(done)
		v6, err6 = w.resolver.LookupNetIP(ctx, "ip6", n.name)
	}()
	v4, err4 := w.resolver.LookupNetIP(ctx, "ip4", n.name)
	<-done
	for _, err := range []error{err4, err6} {
		if err != nil && !isNotFound(err) {
			return nil, err
		}
	}
	if err4 != nil && err6 != nil {
		return nil, err4 // no such name: keep what it had, as for any failure
	}
	out := make([]string, 0, len(v4)+len(v6))
	for _, ip := range append(v4, v6...) {
		out = append(out, "tcp://"+net.JoinHostPort(ip.Unmap().String(), n.port))
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// isNotFound reports whether err says the name has no records (of the
// family asked), as opposed to a lookup that failed.
func isNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// merge returns the union of the static endpoints and every name's
// addresses, sorted and without duplicates.
func (w *Watcher) merge() []string {
	out := slices.Clone(w.static)
	for _, n := range w.names {
		out = append(out, n.addrs...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Run refreshes at once and then every interval until ctx ends, calling
// update (from Run's goroutine) with the whole list each time it changes.
// With no dns+tcp:// name it returns at once: the list never changes.
func (w *Watcher) Run(ctx context.Context, update func(eps []string)) {
	if !w.Dynamic() {
		return
	}
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		if eps, changed := w.Refresh(ctx); changed && ctx.Err() == nil {
			update(eps)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// minus returns the items of a not in b; both sorted.
func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if _, found := slices.BinarySearch(b, x); !found {
			out = append(out, x)
		}
	}
	return out
}

type metrics struct {
	endpoints *prometheus.GaugeVec
	failures  *prometheus.CounterVec
	changes   *prometheus.CounterVec
}

// newMetrics registers the package's metrics with reg, or finds them there:
// the components of drover all share one registry, each with its consumer
// label.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "drover_endpoints",
			Help: "Endpoints a component connects to now: its static ones and the addresses of its dns+tcp:// names."}, []string{"consumer"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_endpoints_lookup_failures_total",
			Help: "Lookups of a dns+tcp:// name that failed; the name kept the addresses it had."}, []string{"consumer", "name"}),
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_endpoints_changes_total",
			Help: "Times a component's endpoint list changed after a lookup (routers added or removed)."}, []string{"consumer"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.endpoints, err = register(reg, m.endpoints); err != nil {
		return nil, err
	}
	if m.failures, err = register(reg, m.failures); err != nil {
		return nil, err
	}
	if m.changes, err = register(reg, m.changes); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector of the same description
// already registered.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, fmt.Errorf("endpoints: register metrics: %w", err)
	}
	return c, nil
}
