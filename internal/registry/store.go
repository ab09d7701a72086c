package registry

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// Store holds the current registry of a file and reloads it on SIGHUP and
// when the file changes. A file that fails to load is logged and counted;
// the previous registry stays in force. A file that loads with refused
// entries is put in force without them: each refused entry is logged at
// every load, and drover_registry_rejected_entries counts them.
type Store struct {
	path   string
	log    *slog.Logger
	cur    atomic.Pointer[Registry]
	loaded os.FileInfo // the file last read, loaded or not

	reloads  *prometheus.CounterVec
	devices  prometheus.Gauge
	rejected prometheus.Gauge
	interval time.Duration
}

// NewStore loads path and returns a Store serving it. reg may be nil.
func NewStore(path string, logger *slog.Logger, reg prometheus.Registerer) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		path:     path,
		log:      logger,
		interval: 2 * time.Second,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "drover_registry_reloads_total", Help: "Device registry reloads, by result (ok, error).",
		}, []string{"result"}),
		devices: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_registry_devices", Help: "Devices in the registry in force.",
		}),
		rejected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_registry_rejected_entries",
			Help: "Entries of the registry file in force that were refused (bad id, token hash or label, id listed twice): their devices cannot connect. The log names each, and why.",
		}),
	}
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

// Static returns a Store that serves r and never reloads (tests, sim).
func Static(r *Registry) *Store {
	s := &Store{}
	s.cur.Store(r)
	return s
}

// Current returns the registry in force.
func (s *Store) Current() *Registry { return s.cur.Load() }

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
	s.cur.Store(r)
	s.reloads.WithLabelValues("ok").Inc()
	s.devices.Set(float64(r.Len()))
	s.rejected.Set(float64(len(r.Rejected())))
	s.logRejected(r.Rejected())
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

// Run reloads on SIGHUP and on file change until ctx ends.
func (s *Store) Run(ctx context.Context) error {
	if s.path == "" {
		<-ctx.Done()
		return nil
	}
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
