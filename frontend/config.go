package frontend

import (
	"errors"
	"flag"
	"fmt"
	"slices"
	"time"

	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/tlsserve"
)

// Config is a frontend's configuration. Start from [DefaultConfig].
type Config struct {
	// Listen is the device WebSocket server's address, host:port.
	Listen string
	// QueueDir is the directory of the frontend's durable queue; it must
	// survive restarts (a volume in Kubernetes).
	QueueDir string
	// Routers are the ZeroMQ endpoints of every router, each one connected
	// with its own DEALER. A dns+tcp://name:port entry stands for every
	// address the name resolves to, followed while the frontend runs
	// (internal/endpoints; in Kubernetes, the routers' headless Service).
	Routers []string
	// Resolve says how often, and through which DNS server, dns+tcp://
	// entries of Routers are looked up.
	Resolve endpoints.Config
	// ID identifies this frontend to the routers. It must be unique among
	// frontends and stable across restarts, so that a router recognises the
	// frontend's resent batches.
	ID string
	// DrainLinger is how long the drainer waits after sending a small batch
	// before it reads the queue again, so that light load reaches the
	// routers in fewer, larger batches (fewer router fsyncs). It delays the
	// router's copy, never the device's ack. 0 or less: none.
	DrainLinger time.Duration
	// CommitDelay holds a queue commit that follows the last one by less
	// than this for this long, so that the frames arriving meanwhile share
	// its fsync (queue.Options.CommitDelay): for many devices that send one
	// reading a frame, fewer fsyncs per frame for up to this much more ack
	// latency. 0, the default: no hold.
	CommitDelay time.Duration

	// Registry is the path of the device registry file (JSON, see
	// internal/registry). It is reloaded on SIGHUP and when it changes.
	Registry string
	// RegistryStore, when set, is used instead of opening Registry, and its
	// owner runs its reload loop: in one process (drover all) the frontend
	// and the router share one store, because a store registers the
	// drover_registry_* metrics.
	RegistryStore *registry.Store `json:"-"`
	// Follow, when its API URL is set, takes the registry from the control
	// plane's change feed instead of the Registry file (which is then not
	// read), keeping the last copy in Follow.Cache (default
	// QueueDir/registry.cache). See internal/registry's follower.
	Follow registry.FollowConfig
	// Presence is how a following frontend reports the devices it holds to
	// the control plane.
	Presence PresenceConfig
	// QueueMaxBytes bounds the bytes the queue holds (stored, not yet acked
	// by a router). When it is reached, devices are told to try again later
	// (close 1013) and nothing is acked. 0 (the default): a share of the
	// volume at start (queue.Options.MaxBytes; docs/reliability.md).
	QueueMaxBytes int64

	// MaxConnections is the most device connections served at once; more are
	// refused before the upgrade with HTTP 503 and a jittered Retry-After.
	MaxConnections int
	// RetryAfter is the mean Retry-After given with a 503; each answer is
	// drawn uniformly from [RetryAfter/2, RetryAfter*3/2] so that a
	// stampede of refused devices does not come back in step.
	RetryAfter time.Duration
	// MaxFrameBytes is the largest WebSocket message accepted; larger ones
	// are refused with close 1009.
	MaxFrameBytes int
	// MaxReadingsPerFrame is the most readings one frame may carry.
	MaxReadingsPerFrame int

	// Rate is each device's sustained budget of live readings per second,
	// and RateBurst the size of that bucket. A live reading is one whose
	// device time is at most BacklogAge old.
	Rate      float64
	RateBurst int
	// BacklogRate and BacklogBurst are the separate, larger budget of
	// readings older than BacklogAge: a device flushing what it stored
	// during an outage is not a flood.
	BacklogRate  float64
	BacklogBurst int
	// BacklogAge is the device-time age from which a reading counts as
	// backlog.
	BacklogAge time.Duration
	// MaxIdleDevices bounds the per-device state (highest acked sequence,
	// rate buckets) kept for devices that are not connected; the least
	// recently seen is forgotten first. Connected devices are always kept.
	MaxIdleDevices int

	// AuthLimit limits failed authentications per client address (an IPv6
	// client per /64): past AuthLimit.Failures within AuthLimit.Window the
	// address is answered 429 with a Retry-After, before any work, for
	// AuthLimit.Block, doubling with each repeat up to AuthLimit.MaxBlock.
	AuthLimit auth.LimitConfig
	// AuthDeviceFailures is the same limit per device id (with AuthLimit's
	// window, blocks and key bound), against guessing one device's token
	// from many addresses; 0: none. Ids are counted whether they exist or
	// not, so a 429 tells nothing of which do.
	AuthDeviceFailures int
	// TrustedProxies are the addresses or prefixes of proxies (load
	// balancers) whose X-Forwarded-For names the client; empty: the TCP
	// peer is the client.
	TrustedProxies []string

	// PingInterval is how often the server pings a connection whose device
	// has sent no data frame for that long (one that sends frames is not
	// pinged: they prove it alive).
	PingInterval time.Duration
	// IdleTimeout closes a connection from which nothing (no message, no
	// pong) has arrived for that long.
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to a device (acks, pings, closes).
	WriteTimeout time.Duration
	// ShutdownGrace is how long a stopping frontend lets connections finish
	// the frame they are storing before it closes them by force.
	ShutdownGrace time.Duration
	// FirmwareBytesPerSecond caps the firmware bytes this frontend serves
	// to devices, all downloads together (firmware.go): telemetry first.
	FirmwareBytesPerSecond int

	// Links secures the connections to the routers: a cluster key file
	// (mutual TLS 1.3) or, for development, -insecure-links.
	Links clusterlink.Config

	// TLS serves wss:// with a certificate reloaded without dropping
	// connections, session tickets under shared keys, and limits on
	// handshakes (internal/tlsserve). Without a certificate: ws://, for
	// development and behind an ingress that terminates TLS.
	TLS tlsserve.Config
	// DeviceAuth is how devices authenticate: DeviceAuthToken (the
	// default), DeviceAuthCert or DeviceAuthCertOrToken.
	DeviceAuth string
	// ReusePort binds Listen with SO_REUSEPORT, so that several frontend
	// processes (each with its own QueueDir and ID) share one port and the
	// kernel spreads devices over them.
	ReusePort bool
	// Admission limits new connections so that a stampede does not take
	// the CPU that acks need, and holds back flapping devices.
	Admission AdmissionConfig
	// LameDuck is how long a stop spreads the closing of device
	// connections over (close 1012: reconnect elsewhere), after it has
	// stopped accepting; 0 closes them all at once (1001).
	LameDuck time.Duration
}

// DefaultConfig returns the configuration of a frontend on a laptop: devices
// on port 8080, one router on the same host, the queue under ./data, the
// registry in ./registry.json, and the host name as ID. The limits are sized
// for real fleets; see docs/ingest.md.
func DefaultConfig() Config {
	return Config{
		Listen:                 ":8080",
		QueueDir:               "data/frontend",
		Routers:                []string{"tcp://127.0.0.1:5555"},
		Resolve:                endpoints.DefaultConfig(),
		ID:                     daemon.DefaultID("frontend"),
		DrainLinger:            forward.DefaultLinger,
		Registry:               "registry.json",
		Follow:                 registry.DefaultFollowConfig(),
		Presence:               DefaultPresenceConfig(),
		MaxConnections:         10000,
		RetryAfter:             10 * time.Second,
		MaxFrameBytes:          64 << 10,
		MaxReadingsPerFrame:    1000,
		Rate:                   10,
		RateBurst:              1000,
		BacklogRate:            1000,
		BacklogBurst:           50000,
		BacklogAge:             2 * time.Minute,
		MaxIdleDevices:         100000,
		AuthLimit:              auth.DefaultLimitConfig(),
		AuthDeviceFailures:     10,
		PingInterval:           30 * time.Second,
		IdleTimeout:            90 * time.Second,
		WriteTimeout:           10 * time.Second,
		ShutdownGrace:          10 * time.Second,
		FirmwareBytesPerSecond: 1 << 20,
		TLS:                    tlsserve.Config{MinVersion: "1.2", Limits: tlsserve.DefaultLimits()},
		DeviceAuth:             DeviceAuthToken,
		Admission:              DefaultAdmissionConfig(),
		LameDuck:               10 * time.Second,
	}
}

// RegisterFlags defines the frontend's flags in fs, bound to c, with c's
// current values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen,
		"`address` (host:port) of the WebSocket server devices connect to")
	fs.StringVar(&c.QueueDir, "queue-dir", c.QueueDir,
		"`directory` of the durable queue; must survive restarts")
	fs.Var((*daemon.StringList)(&c.Routers), "routers",
		"comma-separated ZeroMQ `endpoints` of every router (tcp://host:port), one connection each; dns+tcp://name:port: every address the name resolves to, followed as routers come and go")
	c.Resolve.RegisterFlags(fs, "-routers")
	fs.StringVar(&c.ID, "id", c.ID,
		"`name` of this frontend towards the routers, unique and stable across restarts; the host name unless set")
	fs.DurationVar(&c.DrainLinger, "drain-linger", c.DrainLinger,
		"after forwarding a small batch, wait this long before reading the queue again, so routers fsync fewer, larger batches; delays the router's copy, not the device's ack; 0: none (`duration`)")
	fs.DurationVar(&c.CommitDelay, "commit-delay", c.CommitDelay,
		"hold a queue commit that follows the last by less than this for this long, so that frames arriving meanwhile share its fsync: fewer fsyncs (disk IOPS) for many devices sending one reading a frame, up to this much more ack latency; 0: none (`duration`, at most 1s)")
	fs.StringVar(&c.Registry, "registry", c.Registry,
		"device registry `file` (JSON); reloaded on SIGHUP and when it changes; not read with -registry-api")
	c.Follow.RegisterFlags(fs)
	c.Presence.RegisterFlags(fs)
	fs.Int64Var(&c.QueueMaxBytes, "queue-max-bytes", c.QueueMaxBytes,
		"`bytes` the queue may hold; when full, devices are told to retry later (close 1013) and nothing is acked; 0: a share of the volume (docs/reliability.md)")
	fs.IntVar(&c.MaxConnections, "max-connections", c.MaxConnections,
		"most device connections at once; more get HTTP 503 with a jittered Retry-After (`number`)")
	fs.DurationVar(&c.RetryAfter, "retry-after", c.RetryAfter,
		"mean Retry-After of a 503, jittered by ±50% (`duration`)")
	fs.IntVar(&c.FirmwareBytesPerSecond, "firmware-bytes-per-second", c.FirmwareBytesPerSecond,
		"with -registry-api: most firmware `bytes` per second this frontend serves to devices, all downloads together")
	fs.IntVar(&c.MaxFrameBytes, "max-frame-bytes", c.MaxFrameBytes,
		"largest frame (WebSocket message) accepted, in `bytes`; larger ones are closed with 1009")
	fs.IntVar(&c.MaxReadingsPerFrame, "max-readings-per-frame", c.MaxReadingsPerFrame,
		"most readings in one frame (`number`); more are refused with close 1007")
	fs.Float64Var(&c.Rate, "rate", c.Rate,
		"sustained live `readings/s` per device; over budget the connection is closed with 1008")
	fs.IntVar(&c.RateBurst, "rate-burst", c.RateBurst,
		"burst of live readings per device (`readings`); at least -max-readings-per-frame")
	fs.Float64Var(&c.BacklogRate, "backlog-rate", c.BacklogRate,
		"sustained backlog `readings/s` per device (readings older than -backlog-age), a budget apart from -rate")
	fs.IntVar(&c.BacklogBurst, "backlog-burst", c.BacklogBurst,
		"burst of backlog readings per device (`readings`); at least -max-readings-per-frame")
	fs.DurationVar(&c.BacklogAge, "backlog-age", c.BacklogAge,
		"device-time age from which a reading counts as backlog (store-and-forward flush), not live (`duration`)")
	fs.IntVar(&c.MaxIdleDevices, "max-idle-devices", c.MaxIdleDevices,
		"per-device state (acked seq, rate budget) kept for disconnected devices, least recent forgotten first (`number`)")
	c.AuthLimit.RegisterFlags(fs, "client address")
	fs.IntVar(&c.AuthDeviceFailures, "auth-device-failures", c.AuthDeviceFailures,
		"failed authentications of one device id within -auth-window after which the id is answered 429, as for an address (`number`); 0: no limit")
	fs.Var((*daemon.StringList)(&c.TrustedProxies), "trusted-proxies",
		"comma-separated `addresses or prefixes` (10.0.0.0/8) of proxies whose X-Forwarded-For names the client; empty: none is believed")
	fs.DurationVar(&c.PingInterval, "ping-interval", c.PingInterval,
		"ping a device that has sent no frame for this long, and again every interval while it stays quiet (`duration`)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", c.IdleTimeout,
		"close a connection silent (no message, no pong) for this long (`duration`)")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", c.WriteTimeout,
		"deadline of every write to a device: acks, pings, closes (`duration`)")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", c.ShutdownGrace,
		"on stop, time left to connections to finish storing and acking their frame before they are closed by force (`duration`)")
	c.Links.RegisterFlags(fs)
	c.TLS.RegisterFlags(fs, true)
	fs.StringVar(&c.DeviceAuth, "device-auth", c.DeviceAuth,
		"how devices authenticate: token (id and token, checked in the registry), cert (a client certificate of -tls-client-ca whose common name is the device id; the device must be in the registry) or cert-or-token (`mode`)")
	fs.BoolVar(&c.ReusePort, "reuse-port", c.ReusePort,
		"bind -listen with SO_REUSEPORT: several frontend processes, each with its own -queue-dir and -id, share the port and the kernel spreads devices over them")
	c.Admission.registerFlags(fs)
	fs.DurationVar(&c.LameDuck, "lame-duck", c.LameDuck,
		"on stop, after no longer accepting, close device connections gradually over this `duration`, each with 1012 (reconnect elsewhere) once its frame is acked; 0: all at once; keep -shutdown-timeout above it plus -shutdown-grace")
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.FirmwareBytesPerSecond < 1 {
		errs = append(errs, fmt.Errorf("firmware-bytes-per-second: %d, want > 0", c.FirmwareBytesPerSecond))
	}
	if err := daemon.ValidateListenAddr(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen: %w", err))
	}
	if c.QueueDir == "" {
		errs = append(errs, errors.New("queue-dir: empty"))
	}
	if err := daemon.ValidateEndpoints(c.Routers); err != nil {
		errs = append(errs, fmt.Errorf("routers: %w", err))
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
	if c.Registry == "" && c.RegistryStore == nil && !c.Follow.Enabled() {
		errs = append(errs, errors.New("registry: empty (give -registry FILE or -registry-api URL)"))
	}
	if c.Follow.Enabled() {
		follow := c.followConfig().Validate
		if c.RegistryStore != nil {
			follow = c.Follow.API.Validate // the store's owner follows; this frontend only reports presence
		}
		if err := follow(); err != nil {
			errs = append(errs, err)
		}
		if err := c.Presence.Validate(); err != nil {
			errs = append(errs, err)
		}
		if c.Presence.MaxPending < c.MaxConnections {
			errs = append(errs, fmt.Errorf("presence-max-pending: %d: want at least max-connections (%d): a refresh reports every connected device",
				c.Presence.MaxPending, c.MaxConnections))
		}
	}
	want := func(ok bool, name string, v any, what string) {
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %v: want %s", name, v, what))
		}
	}
	want(c.QueueMaxBytes >= 0, "queue-max-bytes", c.QueueMaxBytes, "0 (a share of the volume) or more")
	want(c.MaxConnections > 0, "max-connections", c.MaxConnections, "more than 0")
	want(c.RetryAfter >= time.Second, "retry-after", c.RetryAfter, "at least 1s")
	want(c.MaxIdleDevices >= 0, "max-idle-devices", c.MaxIdleDevices, "0 or more")
	want(c.Rate > 0, "rate", c.Rate, "more than 0")
	want(c.BacklogRate > 0, "backlog-rate", c.BacklogRate, "more than 0")
	want(c.BacklogAge > 0, "backlog-age", c.BacklogAge, "more than 0")
	want(c.WriteTimeout > 0, "write-timeout", c.WriteTimeout, "more than 0")
	want(c.ShutdownGrace > 0, "shutdown-grace", c.ShutdownGrace, "more than 0")
	if c.MaxFrameBytes < 1024 {
		errs = append(errs, fmt.Errorf("max-frame-bytes: %d: want at least 1024", c.MaxFrameBytes))
	}
	if c.MaxFrameBytes > maxFrameBytesCap {
		errs = append(errs, fmt.Errorf("max-frame-bytes: %d: want at most %d", c.MaxFrameBytes, maxFrameBytesCap))
	}
	if c.MaxReadingsPerFrame < 1 {
		errs = append(errs, fmt.Errorf("max-readings-per-frame: %d: want at least 1", c.MaxReadingsPerFrame))
	}
	// A frame is admitted whole or refused whole: a bucket smaller than a
	// full frame would refuse full frames forever.
	if c.RateBurst < c.MaxReadingsPerFrame {
		errs = append(errs, fmt.Errorf("rate-burst: %d: want at least max-readings-per-frame (%d)", c.RateBurst, c.MaxReadingsPerFrame))
	}
	if c.BacklogBurst < c.MaxReadingsPerFrame {
		errs = append(errs, fmt.Errorf("backlog-burst: %d: want at least max-readings-per-frame (%d)", c.BacklogBurst, c.MaxReadingsPerFrame))
	}
	if err := c.AuthLimit.Validate("auth-"); err != nil {
		errs = append(errs, err)
	}
	want(c.AuthDeviceFailures >= 0, "auth-device-failures", c.AuthDeviceFailures, "0 (no limit) or more")
	if _, err := auth.ParseProxies(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("trusted-proxies: %w", err))
	}
	want(c.PingInterval > 0, "ping-interval", c.PingInterval, "more than 0")
	want(c.CommitDelay >= 0 && c.CommitDelay <= time.Second, "commit-delay", c.CommitDelay, "0 (none) to 1s")
	want(c.IdleTimeout > c.PingInterval, "idle-timeout", c.IdleTimeout, "more than ping-interval, so that a pong can arrive in time")
	if err := c.TLS.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.validateDeviceAuth(); err != nil {
		errs = append(errs, err)
	}
	if c.ReusePort && !tlsserve.ReusePortSupported {
		errs = append(errs, errors.New("reuse-port: SO_REUSEPORT is supported on Linux only; give each frontend its own port"))
	}
	if err := c.Admission.validate(); err != nil {
		errs = append(errs, err)
	}
	want(c.LameDuck >= 0, "lame-duck", c.LameDuck, "0 (off) or more")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("frontend config: %w", err)
	}
	return nil
}

// maxFrameBytesCap keeps one frame, as stored, within what one queue record
// may carry (see queueRecordBytes).
const maxFrameBytesCap = 16 << 20

func (c Config) clone() Config {
	c.Routers = slices.Clone(c.Routers)
	c.TrustedProxies = slices.Clone(c.TrustedProxies)
	return c
}
