package registry

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/backoff"
	"github.com/drover-telemetry/drover/telemetry"
)

// FollowConfig is how a Store follows the control plane's change feed
// (docs/api.md "The change feed").
type FollowConfig struct {
	// API is where the control plane is and the follower's key.
	API apiclient.Config
	// Cache is the file the last copy is kept in, so that a restart while
	// the API is down still authenticates and enriches. Frontends and
	// routers always keep one (beside their queue); empty: none.
	Cache string
	// CacheInterval is how often, at most, the cache is rewritten when the
	// registry changed (and at a snapshot, and at stop).
	CacheInterval time.Duration
	// Wait is how long one long poll waits for a change.
	Wait time.Duration
	// PageLimit is the most changes asked for at once.
	PageLimit int
	// BackoffMin and BackoffMax bound the wait between attempts while the
	// API is unreachable or refuses (internal/backoff).
	BackoffMin, BackoffMax time.Duration
	// SnapshotTimeout bounds the reading of one snapshot.
	SnapshotTimeout time.Duration
	// NotBefore, when set, holds the first request until it is closed:
	// drover all waits for its own API to start instead of logging
	// connection errors. Not a flag.
	NotBefore <-chan struct{} `json:"-"`
}

// DefaultFollowConfig returns the follower's defaults (no API: off).
func DefaultFollowConfig() FollowConfig {
	return FollowConfig{
		CacheInterval:   10 * time.Second,
		Wait:            30 * time.Second,
		PageLimit:       5000,
		BackoffMin:      250 * time.Millisecond,
		BackoffMax:      15 * time.Second,
		SnapshotTimeout: 5 * time.Minute,
	}
}

// RegisterFlags defines the follower's flags in fs: -registry-api and its
// key and CA (apiclient), and -registry-cache.
func (c *FollowConfig) RegisterFlags(fs *flag.FlagSet) {
	c.API.RegisterFlags(fs, "the device registry from, instead of the -registry file")
	fs.StringVar(&c.Cache, "registry-cache", c.Cache,
		"`file` keeping the last copy of the registry followed from -registry-api, so that a restart while the API is down still serves devices (default QUEUE-DIR/registry.cache)")
}

// Enabled reports whether the registry is followed from an API.
func (c FollowConfig) Enabled() bool { return c.API.Enabled() }

// Validate reports every problem of a follower's configuration.
func (c FollowConfig) Validate() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	if err := c.API.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"cache interval", c.CacheInterval}, {"wait", c.Wait}, {"backoff min", c.BackoffMin}, {"snapshot timeout", c.SnapshotTimeout}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("registry follower %s: %v, want > 0", d.name, d.v))
		}
	}
	if c.PageLimit < 1 || c.PageLimit > 10000 {
		errs = append(errs, fmt.Errorf("registry follower page limit: %d, want 1 to 10000", c.PageLimit))
	}
	return errors.Join(errs...)
}

// follower keeps a Store current from the change feed.
type follower struct {
	cfg    FollowConfig
	s      *Store
	client *apiclient.Client
	b      *builder
	log    *slog.Logger
	m      *followMetrics

	// Where the copy in force stands; the follower goroutine's own.
	feed    string
	version int64
	have    bool // a copy is in force (from the cache or the API)

	cacheKick chan struct{} // a snapshot was taken: write the cache soon
	cached    *Registry     // the registry last written to the cache
}

// NewFollower returns a Store that follows the control plane: it loads
// the cache at once (a damaged cache is refused, logged and counted; the
// follower then waits for a snapshot), and Run takes a snapshot (unless
// the cache gave it a version to resume from), then long-polls changes,
// takes a new snapshot when the API says so (410), and backs off while
// the API is unreachable, the copy in force staying in force. reg may be
// nil.
func NewFollower(cfg FollowConfig, logger *slog.Logger, reg prometheus.Registerer) (*Store, error) {
	if !cfg.Enabled() {
		return nil, errors.New("registry follower: no -registry-api")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	client, err := apiclient.New(cfg.API)
	if err != nil {
		return nil, err
	}
	s := newStore(logger)
	f := &follower{cfg: cfg, s: s, client: client, b: newBuilder(), log: s.log, m: newFollowMetrics(),
		cacheKick: make(chan struct{}, 1)}
	if reg != nil {
		for _, c := range append(f.m.collectors(), s.devices, s.rejected) {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register registry metrics: %w", err)
			}
		}
	}
	f.loadCache()
	s.run = f.run
	return s, nil
}

// errCut is a snapshot without its trailer (or with a wrong count).
var errCut = errors.New("snapshot cut")

// errOtherFeed is an answer from another database than the copy's.
var errOtherFeed = errors.New("the API serves another feed than the copy's")

func (f *follower) run(ctx context.Context) error {
	defer f.client.Close()
	if f.cfg.NotBefore != nil {
		select {
		case <-f.cfg.NotBefore:
		case <-ctx.Done():
			return nil
		}
	}
	var wg sync.WaitGroup
	cacheCtx, stopCache := context.WithCancel(context.WithoutCancel(ctx))
	wg.Go(func() { f.cacheLoop(cacheCtx) })
	defer func() { stopCache(); wg.Wait() }()

	bo := backoff.New(f.cfg.BackoffMin, f.cfg.BackoffMax, nil)
	needSnapshot := !f.have
	failing, resyncs := false, 0
	f.log.Info("registry: following the control plane", "api", f.client.URL(), "cache", f.cfg.Cache,
		"version", f.version, "devices", f.devices())
	for ctx.Err() == nil {
		var err error
		if needSnapshot {
			err = f.snapshot(ctx)
		} else {
			err = f.poll(ctx)
		}
		if ctx.Err() != nil {
			break
		}
		switch {
		case err == nil:
			if failing {
				f.log.Info("registry: the control plane answers again", "version", f.version)
			}
			if !needSnapshot {
				resyncs = 0 // a poll answered after the snapshot
			}
			failing, needSnapshot = false, false
			bo.Reset()
			continue
		case errors.Is(err, apiclient.ErrResync), errors.Is(err, errOtherFeed):
			f.m.resyncs.Inc()
			f.log.Info("registry: the change feed asks for a new snapshot", "since", f.version, "reason", err)
			needSnapshot = true
			if resyncs++; resyncs <= 2 {
				continue // at once: the copy in force stays meanwhile
			}
		default:
			f.m.errors.WithLabelValues(errorKind(err)).Inc()
			switch {
			case !failing && apiclient.Refused(err):
				f.log.Error("registry: the control plane refuses this follower's key; the copy in force stays; retrying",
					"api", f.client.URL(), "version", f.version, "devices", f.devices(), "err", err)
			case !failing:
				f.log.Warn("registry: the control plane does not answer; the copy in force stays, changes wait; retrying",
					"api", f.client.URL(), "version", f.version, "devices", f.devices(), "err", err)
			default:
				f.log.Debug("registry: the control plane still does not answer", "err", err)
			}
			failing = true
		}
		if !backoff.Sleep(ctx, bo.Next()) {
			break
		}
	}
	return nil
}

// errorKind names a failure for drover_registry_feed_errors_total.
func errorKind(err error) string {
	var ae *apiclient.Error
	switch {
	case apiclient.Refused(err):
		return "refused"
	case errors.Is(err, errCut):
		return "cut"
	case errors.As(err, &ae):
		return "status"
	case errors.Is(err, errBadAnswer):
		return "bad_answer"
	}
	return "unreachable"
}

var errBadAnswer = errors.New("bad answer")

func (f *follower) devices() int {
	if r := f.s.Current(); r != nil {
		return r.Len()
	}
	return 0
}

// maxLine bounds one snapshot line (a device is ~150 bytes of JSON).
const maxLine = 64 << 10

// snapshot takes a whole snapshot and puts it in force.
func (f *follower) snapshot(ctx context.Context) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, f.cfg.SnapshotTimeout)
	defer cancel()
	body, err := f.client.Snapshot(ctx)
	if err != nil {
		f.m.snapshots.WithLabelValues("error").Inc()
		return err
	}
	defer body.Close()
	// A line counts only with its newline: a stream cut inside a line is
	// a cut snapshot, not a bad line.
	br := bufio.NewReaderSize(body, maxLine)
	next := func() ([]byte, error) {
		line, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			return nil, fmt.Errorf("%w: a snapshot line over %d bytes", errBadAnswer, maxLine)
		}
		return nil, err
	}
	line, err := next()
	if err != nil {
		f.m.snapshots.WithLabelValues("cut").Inc()
		return fmt.Errorf("%w: no header line: %v", errCut, err)
	}
	var head apiclient.SnapshotLine
	if err := json.Unmarshal(line, &head); err != nil || head.Snapshot == nil {
		f.m.snapshots.WithLabelValues("error").Inc()
		return fmt.Errorf("%w: snapshot header %.100q", errBadAnswer, line)
	}
	if head.Snapshot.Format != apiclient.SnapshotFormat {
		f.m.snapshots.WithLabelValues("error").Inc()
		return fmt.Errorf("%w: snapshot format %d; this build reads format %d (upgrade it)", errBadAnswer, head.Snapshot.Format, apiclient.SnapshotFormat)
	}
	hint := 1024
	if r := f.s.Current(); r != nil {
		hint = r.Len() + r.Len()/16
	}
	sb := f.b.startSnapshot(hint)
	var rejected []Rejection
	var end *apiclient.SnapshotEnd
	n := 0
	for {
		if line, err = next(); err != nil {
			break
		}
		if bytes.HasPrefix(line, []byte(`{"end"`)) {
			var tl apiclient.SnapshotLine
			if err := json.Unmarshal(line, &tl); err != nil || tl.End == nil {
				f.m.snapshots.WithLabelValues("error").Inc()
				return fmt.Errorf("%w: snapshot trailer %.100q", errBadAnswer, line)
			}
			end = tl.End
			break
		}
		var d apiclient.FeedDevice
		if err := json.Unmarshal(line, &d); err != nil {
			f.m.snapshots.WithLabelValues("error").Inc()
			return fmt.Errorf("%w: snapshot line %d: %v", errBadAnswer, n+2, err)
		}
		c, err := toChange(d)
		if err != nil {
			rejected = append(rejected, Rejection{Index: n, ID: d.ID, Reason: err.Error()})
		} else {
			sb.add(c)
		}
		n++
	}
	if end == nil {
		if errors.Is(err, errBadAnswer) {
			f.m.snapshots.WithLabelValues("error").Inc()
			return err
		}
		f.m.snapshots.WithLabelValues("cut").Inc()
		return fmt.Errorf("%w after %d devices: %v", errCut, n, err)
	}
	if end.Devices != n {
		f.m.snapshots.WithLabelValues("cut").Inc()
		return fmt.Errorf("%w: trailer says %d devices, %d came", errCut, end.Devices, n)
	}
	r := sb.finish(head.Snapshot.Feed, head.Snapshot.Version)
	r.rejected = rejected
	f.logRejected(rejected)
	f.s.publish(r, Update{All: true})
	f.feed, f.version, f.have = r.feed, r.version, true
	f.m.snapshots.WithLabelValues("ok").Inc()
	f.m.synced(r.version)
	f.log.Info("registry: snapshot taken", "devices", r.Len(), "version", r.version, "refused", len(rejected),
		"took", time.Since(start).Round(time.Millisecond))
	select {
	case f.cacheKick <- struct{}{}:
	default:
	}
	return nil
}

// poll long-polls the changes after the copy's version and applies them.
func (f *follower) poll(ctx context.Context) error {
	ch, err := f.client.Changes(ctx, f.version, f.cfg.Wait, f.cfg.PageLimit)
	if err != nil {
		return err
	}
	if ch.Feed != f.feed {
		return fmt.Errorf("%w (%q, the copy is of %q)", errOtherFeed, ch.Feed, f.feed)
	}
	if ch.Version < f.version {
		return fmt.Errorf("%w: version %d is before since=%d", errBadAnswer, ch.Version, f.version)
	}
	f.m.synced(ch.Version)
	if len(ch.Changes) == 0 {
		f.version = ch.Version
		return nil
	}
	changes := make([]Change, 0, len(ch.Changes))
	ids := make([]string, 0, len(ch.Changes))
	for _, d := range ch.Changes {
		c, err := toChange(d)
		if err != nil {
			// Refused alone, as a file's bad entry is: the device cannot
			// connect until a good change of it arrives.
			f.m.refused.Inc()
			f.log.Warn("registry: change refused; the device cannot connect", "device", d.ID, "version", d.V, "reason", err)
			c = Change{ID: d.ID, Deleted: true}
		}
		changes = append(changes, c)
		ids = append(ids, d.ID)
	}
	r := f.b.apply(changes, ch.Version, time.Now())
	f.s.publish(r, Update{Changed: ids})
	f.version = ch.Version
	f.m.changes.Add(float64(len(changes)))
	return nil
}

// toChange checks a device of the feed as a file's entry is checked and
// converts it.
func toChange(d apiclient.FeedDevice) (Change, error) {
	if err := telemetry.ValidateDeviceID(d.ID); err != nil {
		return Change{}, err
	}
	if d.Del {
		return Change{ID: d.ID, Deleted: true}, nil
	}
	c := Change{ID: d.ID, State: ParseState(d.State), Labels: Labels{Fleet: d.Fleet, Class: d.Class, Region: d.Region}}
	for _, l := range [...]struct{ name, v string }{{"fleet", d.Fleet}, {"class", d.Class}, {"region", d.Region}} {
		if err := telemetry.ValidateLabel(l.v); err != nil {
			return Change{}, fmt.Errorf("%s: %w", l.name, err)
		}
	}
	if d.H != "" {
		h, err := auth.ParseDigest(d.H)
		if err != nil {
			return Change{}, fmt.Errorf("h: %w", err)
		}
		c.Token, c.HasToken = h, true
	}
	if d.PH != "" && d.PU > 0 {
		h, err := auth.ParseDigest(d.PH)
		if err != nil {
			return Change{}, fmt.Errorf("ph: %w", err)
		}
		c.PrevToken, c.PrevUntil = h, d.PU
	}
	return c, nil
}

func (f *follower) logRejected(rej []Rejection) {
	for i, rj := range rej {
		if i == maxRejectedLogged {
			f.log.Warn("registry: more devices of the snapshot refused", "more", len(rej)-i, "refused", len(rej))
			return
		}
		f.log.Warn("registry: device of the snapshot refused; it cannot connect", "device", rj.ID, "reason", rj.Reason)
	}
}

// cacheLoop writes the registry in force to the cache: soon after a
// snapshot, every CacheInterval when it changed, and once more at stop.
func (f *follower) cacheLoop(ctx context.Context) {
	t := time.NewTicker(f.cfg.CacheInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			f.writeCache()
			return
		case <-t.C:
		case <-f.cacheKick:
		}
		f.writeCache()
	}
}

// writeCache writes the registry in force unless it is the one written
// last. A failure is logged and counted; the next tick tries again.
func (f *follower) writeCache() {
	r := f.s.Current()
	if f.cfg.Cache == "" || r == nil || r == f.cached {
		return
	}
	start := time.Now()
	err := os.MkdirAll(filepath.Dir(f.cfg.Cache), 0o700)
	if err == nil {
		err = writeRegistryCache(f.cfg.Cache, r, f.client.URL())
	}
	if err != nil {
		f.m.cacheWrites.WithLabelValues("error").Inc()
		f.log.Error("registry: write cache", "file", f.cfg.Cache, "err", err)
		return
	}
	f.cached = r
	f.m.cacheWrites.WithLabelValues("ok").Inc()
	f.log.Debug("registry: cache written", "file", f.cfg.Cache, "devices", r.Len(), "version", r.version,
		"took", time.Since(start).Round(time.Millisecond))
}

// loadCache puts the cached copy in force, if there is a whole one.
func (f *follower) loadCache() {
	if f.cfg.Cache == "" {
		return
	}
	r, meta, err := readRegistryCache(f.cfg.Cache, f.b)
	switch {
	case err == nil:
	case errorsIsNotExist(err):
		f.m.cacheLoads.WithLabelValues("missing").Inc()
		f.log.Info("registry: no cache yet; devices are served once the control plane answers", "file", f.cfg.Cache)
		return
	case apiclient.Damaged(err):
		f.m.cacheLoads.WithLabelValues("damaged").Inc()
		aside := f.cfg.Cache + ".damaged"
		f.log.Error("registry: cache damaged; refused whole, kept aside, and a fresh snapshot will be taken",
			"file", f.cfg.Cache, "kept_as", aside, "err", err)
		_ = renameAside(f.cfg.Cache, aside)
		return
	default:
		f.m.cacheLoads.WithLabelValues("error").Inc()
		f.log.Error("registry: cache unreadable; a fresh snapshot will be taken", "file", f.cfg.Cache, "err", err)
		return
	}
	f.m.cacheLoads.WithLabelValues("ok").Inc()
	f.s.publish(r, Update{All: true})
	f.feed, f.version, f.have, f.cached = r.feed, r.version, true, r
	f.m.version.Set(float64(r.version))
	f.log.Info("registry: serving the cached copy until the control plane answers", "file", f.cfg.Cache,
		"devices", r.Len(), "version", r.version, "written", meta.WrittenAt, "from", meta.Source)
}

// followMetrics are the follower's metrics.
type followMetrics struct {
	version     prometheus.Gauge
	lastSync    prometheus.Gauge
	snapshots   *prometheus.CounterVec
	changes     prometheus.Counter
	resyncs     prometheus.Counter
	refused     prometheus.Counter
	errors      *prometheus.CounterVec
	cacheWrites *prometheus.CounterVec
	cacheLoads  *prometheus.CounterVec
}

func newFollowMetrics() *followMetrics {
	return &followMetrics{
		version: prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_registry_feed_version",
			Help: "Change-feed version of the registry in force: every change up to it is applied."}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{Name: "drover_registry_feed_last_sync_timestamp_seconds",
			Help: "When the control plane last answered the follower (unix seconds): time() minus it is how stale the copy may be."}),
		snapshots: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_registry_feed_snapshots_total",
			Help: "Snapshots of the registry taken from the control plane, by result (ok, cut, error)."}, []string{"result"}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_registry_feed_changes_total",
			Help: "Device changes applied from the change feed."}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_registry_feed_resyncs_total",
			Help: "Times the change feed asked for a new snapshot (410, or another database behind the API)."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_registry_feed_refused_changes_total",
			Help: "Device changes refused (bad id, label or hash): the device cannot connect until a good change arrives."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_registry_feed_errors_total",
			Help: "Failed requests to the control plane, by kind (unreachable, refused: the key, status, cut, bad_answer); the copy in force stays."}, []string{"kind"}),
		cacheWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_registry_cache_writes_total",
			Help: "Writes of the registry cache file, by result (ok, error)."}, []string{"result"}),
		cacheLoads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_registry_cache_loads_total",
			Help: "Loads of the registry cache at start, by result (ok, missing, damaged: refused and set aside, error)."}, []string{"result"}),
	}
}

func (m *followMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.version, m.lastSync, m.snapshots, m.changes, m.resyncs, m.refused, m.errors, m.cacheWrites, m.cacheLoads}
}

// synced records an answer of the control plane at version.
func (m *followMetrics) synced(version int64) {
	m.version.Set(float64(version))
	m.lastSync.SetToCurrentTime()
}
