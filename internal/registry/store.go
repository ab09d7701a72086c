package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// Store holds the registry in force for the frontends and routers of a
// process, and keeps it current from one of two sources:
//
//   - a registry file (NewStore): reloaded on SIGHUP and when the file
//     changes. A file that fails to load is logged and counted; the
//     previous registry stays in force. A file that loads with refused
//     entries is put in force without them: each refused entry is logged
//     at every load, and drover_registry_rejected_entries counts them.
//   - the control plane's change feed (NewFollower, follower.go).
//
// Readers take Current (an atomic load, never a lock); who must act on a
// change (a frontend closing the connections of a suspended device)
// subscribes.
type Store struct {
	log *slog.Logger
	cur atomic.Pointer[Registry]

	ready     chan struct{} // closed once cur is set
	readyOnce sync.Once

	subsMu sync.Mutex
	subs   map[int]func(Update)
	nextID int

	// run keeps the registry current until ctx ends: the file's reload
	// loop or the follower.
	run func(ctx context.Context) error

	// The file source.
	path     string
	loaded   os.FileInfo // the file last read, loaded or not
	reloads  *prometheus.CounterVec
	interval time.Duration

	devices  prometheus.Gauge
	rejected prometheus.Gauge
}

// Update is a change of the registry in force, as subscribers see it.
type Update struct {
	// Registry is the registry now in force.
	Registry *Registry
	// Changed lists the devices whose entry changed (added, changed or
	// removed), unless All.
	Changed []string
	// All says any device may have changed (a new snapshot, a file
	// reload): check every one.
	All bool
}

func newStore(logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Store{
		log:   logger,
		ready: make(chan struct{}),
		subs:  map[int]func(Update){},
		devices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_registry_devices", Help: "Devices in the registry in force.",
		}),
		rejected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_registry_rejected_entries",
			Help: "Entries of the registry in force that were refused (bad id, token hash or label, id listed twice): their devices cannot connect. The log names each, and why.",
		}),
	}
}

// NewStore loads the registry file at path and returns a Store serving it;
// Run reloads it. reg may be nil.
func NewStore(path string, logger *slog.Logger, reg prometheus.Registerer) (*Store, error) {
	s := newStore(logger)
	s.path, s.interval, s.run = path, 2*time.Second, s.runFile
	s.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "drover_registry_reloads_total", Help: "Device registry file reloads, by result (ok, error).",
	}, []string{"result"})
	if reg != nil {
		for _, c := range []prometheus.Collector{s.reloads, s.devices, s.rejected} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register registry metrics: %w", err)
			}
		}
	}
	if err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Static returns a Store that serves r and never changes (tests, sim).
func Static(r *Registry) *Store {
	s := newStore(nil)
	s.publish(r, Update{All: true})
	return s
}

// Current returns the registry in force; nil before the first one (a
// follower with neither a cache nor an answer from the API yet: see Wait).
func (s *Store) Current() *Registry { return s.cur.Load() }

// Ready reports whether a registry is in force.
func (s *Store) Ready() error {
	select {
	case <-s.ready:
		return nil
	default:
		return errNoRegistry
	}
}

var errNoRegistry = errors.New("registry: no copy yet (no cache, and the control plane has not answered)")

// Wait blocks until a registry is in force or ctx ends.
func (s *Store) Wait(ctx context.Context) error {
	select {
	case <-s.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for the registry: %w", context.Cause(ctx))
	}
}

// Subscribe calls fn with every later change of the registry in force,
// from the goroutine that made it, after it is in force: fn must be quick
// and must not block. The returned function unsubscribes.
func (s *Store) Subscribe(fn func(Update)) (cancel func()) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	id := s.nextID
	s.nextID++
	s.subs[id] = fn
	return func() {
		s.subsMu.Lock()
		delete(s.subs, id)
		s.subsMu.Unlock()
	}
}

// publish puts r in force and tells the subscribers.
func (s *Store) publish(r *Registry, u Update) {
	s.cur.Store(r)
	s.readyOnce.Do(func() { close(s.ready) })
	s.devices.Set(float64(r.Len()))
	s.rejected.Set(float64(len(r.Rejected())))
	u.Registry = r
	s.subsMu.Lock()
	subs := make([]func(Update), 0, len(s.subs))
	for _, fn := range s.subs {
		subs = append(subs, fn)
	}
	s.subsMu.Unlock()
	for _, fn := range subs {
		fn(u)
	}
}

// Run keeps the registry current until ctx ends.
func (s *Store) Run(ctx context.Context) error {
	if s.run == nil {
		<-ctx.Done()
		return nil
	}
	return s.run(ctx)
}

func (s *Store) reload() error {
	st, err := os.Stat(s.path)
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("stat registry: %w", err)
	}
	r, err := Load(s.path)
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		return err
	}
	s.loaded = st
	s.reloads.WithLabelValues("ok").Inc()
	s.logRejected(r.Rejected())
	s.publish(r, Update{All: true})
	return nil
}

// maxRejectedLogged bounds the log lines of one load: a generated file with
// a systematic mistake could refuse every one of 200,000 entries.
const maxRejectedLogged = 20

// logRejected logs the refused entries of a load, one line each up to
// maxRejectedLogged, then how many more.
func (s *Store) logRejected(rej []Rejection) {
	for i, rj := range rej {
		if i == maxRejectedLogged {
			s.log.Warn("registry: more entries refused; drover registry check lists them all",
				"path", s.path, "more", len(rej)-i, "refused", len(rej))
			return
		}
		s.log.Warn("registry: entry refused; its device cannot connect",
			"path", s.path, "entry", rj.Index, "device", rj.ID, "reason", rj.Reason)
	}
}

// runFile reloads the file on SIGHUP and on change until ctx ends.
func (s *Store) runFile(ctx context.Context) error {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			s.reloadAndLog("SIGHUP")
		case <-t.C:
			st, err := os.Stat(s.path)
			if err == nil && daemon.FileChanged(s.loaded, st) {
				s.reloadAndLog("file changed")
			}
		}
	}
}

func (s *Store) reloadAndLog(why string) {
	if err := s.reload(); err != nil {
		s.log.Error("registry: reload failed; keeping the previous one", "path", s.path, "trigger", why, "err", err)
		// Do not retry the same broken file every tick.
		if st, e := os.Stat(s.path); e == nil {
			s.loaded = st
		}
		return
	}
	s.log.Info("registry: reloaded", "path", s.path, "trigger", why, "devices", s.Current().Len())
}
