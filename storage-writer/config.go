package storagewriter

import (
	"errors"
	"flag"
	"fmt"
	"slices"

	"github.com/drover-telemetry/drover/internal/daemon"
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
	// Routers are the store. lane endpoints of every router.
	Routers []string
	// Sink is where readings go: SinkInflux or SinkLake.
	Sink string
	// QueueDir is the directory of the writer's durable queue; it must
	// survive restarts (a volume in Kubernetes) and belong to this writer
	// alone.
	QueueDir string
	// Name is the durable subscriber's name, under which the routers keep
	// what it has acked: unique among writers and stable across restarts.
	// Empty means the sink's name.
	Name string
}

// DefaultConfig returns the configuration of a writer on a laptop: one
// router on the same host and the Parquet lake, which needs no server, with
// the queue under ./data.
func DefaultConfig() Config {
	return Config{
		Routers:  []string{"tcp://127.0.0.1:5557"},
		Sink:     SinkLake,
		QueueDir: "data/storage-writer",
	}
}

// RegisterFlags defines the writer's flags in fs, bound to c, with c's
// current values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Var((*daemon.StringList)(&c.Routers), "routers",
		"comma-separated ZeroMQ `endpoints` of every router's store. lane (tcp://host:port)")
	fs.StringVar(&c.Sink, "sink", c.Sink,
		"`sink` to write to: influx (InfluxDB) or lake (Parquet files)")
	fs.StringVar(&c.QueueDir, "queue-dir", c.QueueDir,
		"`directory` of this writer's own durable queue; must survive restarts")
	fs.StringVar(&c.Name, "name", c.Name,
		"durable subscriber `name`, unique among writers and stable across restarts (default: the sink, e.g. lake)")
}

// SubscriberName returns the name the writer subscribes under: Name, or the
// sink when Name is empty.
func (c Config) SubscriberName() string {
	if c.Name != "" {
		return c.Name
	}
	return c.Sink
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if err := daemon.ValidateEndpoints(c.Routers); err != nil {
		errs = append(errs, fmt.Errorf("routers: %w", err))
	}
	if !slices.Contains(Sinks, c.Sink) {
		errs = append(errs, fmt.Errorf("sink: %q: want influx or lake", c.Sink))
	}
	if c.QueueDir == "" {
		errs = append(errs, errors.New("queue-dir: empty"))
	}
	if c.Name != "" {
		if err := daemon.ValidateID(c.Name); err != nil {
			errs = append(errs, fmt.Errorf("name: %w", err))
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
