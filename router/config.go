package router

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/registry"
)

// Config is a router's configuration. Start from [DefaultConfig].
type Config struct {
	// Listen is the ZeroMQ endpoint the ROUTER socket binds for frontends.
	Listen string
	// LivePub is the endpoint the PUB socket of the best-effort live. lane
	// binds (flag -live-pub).
	LivePub string
	// StoreListen is the endpoint the ROUTER socket of the durable store lane
	// binds (flag -store-listen): storage writers connect a DEALER to it and
	// speak the store-lane protocol of internal/forward. It is not a PUB
	// socket (see doc.go).
	StoreListen string
	// QueueDir is the directory of the router's durable queue; it must
	// survive restarts (a volume in Kubernetes).
	QueueDir string
	// ID identifies this router to frontends and subscribers. It must be
	// unique among routers and stable across restarts.
	ID string
	// QueueMaxBytes bounds the entry bytes the router's queue holds; past it
	// the router answers "busy" and frontends keep their data and back off.
	// 0 (the default): sized from the volume at start, a share of it split
	// with the subscriber queues (queue.Options.MaxBytes; the formula is in
	// docs/reliability.md). Negative: unbounded (the disk is then the
	// bound).
	QueueMaxBytes int64
	// MaxPendingBatches bounds the batches being stored at once (each holds
	// its bytes in memory until its append is durable); past it the router
	// answers "busy".
	MaxPendingBatches int
	// MaxBatchBytes is the largest batch accepted, in entry bytes; a larger
	// one is rejected.
	MaxBatchBytes int
	// DedupIntervals bounds, per sender, the intervals of stored sequences
	// the router remembers to recognise resent entries. Past it the oldest
	// are forgotten: a resend of those is stored again, never lost.
	DedupIntervals int

	// Registry is the device registry file used to enrich records (fleet,
	// vehicle class, region); reloaded on change and SIGHUP. Empty: no
	// enrichment (records are published with no Enrichment), unless
	// RegistryStore is set.
	Registry string
	// RegistryStore, when set, is used instead of opening Registry: in one
	// process (drover all) the frontend and the router share one Store,
	// because a Store registers drover_registry_* metrics. The router does
	// not Run it; its owner does. Not a flag.
	RegistryStore *registry.Store `json:"-"`
	// Follow, when its API URL is set, takes the registry from the control
	// plane's change feed instead of the Registry file (then not read),
	// keeping the last copy in Follow.Cache (default
	// QueueDir/registry.cache). Until a copy is in force (no cache, and
	// the control plane has not answered yet) the router stores what
	// frontends send and holds the fan-out: nothing leaves unenriched.
	Follow registry.FollowConfig
	// Subscribers are the durable subscribers (storage writers' names) the
	// router keeps data for from its first start, connected or not. Unknown
	// names are also registered when they first subscribe, and kept from
	// then on (persisted in QueueDir/subs/subscribers), unless
	// FixedSubscribers.
	Subscribers []string
	// FixedSubscribers refuses a subscribe under a name that is neither in
	// Subscribers nor already registered: a writer started with a typo in
	// its name, or one that reached the wrong router, is told no (an error
	// log, drover_router_bad_messages_total{reason="subscriber_unknown"})
	// instead of making the router keep a copy of everything for it.
	FixedSubscribers bool
	// SubscriberRetention: a durable subscriber not heard from for longer
	// is dropped and its cursor deleted (an error log and
	// drover_router_subscribers_dropped_total). The operator's choice of
	// how long a dead writer may hold data at the router.
	SubscriberRetention time.Duration
	// SubscriberQueueMaxBytes is the lag (entry bytes of the log not yet
	// acked by a subscriber) past which that subscriber's cursor is
	// reported full (drover_queue_cursor_fill_ratio, a warning). It holds
	// back only that subscriber: the log keeps its backlog, the others go
	// on, and back-pressure reaches the frontends when the log itself is
	// full (QueueMaxBytes). 0 (the default): the log's bound. Else at
	// least 64 KiB; negative: never reported full.
	SubscriberQueueMaxBytes int64
	// LiveBuffer is how many batches may wait for each live subscriber;
	// past it (or past LiveBufferBytes) that subscriber loses its oldest,
	// counted, and the others are not affected.
	LiveBuffer int
	// LiveBufferBytes bounds the bytes of the batches waiting for each live
	// subscriber (a batch larger than that still goes when none waits).
	LiveBufferBytes int64

	// Links secures every link of the router (frontends, storage writers,
	// livefeeds): a cluster key file (mutual TLS 1.3) or, for development,
	// -insecure-links. See docs/security.md.
	Links clusterlink.Config
}

// DefaultConfig returns the configuration of a router on a laptop: frontends
// on port 5555, live lane on 5556, store lane on 5557, all on loopback (a
// router that other hosts reach is given its addresses explicitly), only
// the listed durable subscribers, the queue under ./data, and the host name
// as ID. Links has no key: a cluster key file (or -insecure-links) must be
// given.
func DefaultConfig() Config {
	return Config{
		Listen:      "tcp://127.0.0.1:5555",
		LivePub:     "tcp://127.0.0.1:5556",
		StoreListen: "tcp://127.0.0.1:5557",
		QueueDir:    "data/router",
		ID:          daemon.DefaultID("router"),

		MaxPendingBatches: 1024,
		MaxBatchBytes:     4 << 20,
		DedupIntervals:    4096,

		FixedSubscribers:    true,
		SubscriberRetention: 24 * time.Hour,
		LiveBuffer:          1024,
		LiveBufferBytes:     16 << 20,

		Follow: registry.DefaultFollowConfig(),
	}
}

// followConfig is Follow with its defaults filled in: the cache beside
// the queue.
func (c Config) followConfig() registry.FollowConfig {
	fc := c.Follow
	if fc.Cache == "" {
		fc.Cache = filepath.Join(c.QueueDir, "registry.cache")
	}
	return fc
}

// RegisterFlags defines the router's flags in fs, bound to c, with c's
// current values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen,
		"ZeroMQ `endpoint` bound for frontends (tcp://host:port; tcp://*:port for every interface, only when asked)")
	fs.StringVar(&c.LivePub, "live-pub", c.LivePub,
		"ZeroMQ `endpoint` bound for the best-effort live. lane (livefeeds subscribe here)")
	fs.StringVar(&c.StoreListen, "store-listen", c.StoreListen,
		"ZeroMQ `endpoint` bound (ROUTER) for the durable store lane (storage writers connect here)")
	fs.StringVar(&c.QueueDir, "queue-dir", c.QueueDir,
		"`directory` of the durable queue; must survive restarts")
	fs.StringVar(&c.ID, "id", c.ID,
		"`name` of this router, unique and stable across restarts; the host name unless set")
	fs.Int64Var(&c.QueueMaxBytes, "queue-max-bytes", c.QueueMaxBytes,
		"`bytes` of entries the queue may hold before the router answers busy (back-pressure); 0: a share of the volume, split with the subscriber queues (docs/reliability.md); negative: unbounded")
	fs.IntVar(&c.MaxPendingBatches, "max-pending-batches", c.MaxPendingBatches,
		"`number` of batches stored at once (held in memory until durable); past it the router answers busy")
	fs.IntVar(&c.MaxBatchBytes, "max-batch-bytes", c.MaxBatchBytes,
		"largest batch accepted from a frontend, in entry `bytes`; larger ones are rejected")
	fs.StringVar(&c.Registry, "registry", c.Registry,
		"device registry `file` for enrichment (fleet, vehicle class, region); empty: no enrichment (unless -registry-api); not read with -registry-api")
	c.Follow.RegisterFlags(fs)
	fs.Func("subscribers", "comma-separated `names` of durable subscribers kept from the first start, connected or not (default none; unknown names register on first subscribe)", func(v string) error {
		c.Subscribers = nil
		for _, n := range strings.Split(v, ",") {
			if n = strings.TrimSpace(n); n != "" {
				c.Subscribers = append(c.Subscribers, n)
			}
		}
		return nil
	})
	fs.BoolVar(&c.FixedSubscribers, "fixed-subscribers", c.FixedSubscribers,
		"refuse a subscribe under a name not in -subscribers (nor registered before): a misnamed or misdirected writer is refused and logged instead of being kept a copy of everything; =false lets any writer holding the cluster key register itself (not allowed with -insecure-links)")
	fs.DurationVar(&c.SubscriberRetention, "subscriber-retention", c.SubscriberRetention,
		"a durable subscriber not heard from for this `duration` is dropped and its cursor in the router's log deleted (logged, counted)")
	fs.Int64Var(&c.SubscriberQueueMaxBytes, "subscriber-queue-max-bytes", c.SubscriberQueueMaxBytes,
		"`bytes` of the router's log a durable subscriber may be behind before its cursor is reported full (a warning and drover_queue_cursor_fill_ratio); it holds back only that subscriber: the log keeps its backlog, the others and the live lane go on until the log is full; 0: the log's bound (-queue-max-bytes); negative: never reported full")
	fs.IntVar(&c.LiveBuffer, "live-buffer", c.LiveBuffer,
		"`number` of batches waiting for each live subscriber; past it that subscriber loses its oldest (counted), the others go on")
	fs.Int64Var(&c.LiveBufferBytes, "live-buffer-bytes", c.LiveBufferBytes,
		"`bytes` of batches waiting for each live subscriber; past it that subscriber loses its oldest (counted), the others go on")
	fs.IntVar(&c.DedupIntervals, "dedup-intervals", c.DedupIntervals,
		"`number` of sequence intervals remembered per frontend to drop resent entries; past it the oldest are forgotten (stored again if resent, never lost)")
	c.Links.RegisterFlags(fs)
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	endpoints := map[string]string{}
	for _, ep := range []struct{ flag, value string }{
		{"listen", c.Listen}, {"live-pub", c.LivePub}, {"store-listen", c.StoreListen},
	} {
		if err := daemon.ValidateEndpoint(ep.value, true); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep.flag, err))
			continue
		}
		if strings.HasSuffix(ep.value, ":0") {
			continue // the system picks a free port for each
		}
		if other, dup := endpoints[ep.value]; dup {
			errs = append(errs, fmt.Errorf("%s: %q is also %s; each lane needs its own endpoint", ep.flag, ep.value, other))
		}
		endpoints[ep.value] = ep.flag
	}
	if c.QueueDir == "" {
		errs = append(errs, errors.New("queue-dir: empty"))
	}
	if err := daemon.ValidateID(c.ID); err != nil {
		errs = append(errs, fmt.Errorf("id: %w", err))
	}
	if c.MaxPendingBatches < 1 {
		errs = append(errs, fmt.Errorf("max-pending-batches: %d; want at least 1", c.MaxPendingBatches))
	}
	if c.MaxBatchBytes < 1 {
		errs = append(errs, fmt.Errorf("max-batch-bytes: %d; want at least 1", c.MaxBatchBytes))
	}
	if c.DedupIntervals < 1 {
		errs = append(errs, fmt.Errorf("dedup-intervals: %d; want at least 1", c.DedupIntervals))
	}
	for i, n := range c.Subscribers {
		if err := forward.ValidateSubscriberName(n); err != nil {
			errs = append(errs, fmt.Errorf("subscribers: %w", err))
		} else if slices.Contains(c.Subscribers[:i], n) {
			errs = append(errs, fmt.Errorf("subscribers: %q named twice", n))
		}
	}
	if c.SubscriberRetention <= 0 {
		errs = append(errs, fmt.Errorf("subscriber-retention: %s; want a positive duration", c.SubscriberRetention))
	}
	if c.SubscriberQueueMaxBytes > 0 && c.SubscriberQueueMaxBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("subscriber-queue-max-bytes: %d; want at least 64 KiB, 0 for the log's bound, or negative for none", c.SubscriberQueueMaxBytes))
	}
	if c.LiveBuffer < 1 {
		errs = append(errs, fmt.Errorf("live-buffer: %d; want at least 1", c.LiveBuffer))
	}
	if c.LiveBufferBytes < 64<<10 {
		errs = append(errs, fmt.Errorf("live-buffer-bytes: %d; want at least 64 KiB", c.LiveBufferBytes))
	}
	if err := c.Links.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Follow.Enabled() && c.RegistryStore == nil {
		if err := c.followConfig().Validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Links.Insecure && !c.FixedSubscribers {
		errs = append(errs, errors.New("fixed-subscribers: false with -insecure-links: any peer could register a durable subscriber and be kept a copy of everything; list the writers in -subscribers"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("router config: %w", err)
	}
	return nil
}
