package livefeed

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/tlsserve"
)

// Config is a livefeed's configuration. Start from [DefaultConfig].
type Config struct {
	// Listen is the address of the client WebSocket and live map server,
	// host:port.
	Listen string
	// Routers are the live. lane endpoints of every router. A
	// dns+tcp://name:port entry stands for every address the name resolves
	// to, followed while the livefeed runs (internal/endpoints).
	Routers []string
	// Alerts are the alert lane endpoints of every alert engine (their
	// -alert-pub); empty: no alerts on the feed.
	Alerts []string
	// Resolve says how often, and through which DNS server, dns+tcp://
	// entries of Routers are looked up.
	Resolve endpoints.Config
	// ID names this livefeed in logs and in the ZeroMQ identities of its
	// subscriptions (ID.0, ID.1, ... one per router subscription).
	ID string

	// Clients is the path of the clients file: the SHA-256 hashes of client
	// tokens and the fleets each may see (see docs/live-api.md). It is
	// reloaded on SIGHUP and when it changes. Empty: no file.
	Clients string
	// API, when its URL is set, is the control plane whose live-client
	// tokens (POST /v1/live-tokens) the livefeed follows, beside the
	// clients file (apitokens.go).
	API apiclient.Config
	// CacheDir is where what is followed from API is kept (tokens.cache,
	// registry.cache), so that a restart while the API is down still
	// admits the tokens' clients and hides retired devices. Empty: no
	// cache.
	CacheDir string
	// RegistryStore, when set, is the device registry followed instead of
	// making a follower of API: drover all shares its frontend's. Not a
	// flag.
	RegistryStore *registry.Store `json:"-"`
	// NotBefore, when set, holds the first request to the API until it is
	// closed (drover all: until its own API has started). Not a flag.
	NotBefore <-chan struct{} `json:"-"`
	// DevToken is a token that may see every fleet and never expires, for
	// local runs and tests. As a flag it is a secret (see
	// daemon.SecretVar): from the environment or a file.
	DevToken string
	// Dev is for development: when neither Clients nor DevToken is set, Run
	// makes up a random all-fleets token and logs the map's URL with it,
	// so that a laptop run is usable and never open. Without Dev, a
	// livefeed with neither refuses every client (and says so at start).
	Dev bool

	// AuthLimit limits failed authentications per client address (IPv6
	// per /64), as the frontend does: past the limit, 429 with a
	// Retry-After and no work.
	AuthLimit auth.LimitConfig
	// TrustedProxies are the proxies whose X-Forwarded-For names the
	// client; empty: the TCP peer is the client.
	TrustedProxies []string

	// MaxClients bounds the client connections open at once; past it new
	// ones are answered 503.
	MaxClients int
	// MaxRate is the most updates per second per vehicle a client gets; a
	// client may ask for fewer, never for more.
	MaxRate float64
	// SendInterval is the least time between two update messages to one
	// client: what becomes due within it is conflated and goes out in one
	// message when it ends. It bounds each client's messages (and writes)
	// per second, whatever the rate of batches from the routers, at the
	// cost of up to SendInterval of latency for a client that is busy; an
	// update after a quiet SendInterval goes out at once. 0: a message per
	// wake-up of the client's writer (the default: see docs/performance.md,
	// "The livefeed's fan-out", for why). Snapshots, alerts and errors are
	// not held back.
	SendInterval time.Duration
	// SharedStreams feeds the clients that follow the same filter and keep
	// up from one stream of update messages, built and framed once
	// (stream.go); a client that falls behind is fed on its own, with
	// conflation, until it has caught up. Off: every client is fed on its
	// own.
	SharedStreams bool
	// Compression negotiates permessage-deflate with clients that offer
	// it (browsers do): fewer bytes on the wire for more CPU. A shared
	// stream's message is compressed once for all its members; a client
	// on its own path costs a compression per message. Off by default.
	Compression bool
	// sharedBehind, for tests, replaces maxSharedBehind when not 0.
	sharedBehind int
	// SnapshotMax bounds the vehicles of one snapshot; vehicles beyond it
	// reach the client with their next update.
	SnapshotMax int
	// MaxSubscribeDevices bounds the device ids of one subscription.
	MaxSubscribeDevices int
	// SlowBacklog and SlowTimeout define a slow client: one whose backlog of
	// distinct vehicles with an update due but not yet written stays above
	// SlowBacklog for longer than SlowTimeout. It is told so and
	// disconnected (close code 4002).
	SlowBacklog int
	SlowTimeout time.Duration
	// WriteTimeout bounds one write to a client; a client that does not
	// take a message within it is disconnected as slow.
	WriteTimeout time.Duration
	// PingInterval is how often a client is pinged; IdleTimeout is how long
	// a client may stay silent (no message, no pong) before it is closed.
	PingInterval time.Duration
	IdleTimeout  time.Duration
	// VehicleTTL is how long a vehicle that sends nothing stays in memory
	// (and on clients' maps); 0 keeps vehicles forever.
	VehicleTTL time.Duration
	// ShutdownGrace bounds how long a stop waits for clients to take their
	// close frame (1001) before closing their connections by force.
	ShutdownGrace time.Duration

	// Links secures the subscriptions to the routers' live lanes: a
	// cluster key file (mutual TLS 1.3) or, for development,
	// -insecure-links.
	Links clusterlink.Config

	// TLS serves wss:// and https:// (the map page) with a certificate
	// reloaded without dropping clients and shared session ticket keys
	// (internal/tlsserve). Without a certificate: ws:// and http://, for
	// development and behind an ingress that terminates TLS.
	TLS tlsserve.Config
	// ReusePort binds Listen with SO_REUSEPORT, so that several livefeeds
	// share one port.
	ReusePort bool
	// Map configures the built-in live map page.
	Map MapConfig
}

// DefaultConfig returns the configuration of a livefeed on a laptop: clients
// on port 8081 and one router on the same host.
func DefaultConfig() Config {
	return Config{
		Listen:  ":8081",
		Routers: []string{"tcp://127.0.0.1:5556"},
		Resolve: endpoints.DefaultConfig(),
		ID:      daemon.DefaultID("livefeed"),

		MaxClients:          10000,
		MaxRate:             10,
		SendInterval:        0, // off: measured, it cost the one-client latency and bought nothing at 500 (docs/performance.md)
		SharedStreams:       true,
		SnapshotMax:         20000,
		MaxSubscribeDevices: 1000,
		SlowBacklog:         1000,
		SlowTimeout:         10 * time.Second,
		WriteTimeout:        10 * time.Second,
		PingInterval:        30 * time.Second,
		IdleTimeout:         75 * time.Second,
		VehicleTTL:          24 * time.Hour,
		ShutdownGrace:       5 * time.Second,
		AuthLimit:           auth.DefaultLimitConfig(),
		TLS:                 tlsserve.Config{MinVersion: "1.2", Limits: tlsserve.DefaultLimits()},
		Map:                 DefaultMapConfig(),
	}
}

// RegisterFlags defines the livefeed's flags in fs, bound to c, with c's
// current values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen,
		"`address` (host:port) of the WebSocket API and live map page clients connect to")
	fs.Var((*daemon.StringList)(&c.Routers), "routers",
		"comma-separated ZeroMQ `endpoints` of every router's live. lane (tcp://host:port); dns+tcp://name:port: every address the name resolves to, followed as routers come and go")
	c.Resolve.RegisterFlags(fs, "-routers")
	fs.Var((*daemon.StringList)(&c.Alerts), "alerts",
		"comma-separated ZeroMQ `endpoints` of every alert engine's alert lane (their -alert-pub); empty: no alerts")
	fs.StringVar(&c.ID, "id", c.ID,
		"`name` of this livefeed in logs and ZeroMQ identities (default: the host name)")
	fs.StringVar(&c.Clients, "clients", c.Clients,
		"`path` of the clients file (token SHA-256 hashes and the fleets each may see); reloaded on SIGHUP and change")
	c.API.RegisterFlags(fs, "live-client tokens from, beside the -clients file")
	fs.StringVar(&c.CacheDir, "cache-dir", c.CacheDir,
		"`directory` keeping what is followed from -registry-api (live-client tokens, the device registry), so that a restart while the API is down still admits the tokens' clients; empty: no cache")
	daemon.SecretVar(fs, &c.DevToken, "dev-token",
		"client `token` allowed to see every fleet, never expiring, for local runs and tests")
	fs.BoolVar(&c.Dev, "dev", c.Dev,
		"development: with no -clients file and no dev token, make up an all-fleets token and log the map's URL with it (without either and without -dev, every client is refused)")
	c.AuthLimit.RegisterFlags(fs, "client address")
	fs.Var((*daemon.StringList)(&c.TrustedProxies), "trusted-proxies",
		"comma-separated `addresses or prefixes` (10.0.0.0/8) of proxies whose X-Forwarded-For names the client; empty: none is believed")
	fs.IntVar(&c.MaxClients, "max-clients", c.MaxClients,
		"most client `connections` open at once; past it new ones get 503")
	fs.Float64Var(&c.MaxRate, "max-rate", c.MaxRate,
		"most updates per second (`hz`) per vehicle sent to one client; clients may ask for fewer")
	fs.DurationVar(&c.SendInterval, "send-interval", c.SendInterval,
		"least time (`duration`) between two update messages to one client; updates due meanwhile go out together in the next (0: a message per wake-up)")
	fs.BoolVar(&c.SharedStreams, "shared-streams", c.SharedStreams,
		"feed the clients that follow the same filter and keep up one shared stream of update messages, built once (false: each client its own)")
	fs.BoolVar(&c.Compression, "compression", c.Compression,
		"negotiate permessage-deflate with clients that offer it: fewer bytes, more CPU (a shared stream's message is compressed once)")
	fs.IntVar(&c.SnapshotMax, "snapshot-max", c.SnapshotMax,
		"most `vehicles` in one subscription snapshot; the rest arrive with their next update")
	fs.IntVar(&c.MaxSubscribeDevices, "max-subscribe-devices", c.MaxSubscribeDevices,
		"most device `ids` in one subscribe message")
	fs.IntVar(&c.SlowBacklog, "slow-backlog", c.SlowBacklog,
		"distinct `vehicles` with an update due but unsent above which a client counts as slow")
	fs.DurationVar(&c.SlowTimeout, "slow-timeout", c.SlowTimeout,
		"how long (`duration`) a client may stay above -slow-backlog before it is disconnected (close 4002)")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout,
		"longest a write to a client may take (`duration`) before the client is disconnected as slow")
	fs.DurationVar(&c.PingInterval, "ping-interval", c.PingInterval,
		"how often (`duration`) clients are pinged to keep connections alive and detect dead ones")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout,
		"a client silent (no message, no pong) for this `duration` is closed (4001)")
	fs.DurationVar(&c.VehicleTTL, "vehicle-ttl", c.VehicleTTL,
		"a vehicle that sends nothing for this `duration` is forgotten and removed from maps; 0 keeps it forever")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace,
		"on stop, how long (`duration`) clients get to take their close frame (1001) before being cut")
	c.Links.RegisterFlags(fs)
	c.TLS.RegisterFlags(fs, false)
	fs.BoolVar(&c.ReusePort, "reuse-port", c.ReusePort,
		"bind -listen with SO_REUSEPORT, so that several livefeeds share the port")
	c.Map.RegisterFlags(fs)
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
	for _, ep := range c.Alerts {
		if err := daemon.ValidateEndpoint(ep, false); err != nil {
			errs = append(errs, fmt.Errorf("alerts: %w", err))
		}
	}
	if err := c.Links.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Resolve.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := daemon.ValidateID(c.ID); err != nil {
		errs = append(errs, fmt.Errorf("id: %w", err))
	}
	if err := c.API.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.DevToken != "" && len(c.DevToken) < 8 {
		errs = append(errs, errors.New("dev-token: shorter than 8 characters"))
	}
	if err := c.AuthLimit.Validate("auth-"); err != nil {
		errs = append(errs, err)
	}
	if _, err := auth.ParseProxies(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("trusted-proxies: %w", err))
	}
	positive := []struct {
		name string
		v    int
	}{
		{"max-clients", c.MaxClients}, {"snapshot-max", c.SnapshotMax},
		{"max-subscribe-devices", c.MaxSubscribeDevices}, {"slow-backlog", c.SlowBacklog},
	}
	for _, p := range positive {
		if p.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %d, want > 0", p.name, p.v))
		}
	}
	if !(c.MaxRate > 0) || math.IsInf(c.MaxRate, 0) || c.MaxRate > 1000 {
		errs = append(errs, fmt.Errorf("max-rate: %v, want > 0 and at most 1000", c.MaxRate))
	}
	durations := []struct {
		name string
		v    time.Duration
	}{
		{"slow-timeout", c.SlowTimeout}, {"write-timeout", c.WriteTimeout},
		{"ping-interval", c.PingInterval}, {"idle-timeout", c.IdleTimeout},
		{"shutdown-grace", c.ShutdownGrace},
	}
	for _, d := range durations {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %v, want > 0", d.name, d.v))
		}
	}
	if c.PingInterval > 0 && c.IdleTimeout > 0 && c.IdleTimeout <= c.PingInterval {
		errs = append(errs, fmt.Errorf("idle-timeout: %v, want more than ping-interval (%v)", c.IdleTimeout, c.PingInterval))
	}
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.ReusePort && !tlsserve.ReusePortSupported {
		errs = append(errs, errors.New("reuse-port: SO_REUSEPORT is supported on Linux only"))
	}
	if err := c.Map.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.SendInterval < 0 || c.SendInterval > time.Second {
		errs = append(errs, fmt.Errorf("send-interval: %v, want 0 to 1s", c.SendInterval))
	}
	if c.VehicleTTL < 0 {
		errs = append(errs, fmt.Errorf("vehicle-ttl: %v, want >= 0", c.VehicleTTL))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("livefeed config: %w", err)
	}
	return nil
}

func (c Config) clone() Config {
	c.Routers = slices.Clone(c.Routers)
	c.Alerts = slices.Clone(c.Alerts)
	c.TrustedProxies = slices.Clone(c.TrustedProxies)
	return c
}
