package router

import (
	"errors"
	"flag"
	"fmt"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// Config is a router's configuration. Start from [DefaultConfig].
type Config struct {
	// Listen is the ZeroMQ endpoint the ROUTER socket binds for frontends.
	Listen string
	// LivePub is the endpoint the PUB socket of the best-effort live. lane
	// binds.
	LivePub string
	// StorePub is the endpoint the PUB socket of the durable store. lane
	// binds.
	StorePub string
	// QueueDir is the directory of the router's durable queue; it must
	// survive restarts (a volume in Kubernetes).
	QueueDir string
	// ID identifies this router to frontends and subscribers. It must be
	// unique among routers and stable across restarts.
	ID string
	// QueueMaxBytes bounds the entry bytes the router's queue holds; past it
	// the router answers "busy" and frontends keep their data and back off.
	// Negative: unbounded (the disk is then the bound).
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
}

// DefaultConfig returns the configuration of a router on a laptop: frontends
// on port 5555, live lane on 5556, store lane on 5557, the queue under
// ./data, and the host name as ID.
func DefaultConfig() Config {
	return Config{
		Listen:   "tcp://*:5555",
		LivePub:  "tcp://*:5556",
		StorePub: "tcp://*:5557",
		QueueDir: "data/router",
		ID:       daemon.DefaultID("router"),

		QueueMaxBytes:     1 << 30,
		MaxPendingBatches: 1024,
		MaxBatchBytes:     4 << 20,
		DedupIntervals:    4096,
	}
}

// RegisterFlags defines the router's flags in fs, bound to c, with c's
// current values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen,
		"ZeroMQ `endpoint` bound for frontends (tcp://host:port; * for every interface)")
	fs.StringVar(&c.LivePub, "live-pub", c.LivePub,
		"ZeroMQ `endpoint` bound for the best-effort live. lane (livefeeds subscribe here)")
	fs.StringVar(&c.StorePub, "store-pub", c.StorePub,
		"ZeroMQ `endpoint` bound for the durable store. lane (storage writers subscribe here)")
	fs.StringVar(&c.QueueDir, "queue-dir", c.QueueDir,
		"`directory` of the durable queue; must survive restarts")
	fs.StringVar(&c.ID, "id", c.ID,
		"`name` of this router, unique and stable across restarts; the host name unless set")
	fs.Int64Var(&c.QueueMaxBytes, "queue-max-bytes", c.QueueMaxBytes,
		"`bytes` of entries the queue may hold before the router answers busy (back-pressure); negative: unbounded")
	fs.IntVar(&c.MaxPendingBatches, "max-pending-batches", c.MaxPendingBatches,
		"`number` of batches stored at once (held in memory until durable); past it the router answers busy")
	fs.IntVar(&c.MaxBatchBytes, "max-batch-bytes", c.MaxBatchBytes,
		"largest batch accepted from a frontend, in entry `bytes`; larger ones are rejected")
	fs.IntVar(&c.DedupIntervals, "dedup-intervals", c.DedupIntervals,
		"`number` of sequence intervals remembered per frontend to drop resent entries; past it the oldest are forgotten (stored again if resent, never lost)")
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	endpoints := map[string]string{}
	for _, ep := range []struct{ flag, value string }{
		{"listen", c.Listen}, {"live-pub", c.LivePub}, {"store-pub", c.StorePub},
	} {
		if err := daemon.ValidateEndpoint(ep.value, true); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ep.flag, err))
			continue
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
	if c.QueueMaxBytes == 0 {
		errs = append(errs, errors.New("queue-max-bytes: 0; want a positive bound, or negative for none"))
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
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("router config: %w", err)
	}
	return nil
}
