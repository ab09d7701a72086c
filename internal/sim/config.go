package sim

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"time"

	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/telemetry"
)

// IngestPath is the frontend's device endpoint. A URL given without a path gets it appended.
const IngestPath = "/v1/ingest"

// maxFrameReadings is the most readings a frontend takes in one frame (telemetry.DefaultLimits).
const maxFrameReadings = 1000

// Config configures a simulated fleet. The zero value of a field takes its default (see
// DefaultConfig); Validate says what is wrong with the rest.
type Config struct {
	// URLs are the frontends' WebSocket URLs (ws://host:port or wss://, path IngestPath when
	// none is given). A device picks one at random at each connect and moves to another after a
	// failure (but goes back once to one that answered with a Retry-After).
	URLs []string
	// Devices is the number of simulated devices.
	Devices int
	// DeviceOffset is the index of the first device: the fleet simulates devices DeviceOffset to
	// DeviceOffset+Devices-1, so that several processes can share one registry.
	DeviceOffset int
	// IDPrefix begins every device id (default "dev-"); see DeviceID.
	IDPrefix string
	// TokenSeed is the secret the devices' tokens derive from; see Token.
	TokenSeed string
	// Rate is the readings per second each device takes. 0 is idle: connect and hold.
	Rate float64
	// FrameReadings is the most readings in one frame (default 1, at most 1000).
	FrameReadings int
	// Window is the most frames in flight (sent, not yet acked) per device (default 8).
	Window int
	// FirstSeq is the seq of each device's first reading (default 1); the next ones follow without
	// gaps. A simulator restarted against the same storage must not reuse seqs: start it above
	// the last run's, e.g. at the Unix time in microseconds.
	FirstSeq uint64
	// Readings is how many readings each device takes in all; 0 is no limit. A device whose
	// readings are all acked closes its connection and stops.
	Readings int
	// Duration is how long devices take readings; 0 is until the context ends or Readings are
	// all acked. Idle devices hold their connections this long.
	Duration time.Duration
	// Drain is how long, after Duration, devices go on sending what their outboxes hold before
	// they stop (default 0: stop at once).
	Drain time.Duration
	// Warmup is how long from the start the ack latency is left out of the steady-state
	// distribution (Summary.AckLatencySteadyMs), e.g. the seconds in which every device connects
	// at once; 0: no steady-state distribution, only the whole run's.
	Warmup time.Duration
	// JSON makes devices send protojson text frames instead of binary protobuf.
	JSON bool
	// ConnectRate is how many devices per second connect for the first time at start; 0 lets
	// them all connect at once (a stampede).
	ConnectRate float64
	// BackoffMin and BackoffMax bound the reconnect backoff (defaults 100 ms and 10 s). The n-th
	// failure in a row waits a random time in [d/2, d] with d = min(BackoffMax, BackoffMin·2^(n-1))
	// (internal/backoff).
	BackoffMin, BackoffMax time.Duration
	// HandshakeTimeout bounds dialing and the WebSocket upgrade (default 10 s).
	HandshakeTimeout time.Duration
	// AckTimeout is how long a device waits for an ack of frames in flight before it gives up on
	// the connection and reconnects (default 60 s).
	AckTimeout time.Duration
	// WriteTimeout bounds one frame's write to the socket (default 10 s).
	WriteTimeout time.Duration
	// Script, when set, makes every device drive this scripted trip
	// instead of the vehicle model's journeys (script.go).
	Script *Script `json:"-"`
	// LocalAddrs are source IP addresses to dial from, spread over the devices round-robin
	// (e.g. 127.0.0.2, 127.0.0.3): each gives another ~28k ephemeral ports. Empty: the system's
	// choice.
	LocalAddrs []string
	// Outbox is the most readings a device keeps un-acked; default one hour of readings at Rate
	// (at least 1, at most 100,000).
	Outbox int
	// Seed seeds the devices' randomness (routes, start positions, events, jitter); 0 picks one
	// at random. Each vehicle's journey depends on Seed and its index only.
	Seed uint64
	// EventRate is how often a vehicle brakes harshly, and how often it speeds, per hour of
	// driving (default 0.5); its engine overheats at a fifth of that rate. Negative: never.
	EventRate float64
	// StampedeEvery, when not 0, makes every connected device drop its connection at once this
	// often (a reconnect storm, as after a network outage); the devices reconnect with their
	// usual backoff and resend what was not acked.
	StampedeEvery time.Duration
	// CommandDelay is how long a device takes to execute a command (after reporting it
	// received); 0 answers at once, received and result in one frame.
	CommandDelay time.Duration
	// CommandFailureRate is the share of commands a device reports failed, in [0, 1].
	CommandFailureRate float64
	// FirmwareLinkBytesPerSecond is the simulated link's speed for firmware downloads (0: as
	// fast as the frontend serves); FirmwareDropEvery cuts the download every so many bytes
	// (0: never), and the device resumes from the byte it reached; FirmwareChunk is the size
	// of one read (default 4096).
	FirmwareLinkBytesPerSecond int
	FirmwareDropEvery          int
	FirmwareChunk              int
	// FirmwareVersion is the firmware version each device runs at start and names when it
	// connects (X-Drover-Firmware); after an update, the image's version. "": names none
	// until it installs one.
	FirmwareVersion string

	// TLSCAFile is a PEM file of the CAs that issue the frontends' certificates, for wss:// URLs;
	// empty: the system's roots. TLSServerName is the name checked in their certificates; empty:
	// the URL's host.
	TLSCAFile     string
	TLSServerName string
	// TLSNoResume turns TLS session resumption off: every connection is a full handshake. By
	// default each device keeps the session ticket of its last connection and resumes with it, as
	// devices should (docs/ingest.md).
	TLSNoResume bool
	// TLSDeviceCACert and TLSDeviceCAKey, when set, are a CA (PEM certificate and key) that issues
	// each device a client certificate naming it at its first connection: the devices then
	// authenticate with certificates (the frontend's -device-auth cert).
	TLSDeviceCACert, TLSDeviceCAKey string
	// TLSMaxVersion caps the TLS version the devices offer: "1.3" (the default: Go's) or "1.2",
	// as a tracker whose modem's TLS stack stops there. A TLS 1.2 device resumes its sessions
	// without a key exchange, which is what a frontend's CPU per resumed connection depends on
	// (docs/design.md, "TLS 1.2 resumption").
	TLSMaxVersion string
	// TLSKeyExchanges is the key exchanges the devices offer, in order of preference
	// (comma-separated: x25519mlkem768, x25519, p256, p384); empty: Go's (X25519MLKEM768 first).
	// Embedded TLS stacks offer x25519 or p256 without the post-quantum hybrid, which costs a
	// server about a third of a TLS 1.3 handshake: to measure a fleet of those, give x25519.
	TLSKeyExchanges string
}

// DefaultConfig returns a configuration with every default filled in: 100 devices, one reading
// per second each, against a frontend on 127.0.0.1:8080.
func DefaultConfig() Config {
	return Config{
		URLs:             []string{"ws://127.0.0.1:8080"},
		Devices:          100,
		IDPrefix:         "dev-",
		Rate:             1,
		FrameReadings:    1,
		Window:           8,
		FirstSeq:         1,
		BackoffMin:       100 * time.Millisecond,
		BackoffMax:       10 * time.Second,
		HandshakeTimeout: 10 * time.Second,
		AckTimeout:       60 * time.Second,
		WriteTimeout:     10 * time.Second,
		EventRate:        defaultEventRate,
	}
}

// RegisterFlags defines the fleet's flags in fs, with the values in c as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Var((*daemon.StringList)(&c.URLs), "frontends",
		"comma-separated WebSocket `URLs` of the frontends devices connect to (ws://host:port; path "+IngestPath+" when none)")
	fs.IntVar(&c.Devices, "devices", c.Devices, "`number` of simulated devices")
	fs.IntVar(&c.DeviceOffset, "device-offset", c.DeviceOffset, "`index` of the first device, to split a fleet over processes")
	fs.StringVar(&c.IDPrefix, "id-prefix", c.IDPrefix, "`prefix` of device ids, which are the prefix and a number: letters, digits and . _ - :, starting with a letter or a digit")
	daemon.SecretVar(fs, &c.TokenSeed, "token-seed", "`secret` device tokens derive from (the registry must be written with the same)")
	fs.Float64Var(&c.Rate, "rate", c.Rate, "readings per second per device (`number`); 0: connect and hold")
	fs.IntVar(&c.FrameReadings, "frame-readings", c.FrameReadings, "most readings per frame (`number`, 1-1000)")
	fs.IntVar(&c.Window, "window", c.Window, "most un-acked frames in flight per device (`number`)")
	fs.Uint64Var(&c.FirstSeq, "first-seq", c.FirstSeq, "seq of each device's first reading (`number`); above the last run's when storage is kept")
	fs.IntVar(&c.Readings, "readings", c.Readings, "readings per device in all (`number`); 0: no limit")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "how long devices take readings (`duration`); 0: until stopped")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "after -duration, how long devices go on sending their outboxes (`duration`)")
	fs.DurationVar(&c.Warmup, "warmup", c.Warmup, "leave the first `duration` out of the steady-state ack latency (summary: ack_latency_steady_ms)")
	fs.BoolVar(&c.JSON, "json", c.JSON, "send JSON text frames instead of binary protobuf")
	fs.DurationVar(&c.CommandDelay, "command-delay", c.CommandDelay,
		"how long (`duration`) a device takes to execute a command; 0: at once")
	fs.Float64Var(&c.CommandFailureRate, "command-failure-rate", c.CommandFailureRate,
		"share of commands a device reports failed (`fraction`, 0 to 1)")
	fs.IntVar(&c.FirmwareLinkBytesPerSecond, "firmware-link-bps", c.FirmwareLinkBytesPerSecond,
		"simulated link speed of firmware downloads in `bytes/s` (GPRS: 5000); 0: unlimited")
	fs.IntVar(&c.FirmwareDropEvery, "firmware-drop-every", c.FirmwareDropEvery,
		"cut a firmware download every so many `bytes` (the device resumes from there); 0: never")
	fs.IntVar(&c.FirmwareChunk, "firmware-chunk", c.FirmwareChunk, "`bytes` read at a time from a firmware download (default 4096)")
	fs.StringVar(&c.FirmwareVersion, "firmware-version", c.FirmwareVersion,
		"firmware `version` the devices run at start and name when they connect (after an update, the image's); empty: none")
	fs.Float64Var(&c.ConnectRate, "connect-rate", c.ConnectRate, "first connections per second at start (`number`); 0: all at once")
	fs.DurationVar(&c.BackoffMin, "backoff-min", c.BackoffMin, "shortest reconnect backoff (`duration`)")
	fs.DurationVar(&c.BackoffMax, "backoff-max", c.BackoffMax, "longest reconnect backoff (`duration`)")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", c.HandshakeTimeout, "dial and upgrade timeout (`duration`)")
	fs.DurationVar(&c.AckTimeout, "ack-timeout", c.AckTimeout, "reconnect when frames in flight get no ack this long (`duration`)")
	fs.Var((*daemon.StringList)(&c.LocalAddrs), "local-addrs", "comma-separated source IP `addresses` to dial from, round-robin")
	fs.IntVar(&c.Outbox, "outbox", c.Outbox, "most un-acked readings a device keeps (`number`); 0: one hour at -rate")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "random `seed`; 0: random")
	fs.Float64Var(&c.EventRate, "event-rate", c.EventRate,
		"harsh brakings (and speedings) per vehicle per hour of driving (`number`), overheatings a fifth of it; negative: none")
	fs.DurationVar(&c.StampedeEvery, "stampede-every", c.StampedeEvery,
		"drop every device's connection at once this often (`duration`), a reconnect storm; 0: never")
	fs.StringVar(&c.TLSCAFile, "tls-ca", c.TLSCAFile, "PEM `file` of the CAs of the frontends' certificates, for wss:// (default: the system's)")
	fs.StringVar(&c.TLSServerName, "tls-server-name", c.TLSServerName, "`name` to check in the frontends' certificates (default: the URL's host)")
	fs.BoolVar(&c.TLSNoResume, "tls-no-resume", c.TLSNoResume, "do not resume TLS sessions: a full handshake at every connection")
	fs.StringVar(&c.TLSDeviceCACert, "tls-device-ca-cert", c.TLSDeviceCACert,
		"PEM `file` of a CA certificate that issues each device a client certificate naming it (with -tls-device-ca-key): devices authenticate by certificate")
	fs.StringVar(&c.TLSDeviceCAKey, "tls-device-ca-key", c.TLSDeviceCAKey, "PEM `file` of the key of -tls-device-ca-cert")
	fs.StringVar(&c.TLSMaxVersion, "tls-max-version", c.TLSMaxVersion,
		"highest TLS `version` devices offer: 1.3 or 1.2 (a tracker's modem stack: TLS 1.2 sessions resume without a key exchange)")
	fs.StringVar(&c.TLSKeyExchanges, "tls-key-exchanges", c.TLSKeyExchanges,
		"comma-separated `list` of the key exchanges devices offer, preferred first: x25519mlkem768, x25519, p256, p384 (default: Go's, X25519MLKEM768 first; embedded stacks: x25519 or p256)")
}

// withDefaults fills every zero field from DefaultConfig (URLs and Devices excepted: they have
// no sensible default outside DefaultConfig itself).
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.IDPrefix == "" {
		c.IDPrefix = d.IDPrefix
	}
	if c.FrameReadings == 0 {
		c.FrameReadings = d.FrameReadings
	}
	if c.Window == 0 {
		c.Window = d.Window
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = d.BackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(d.BackoffMax, c.BackoffMin)
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = d.AckTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = d.WriteTimeout
	}
	if c.FirstSeq == 0 {
		c.FirstSeq = 1
	}
	if c.EventRate == 0 {
		c.EventRate = d.EventRate
	}
	if c.Outbox == 0 {
		c.Outbox = int(min(100_000, max(1, math.Ceil(c.Rate*3600))))
	}
	return c
}

// Validate checks the configuration, with defaults applied to zero fields.
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if len(c.URLs) == 0 {
		errs = append(errs, errors.New("frontends: none given"))
	}
	for _, s := range c.URLs {
		if _, err := ingestURL(s); err != nil {
			errs = append(errs, fmt.Errorf("frontends: %w", err))
		}
	}
	if c.Devices < 1 {
		errs = append(errs, fmt.Errorf("devices: %d: want at least 1", c.Devices))
	}
	if c.DeviceOffset < 0 {
		errs = append(errs, fmt.Errorf("device-offset: %d: want 0 or more", c.DeviceOffset))
	} else if c.Devices >= 1 {
		// The first and the longest id: the digits after the prefix are
		// always valid, so these two stand for every id of the fleet.
		for _, i := range []int{c.DeviceOffset, c.DeviceOffset + c.Devices - 1} {
			if err := telemetry.ValidateDeviceID(DeviceID(c.IDPrefix, i)); err != nil {
				errs = append(errs, fmt.Errorf("id-prefix: %q gives device id %q: %w", c.IDPrefix, DeviceID(c.IDPrefix, i), err))
				break
			}
		}
	}
	if c.FirmwareVersion != "" {
		if err := telemetry.ValidateFirmwareVersion(c.FirmwareVersion); err != nil {
			errs = append(errs, fmt.Errorf("firmware-version: %w", err))
		}
	}
	if math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) || c.Rate < 0 {
		errs = append(errs, fmt.Errorf("rate: %v: want 0 or more", c.Rate))
	}
	if c.FrameReadings < 1 || c.FrameReadings > maxFrameReadings {
		errs = append(errs, fmt.Errorf("frame-readings: %d: want 1 to %d", c.FrameReadings, maxFrameReadings))
	}
	if c.Window < 1 {
		errs = append(errs, fmt.Errorf("window: %d: want at least 1", c.Window))
	}
	if c.Readings > 0 && c.FirstSeq > math.MaxUint64-uint64(c.Readings) {
		errs = append(errs, fmt.Errorf("first-seq: %d: too large for %d readings", c.FirstSeq, c.Readings))
	}
	if c.Readings < 0 {
		errs = append(errs, fmt.Errorf("readings: %d: want 0 or more", c.Readings))
	}
	if c.Readings > 0 && c.Rate == 0 {
		errs = append(errs, errors.New("readings: idle devices (rate 0) take no readings"))
	}
	if c.Duration < 0 || c.Drain < 0 {
		errs = append(errs, errors.New("duration, drain: want 0 or more"))
	}
	if math.IsNaN(c.ConnectRate) || c.ConnectRate < 0 {
		errs = append(errs, fmt.Errorf("connect-rate: %v: want 0 or more", c.ConnectRate))
	}
	if c.BackoffMin < 0 || c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("backoff: min %s, max %s: want 0 < min ≤ max", c.BackoffMin, c.BackoffMax))
	}
	if c.HandshakeTimeout < 0 || c.AckTimeout < 0 || c.WriteTimeout < 0 {
		errs = append(errs, errors.New("timeouts: want more than 0"))
	}
	for _, a := range c.LocalAddrs {
		if net.ParseIP(a) == nil {
			errs = append(errs, fmt.Errorf("local-addrs: %q: not an IP address", a))
		}
	}
	if math.IsNaN(c.EventRate) || math.IsInf(c.EventRate, 0) || c.EventRate > 3600 {
		errs = append(errs, fmt.Errorf("event-rate: %v: want at most 3600 per hour", c.EventRate))
	}
	if c.CommandDelay < 0 || math.IsNaN(c.CommandFailureRate) || c.CommandFailureRate < 0 || c.CommandFailureRate > 1 {
		errs = append(errs, fmt.Errorf("command-delay %s, command-failure-rate %v: want a delay ≥ 0 and a rate in [0, 1]",
			c.CommandDelay, c.CommandFailureRate))
	}
	if c.StampedeEvery < 0 {
		errs = append(errs, fmt.Errorf("stampede-every: %s: want 0 or more", c.StampedeEvery))
	}
	if (c.TLSDeviceCACert == "") != (c.TLSDeviceCAKey == "") {
		errs = append(errs, errors.New("tls-device-ca-cert, tls-device-ca-key: give both or neither"))
	}
	if _, err := tlsVersion(c.TLSMaxVersion); err != nil {
		errs = append(errs, fmt.Errorf("tls-max-version: %w", err))
	}
	if _, err := keyExchanges(c.TLSKeyExchanges); err != nil {
		errs = append(errs, fmt.Errorf("tls-key-exchanges: %w", err))
	}
	if c.Outbox < 1 {
		errs = append(errs, fmt.Errorf("outbox: %d: want at least 1", c.Outbox))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sim config: %w", err)
	}
	return nil
}

// ingestURL checks a frontend URL and gives it IngestPath when it has no path.
func ingestURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
		return "", fmt.Errorf("%q: want ws://host:port or wss://host:port", s)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = IngestPath
	}
	return u.String(), nil
}
