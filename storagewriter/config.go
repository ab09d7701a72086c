package storagewriter

import (
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/storagewriter/influx"
	"github.com/drover-telemetry/drover/storagewriter/lake"
)

// The sinks a writer can write to.
const (
	// SinkInflux writes to InfluxDB.
	SinkInflux = "influx"
	// SinkLake writes Parquet files to the lake.
	SinkLake = "lake"
)

// Sinks lists every sink, in the order the usage text gives them.
var Sinks = []string{SinkInflux, SinkLake}

// Config is a storage writer's configuration. Start from [DefaultConfig].
type Config struct {
	// Routers are the store. lane endpoints of every router. A
	// dns+tcp://name:port entry stands for every address the name resolves
	// to, followed while the writer runs (internal/endpoints).
	Routers []string
	// Resolve says how often, and through which DNS server, dns+tcp://
	// entries of Routers are looked up.
	Resolve endpoints.Config
	// Sink is where readings go: SinkInflux or SinkLake.
	Sink string
	// QueueDir is the directory of the writer's durable queue; it must
	// survive restarts (a volume in Kubernetes) and belong to this writer
	// alone.
	QueueDir string
	// QueueMaxBytes bounds the writer's queue (entry bytes held). When it
	// is reached the writer answers routers "busy" and they keep the
	// entries. 0 (the default): a share of the volume at start
	// (queue.Options.MaxBytes; docs/reliability.md). Negative: unbounded.
	QueueMaxBytes int64
	// Name is the durable subscriber's name, under which the routers keep
	// what it has acked: unique among writers and stable across restarts.
	// Empty means the sink's name.
	Name string
	// BatchRecords is how many records the writer gathers, at most about,
	// into one sink write.
	BatchRecords int
	// BatchInterval is how long the writer waits for more records after
	// the first of a sink write before it writes what it has.
	BatchInterval time.Duration
	// SinkWriters is how many sink writes may be in flight at once.
	SinkWriters int
	// DeadLetterDir is the folder of the dead-letter files, which receive
	// the records the sink refuses for good. Empty: QueueDir/dead-letter.
	DeadLetterDir string
	// DeadLetterFileBytes and DeadLetterFileAge bound one dead-letter
	// file: past either, the writer starts a new one (as it does at every
	// start), so that the closed ones can be replayed or moved.
	DeadLetterFileBytes int64
	DeadLetterFileAge   time.Duration
	// DeadLetterMaxBytes and DeadLetterMaxAge, when positive, bound the
	// dead-letter store: past them the oldest closed files are removed,
	// each removal logged and counted with the records it drops. Zero (the
	// default) removes nothing: dead letters are kept until an operator
	// replays or removes them, and a full disk stops the writer (its queue
	// then holds the records) rather than losing any.
	DeadLetterMaxBytes int64
	DeadLetterMaxAge   time.Duration
	// Influx configures the InfluxDB sink (Sink == SinkInflux).
	Influx influx.Config
	// Lake configures the lake sink (Sink == SinkLake). Its Name is set to
	// the subscriber name.
	Lake lake.Config
	// Links secures the connections to the routers' store lanes: a cluster
	// key file (mutual TLS 1.3) or, for development, -insecure-links.
	Links clusterlink.Config
}

// DefaultSinkWriters is the default of Config.SinkWriters. Measured with
// scripts/bench-pipeline.sh (docs/performance.md): InfluxDB takes the
// writes of two to four writers at once much faster than one writer's in
// turn.
const DefaultSinkWriters = 4

// DefaultConfig returns the configuration of a writer on a laptop: one
// router on the same host and the Parquet lake, which needs no server, with
// the queue under ./data.
func DefaultConfig() Config {
	return Config{
		Routers:       []string{"tcp://127.0.0.1:5557"},
		Resolve:       endpoints.DefaultConfig(),
		Sink:          SinkLake,
		QueueDir:      "data/storage-writer",
		BatchRecords:  5000,
		BatchInterval: time.Second,
		SinkWriters:   DefaultSinkWriters,
		Influx:        influx.DefaultConfig(),
		Lake:          lake.DefaultConfig(),

		DeadLetterFileBytes: 64 << 20,
		DeadLetterFileAge:   24 * time.Hour,
	}
}

// RegisterFlags defines the writer's flags in fs, bound to c, with c's
// current values as defaults, and the sinks' flags: -influx-* and -lake-*.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Var((*daemon.StringList)(&c.Routers), "routers",
		"comma-separated ZeroMQ `endpoints` of every router's store. lane (tcp://host:port); dns+tcp://name:port: every address the name resolves to, followed as routers come and go")
	c.Resolve.RegisterFlags(fs, "-routers")
	fs.StringVar(&c.Sink, "sink", c.Sink,
		"`sink` to write to: influx (InfluxDB) or lake (Parquet files)")
	fs.StringVar(&c.QueueDir, "queue-dir", c.QueueDir,
		"`directory` of this writer's own durable queue; must survive restarts")
	fs.Int64Var(&c.QueueMaxBytes, "queue-max-bytes", c.QueueMaxBytes,
		"most entry `bytes` the writer's queue holds (a sink outage fills it); when full, routers are told busy and keep the data; 0: a share of the volume (docs/reliability.md); negative: unbounded")
	fs.StringVar(&c.Name, "name", c.Name,
		"durable subscriber `name`, unique among writers and stable across restarts: a-z, 0-9, '_', '-' (default: the sink, e.g. lake)")
	fs.IntVar(&c.BatchRecords, "batch-records", c.BatchRecords,
		"records (`count`) gathered into one sink write, about; a backlog drains in writes of this size")
	fs.DurationVar(&c.BatchInterval, "batch-interval", c.BatchInterval,
		"longest wait (`duration`) for more records before a sink write")
	fs.IntVar(&c.SinkWriters, "sink-writers", c.SinkWriters,
		"sink writes (`count`) in flight at once: while the store takes one write, the writer sends the next (the sinks are idempotent, so the order does not matter)")
	fs.StringVar(&c.DeadLetterDir, "dead-letter-dir", c.DeadLetterDir,
		"`folder` of the dead-letter files (JSON lines of the records the sink refuses for good; default: QUEUE-DIR/dead-letter)")
	fs.Int64Var(&c.DeadLetterFileBytes, "dead-letter-file-bytes", c.DeadLetterFileBytes,
		"size (`bytes`) past which the writer starts a new dead-letter file")
	fs.DurationVar(&c.DeadLetterFileAge, "dead-letter-file-age", c.DeadLetterFileAge,
		"age (`duration`) past which the writer closes its dead-letter file, so that it can be replayed")
	fs.Int64Var(&c.DeadLetterMaxBytes, "dead-letter-max-bytes", c.DeadLetterMaxBytes,
		"if positive, `bytes` of dead letters kept: past it the oldest files are removed, logged and counted (0: keep everything)")
	fs.DurationVar(&c.DeadLetterMaxAge, "dead-letter-max-age", c.DeadLetterMaxAge,
		"if positive, dead-letter files last written longer ago (`duration`) are removed, logged and counted (0: keep them)")
	c.Influx.RegisterFlags(fs, "influx-")
	c.Lake.RegisterFlags(fs, "lake-")
	c.Links.RegisterFlags(fs)
}

// SubscriberName returns the name the writer subscribes under: Name, or the
// sink when Name is empty.
func (c Config) SubscriberName() string {
	if c.Name != "" {
		return c.Name
	}
	return c.Sink
}

// deadLetterLimits returns the dead-letter store's bounds.
func (c Config) deadLetterLimits() deadLetterLimits {
	return deadLetterLimits{fileBytes: c.DeadLetterFileBytes, fileAge: c.DeadLetterFileAge,
		maxBytes: c.DeadLetterMaxBytes, maxAge: c.DeadLetterMaxAge}
}

// deadLetterDir returns DeadLetterDir or its default.
func (c Config) deadLetterDir() string {
	if c.DeadLetterDir != "" {
		return c.DeadLetterDir
	}
	return filepath.Join(c.QueueDir, "dead-letter")
}

// Validate reports every problem of the configuration at once, the chosen
// sink's included.
func (c Config) Validate() error {
	var errs []error
	if err := daemon.ValidateEndpoints(c.Routers); err != nil {
		errs = append(errs, fmt.Errorf("routers: %w", err))
	}
	if err := c.Links.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Resolve.Validate(); err != nil {
		errs = append(errs, err)
	}
	if !slices.Contains(Sinks, c.Sink) {
		errs = append(errs, fmt.Errorf("sink: %q: want influx or lake", c.Sink))
	}
	if c.QueueDir == "" {
		errs = append(errs, errors.New("queue-dir: empty"))
	}
	if c.Name != "" {
		if err := forward.ValidateSubscriberName(c.Name); err != nil {
			errs = append(errs, fmt.Errorf("name: %w", err))
		}
	}
	if c.BatchRecords < 1 {
		errs = append(errs, fmt.Errorf("batch-records: %d: want at least 1", c.BatchRecords))
	}
	if c.SinkWriters < 1 || c.SinkWriters > 64 {
		errs = append(errs, fmt.Errorf("sink-writers: %d: want 1 to 64", c.SinkWriters))
	}
	if c.BatchInterval <= 0 {
		errs = append(errs, fmt.Errorf("batch-interval: %v: want more than 0", c.BatchInterval))
	}
	if c.DeadLetterFileBytes <= 0 {
		errs = append(errs, fmt.Errorf("dead-letter-file-bytes: %d: want more than 0", c.DeadLetterFileBytes))
	}
	if c.DeadLetterFileAge <= 0 {
		errs = append(errs, fmt.Errorf("dead-letter-file-age: %v: want more than 0", c.DeadLetterFileAge))
	}
	if c.DeadLetterMaxBytes < 0 || (c.DeadLetterMaxBytes > 0 && c.DeadLetterMaxBytes < c.DeadLetterFileBytes) {
		errs = append(errs, fmt.Errorf("dead-letter-max-bytes: %d: want 0 (no bound) or at least -dead-letter-file-bytes (%d)", c.DeadLetterMaxBytes, c.DeadLetterFileBytes))
	}
	if c.DeadLetterMaxAge < 0 {
		errs = append(errs, fmt.Errorf("dead-letter-max-age: %v: want 0 (no bound) or more", c.DeadLetterMaxAge))
	}
	switch c.Sink {
	case SinkInflux:
		if err := c.Influx.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("influx: %w", err))
		}
	case SinkLake:
		l := c.Lake
		l.Name = c.SubscriberName()
		if err := l.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("lake: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storage-writer config: %w", err)
	}
	return nil
}

func (c Config) clone() Config {
	c.Routers = slices.Clone(c.Routers)
	return c
}
