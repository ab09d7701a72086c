package frontend

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/backoff"
)

// PresenceConfig is how a frontend that follows the control plane reports
// which devices it holds (POST /v1/feed/presence): a device's last-seen
// time, frontend and address in the API.
//
// Reports never wait on the ack path: a connect or disconnect puts the
// device's latest report in a map (a newer report of the same device
// replaces the older), which a goroutine sends in batches every Interval.
// While the API does not answer, the map keeps the latest report per
// device, at most MaxPending devices (a bounded copy of the present, not a
// growing log); a report that finds it full is dropped and counted
// (drover_frontend_presence_dropped_total{reason="full"}), and the
// refresh of every connected device each Refresh repairs what was lost
// once the API answers again.
type PresenceConfig struct {
	Interval   time.Duration
	Refresh    time.Duration
	MaxPending int
}

// DefaultPresenceConfig: batches every second, every connected device
// reported again each minute, up to 100,000 devices waiting (~15 MB).
func DefaultPresenceConfig() PresenceConfig {
	return PresenceConfig{Interval: time.Second, Refresh: time.Minute, MaxPending: 100_000}
}

// RegisterFlags defines the presence flags in fs.
func (c *PresenceConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Interval, "presence-interval", c.Interval,
		"with -registry-api: how often (`duration`) device connects and disconnects are sent to the control plane, in batches")
	fs.DurationVar(&c.Refresh, "presence-refresh", c.Refresh,
		"with -registry-api: how often (`duration`) every connected device is reported again (last seen; repairs reports lost while the API was down)")
	fs.IntVar(&c.MaxPending, "presence-max-pending", c.MaxPending,
		"with -registry-api: most devices whose report waits for the control plane (`number`), at least -max-connections; past it reports are dropped and counted")
}

// Validate checks the presence settings.
func (c PresenceConfig) Validate() error {
	if c.Interval <= 0 || c.Refresh <= 0 || c.MaxPending < 1 {
		return fmt.Errorf("presence: interval %v, refresh %v, max pending %d: want each > 0", c.Interval, c.Refresh, c.MaxPending)
	}
	return nil
}

// presence reports device presence to the control plane.
type presence struct {
	cfg    PresenceConfig
	client *apiclient.Client
	id     string // this frontend
	log    *slog.Logger
	conns  func() []*conn

	mu      sync.Mutex
	pending map[string]apiclient.PresenceReport
	kick    chan struct{}

	sent    prometheus.Counter
	dropped *prometheus.CounterVec
	fails   prometheus.Counter
}

func newPresence(cfg PresenceConfig, client *apiclient.Client, id string, logger *slog.Logger, reg prometheus.Registerer, conns func() []*conn) (*presence, error) {
	p := &presence{
		cfg: cfg, client: client, id: id, log: logger, conns: conns,
		pending: map[string]apiclient.PresenceReport{}, kick: make(chan struct{}, 1),
		sent: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_frontend_presence_reports_sent_total",
			Help: "Presence reports (connect, disconnect, refresh) the control plane took."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_frontend_presence_dropped_total",
			Help: "Presence reports dropped: full (-presence-max-pending devices waiting while the control plane does not answer), stop (not sent at shutdown), refused (a batch the API refused as invalid)."}, []string{"reason"}),
		fails: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_frontend_presence_failures_total",
			Help: "Presence batches the control plane did not take (they wait, bounded, for the next try)."}),
	}
	for _, c := range []prometheus.Collector{p.sent, p.dropped, p.fails} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register presence metrics: %w", err)
		}
	}
	return p, nil
}

// report records a device's presence (with the firmware version it named
// at connect, "" for none): quick, never blocks on the API.
func (p *presence) report(id, addr, firmware string, connected bool, at time.Time) {
	if p == nil {
		return
	}
	p.mu.Lock()
	old, ok := p.pending[id]
	switch {
	case ok && old.SeenAt.After(at):
	case !ok && len(p.pending) >= p.cfg.MaxPending:
		p.dropped.WithLabelValues("full").Inc()
	default:
		p.pending[id] = apiclient.PresenceReport{ID: id, SeenAt: at.UTC(), RemoteAddr: addr, Connected: connected, Firmware: firmware}
	}
	full := len(p.pending) >= apiclient.MaxPresenceReports
	p.mu.Unlock()
	if full {
		select {
		case p.kick <- struct{}{}:
		default:
		}
	}
}

// run sends batches until ctx ends, then once more, briefly, what is left
// (the disconnects of the stop).
func (p *presence) run(ctx context.Context) {
	flush := time.NewTicker(p.cfg.Interval)
	defer flush.Stop()
	refresh := time.NewTicker(p.cfg.Refresh)
	defer refresh.Stop()
	bo := backoff.New(p.cfg.Interval, 10*time.Second, nil)
	var retryAt time.Time
	for {
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			err := p.flush(final)
			cancel()
			if err != nil {
				p.mu.Lock()
				n := len(p.pending)
				p.mu.Unlock()
				p.dropped.WithLabelValues("stop").Add(float64(n))
			}
			return
		case now := <-refresh.C:
			for _, c := range p.conns() {
				p.report(c.dev.id, c.client, c.firmware, true, now)
			}
			continue
		case <-flush.C:
		case <-p.kick:
		}
		if time.Now().Before(retryAt) {
			continue
		}
		if err := p.flush(ctx); err != nil {
			if !bo.Active() {
				p.log.Warn("frontend: the control plane does not take presence reports; they wait (bounded) and are sent again",
					"api", p.client.URL(), "err", err)
			}
			retryAt = time.Now().Add(bo.Next())
			continue
		}
		if bo.Active() {
			p.log.Info("frontend: presence reports taken again")
		}
		bo.Reset()
	}
}

// flush sends what waits, in batches; a batch the API does not take goes
// back into the map, unless a newer report of its device came meanwhile.
func (p *presence) flush(ctx context.Context) error {
	p.mu.Lock()
	if len(p.pending) == 0 {
		p.mu.Unlock()
		return nil
	}
	all := make([]apiclient.PresenceReport, 0, len(p.pending))
	for _, r := range p.pending {
		all = append(all, r)
	}
	clear(p.pending)
	p.mu.Unlock()
	var err error
	for len(all) > 0 {
		n := min(len(all), apiclient.MaxPresenceReports)
		if err = p.client.Presence(ctx, p.id, all[:n]); err != nil {
			p.fails.Inc()
			break
		}
		p.sent.Add(float64(n))
		all = all[n:]
	}
	if err == nil {
		return nil
	}
	p.mu.Lock()
	for _, r := range all {
		if cur, ok := p.pending[r.ID]; ok && !cur.SeenAt.Before(r.SeenAt) {
			continue
		}
		if _, ok := p.pending[r.ID]; !ok && len(p.pending) >= p.cfg.MaxPending {
			p.dropped.WithLabelValues("full").Inc()
			continue
		}
		p.pending[r.ID] = r
	}
	p.mu.Unlock()
	var ae *apiclient.Error
	if errors.As(err, &ae) && ae.Status == 422 {
		// A batch the API refuses as such would be refused forever: drop it.
		p.log.Error("frontend: the control plane refuses a presence batch; dropped", "err", err)
		p.mu.Lock()
		p.dropped.WithLabelValues("refused").Add(float64(len(p.pending)))
		clear(p.pending)
		p.mu.Unlock()
		return nil
	}
	return err
}

// startPresence makes the presence reporter when the frontend follows the
// control plane (nil otherwise).
func (f *Frontend) startPresence() (*presence, error) {
	if !f.cfg.Follow.Enabled() {
		return nil, nil
	}
	client, err := apiclient.New(f.cfg.Follow.API)
	if err != nil {
		return nil, err
	}
	p, err := newPresence(f.cfg.Presence, client, f.cfg.ID, f.logger, f.reg, f.devs.connected)
	if err != nil {
		return nil, err
	}
	f.presence = p
	return p, nil
}
