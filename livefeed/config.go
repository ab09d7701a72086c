package livefeed

import (
	"errors"
	"flag"
	"fmt"
	"slices"

	"github.com/drover-telemetry/drover/internal/daemon"
)

// Config is a livefeed's configuration. Start from [DefaultConfig].
type Config struct {
	// Listen is the address of the client WebSocket and live map server,
	// host:port.
	Listen string
	// Routers are the live. lane endpoints of every router.
	Routers []string
}

// DefaultConfig returns the configuration of a livefeed on a laptop: clients
// on port 8081 and one router on the same host.
func DefaultConfig() Config {
	return Config{
		Listen:  ":8081",
		Routers: []string{"tcp://127.0.0.1:5556"},
	}
}

// RegisterFlags defines the livefeed's flags in fs, bound to c, with c's
// current values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen,
		"`address` (host:port) of the WebSocket API and live map page clients connect to")
	fs.Var((*daemon.StringList)(&c.Routers), "routers",
		"comma-separated ZeroMQ `endpoints` of every router's live. lane (tcp://host:port)")
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if err := daemon.ValidateListenAddr(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen: %w", err))
	}
	if err := daemon.ValidateEndpoints(c.Routers); err != nil {
		errs = append(errs, fmt.Errorf("routers: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("livefeed config: %w", err)
	}
	return nil
}

func (c Config) clone() Config {
	c.Routers = slices.Clone(c.Routers)
	return c
}
