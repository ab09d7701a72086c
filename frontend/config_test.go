package frontend

import (
	"flag"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/auth"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/tlsserve"
)

// TestDefaultConfigNeedsLinks: the defaults are valid once the links are
// chosen (a cluster key file, or -insecure-links said out loud), and
// refused, naming -cluster-key-file, before.
func TestDefaultConfigNeedsLinks(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "cluster-key-file: required") {
		t.Fatalf("DefaultConfig().Validate() = %v, want cluster-key-file required", err)
	}
	cfg.Links.KeyFile = "/etc/drover/cluster.key"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("with a key file: Validate() = %v", err)
	}
}

func TestRegisterFlags(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("frontend", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if len(f.Usage) < 20 {
			t.Errorf("flag -%s has no real usage text: %q", f.Name, f.Usage)
		}
	})
	err := fs.Parse([]string{
		"-listen", "127.0.0.1:0",
		"-queue-dir", "/var/lib/drover/frontend",
		"-routers", "tcp://router-0:5555,tcp://router-1:5555",
		"-id", "frontend-3",
		"-registry", "/etc/drover/registry.json",
		"-queue-max-bytes", "5000000",
		"-max-connections", "50000",
		"-retry-after", "30s",
		"-max-frame-bytes", "131072",
		"-max-readings-per-frame", "500",
		"-rate", "2.5",
		"-rate-burst", "600",
		"-backlog-rate", "500",
		"-backlog-burst", "9000",
		"-backlog-age", "5m",
		"-max-idle-devices", "7",
		"-ping-interval", "20s",
		"-idle-timeout", "1m",
		"-write-timeout", "3s",
		"-shutdown-grace", "15s",
		"-drain-linger", "5ms",
		"-commit-delay", "2ms",
		"-auth-failures", "5", "-auth-window", "2m", "-auth-block", "10s", "-auth-block-max", "1h", "-auth-keys", "4096",
		"-auth-device-failures", "3",
		"-trusted-proxies", "10.0.0.0/8, 192.168.1.1",
		"-cluster-key-file", "/etc/drover/cluster.key",
		"-tls-cert", "/etc/drover/tls.crt", "-tls-key", "/etc/drover/tls.key",
		"-tls-client-ca", "/etc/drover/devices-ca.pem", "-tls-ticket-key-file", "/etc/drover/tickets",
		"-tls-min-version", "1.3", "-tls-handshake-rate", "500", "-tls-max-handshakes", "100",
		"-tls-handshake-backlog", "300", "-tls-handshake-timeout", "5s",
		"-device-auth", "cert-or-token", "-reuse-port",
		"-accept-rate", "300", "-accept-burst", "50", "-accept-rate-min", "20", "-admission-delay-target", "5ms",
		"-flap-connects", "6", "-flap-window", "30s", "-flap-block", "20s", "-flap-block-max", "5m",
		"-lame-duck", "45s",
		"-resolve-interval", "30s", "-dns-server", "127.0.0.1:8600",
		"-registry-cache", "/var/cache/drover/registry.cache", "-presence-interval", "2s",
	})
	if err != nil {
		t.Fatal(err)
	}
	follow := registry.DefaultFollowConfig()
	follow.Cache = "/var/cache/drover/registry.cache"
	pres := DefaultPresenceConfig()
	pres.Interval = 2 * time.Second
	want := Config{
		Listen:                 "127.0.0.1:0",
		QueueDir:               "/var/lib/drover/frontend",
		Routers:                []string{"tcp://router-0:5555", "tcp://router-1:5555"},
		ID:                     "frontend-3",
		DrainLinger:            5 * time.Millisecond,
		CommitDelay:            2 * time.Millisecond,
		Registry:               "/etc/drover/registry.json",
		QueueMaxBytes:          5000000,
		MaxConnections:         50000,
		RetryAfter:             30 * time.Second,
		MaxFrameBytes:          131072,
		MaxReadingsPerFrame:    500,
		Rate:                   2.5,
		RateBurst:              600,
		BacklogRate:            500,
		BacklogBurst:           9000,
		BacklogAge:             5 * time.Minute,
		MaxIdleDevices:         7,
		PingInterval:           20 * time.Second,
		IdleTimeout:            time.Minute,
		WriteTimeout:           3 * time.Second,
		ShutdownGrace:          15 * time.Second,
		FirmwareBytesPerSecond: 1 << 20, // the default: not set above
		AuthLimit:              auth.LimitConfig{Failures: 5, Window: 2 * time.Minute, Block: 10 * time.Second, MaxBlock: time.Hour, MaxKeys: 4096},
		AuthDeviceFailures:     3,
		TrustedProxies:         []string{"10.0.0.0/8", "192.168.1.1"},
		Links:                  clusterlink.Config{KeyFile: "/etc/drover/cluster.key"},
		TLS: tlsserve.Config{CertFile: "/etc/drover/tls.crt", KeyFile: "/etc/drover/tls.key",
			ClientCAFile: "/etc/drover/devices-ca.pem", TicketKeyFile: "/etc/drover/tickets", MinVersion: "1.3",
			Limits: tlsserve.Limits{HandshakeRate: 500, MaxHandshakes: 100, Backlog: 300, HandshakeTimeout: 5 * time.Second}},
		DeviceAuth: DeviceAuthCertOrToken,
		ReusePort:  true,
		Admission: AdmissionConfig{Rate: 300, Burst: 50, MinRate: 20, DelayTarget: 5 * time.Millisecond,
			FlapConnects: 6, FlapWindow: 30 * time.Second, FlapBlock: 20 * time.Second, FlapMaxBlock: 5 * time.Minute},
		LameDuck: 45 * time.Second,
		Resolve:  endpoints.Config{Interval: 30 * time.Second, Server: "127.0.0.1:8600"},
		Follow:   follow,
		Presence: pres,
	}
	if !slices.Equal(cfg.Routers, want.Routers) {
		t.Errorf("routers %v, want %v", cfg.Routers, want.Routers)
	}
	got := cfg
	got.Routers, want.Routers = nil, nil
	if !slices.Equal(got.TrustedProxies, want.TrustedProxies) {
		t.Errorf("trusted proxies %v, want %v", got.TrustedProxies, want.TrustedProxies)
	}
	got.TrustedProxies, want.TrustedProxies = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("parsed %+v, want %+v", got, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"listen":                 func(c *Config) { c.Listen = "8080" },
		"queue-dir":              func(c *Config) { c.QueueDir = "" },
		"routers":                func(c *Config) { c.Routers = nil },
		"routers bad":            func(c *Config) { c.Routers = []string{"tcp://*:5555"} },
		"id":                     func(c *Config) { c.ID = "" },
		"registry":               func(c *Config) { c.Registry = "" },
		"queue-max-bytes":        func(c *Config) { c.QueueMaxBytes = -1 },
		"max-connections":        func(c *Config) { c.MaxConnections = 0 },
		"retry-after":            func(c *Config) { c.RetryAfter = 100 * time.Millisecond },
		"max-frame-bytes":        func(c *Config) { c.MaxFrameBytes = 100 },
		"max-frame-bytes huge":   func(c *Config) { c.MaxFrameBytes = 1 << 30 },
		"max-readings-per-frame": func(c *Config) { c.MaxReadingsPerFrame = 0 },
		"rate":                   func(c *Config) { c.Rate = 0 },
		"rate-burst":             func(c *Config) { c.RateBurst = c.MaxReadingsPerFrame - 1 },
		"backlog-rate":           func(c *Config) { c.BacklogRate = -1 },
		"backlog-burst":          func(c *Config) { c.BacklogBurst = 10 },
		"backlog-age":            func(c *Config) { c.BacklogAge = 0 },
		"max-idle-devices":       func(c *Config) { c.MaxIdleDevices = -1 },
		"ping-interval":          func(c *Config) { c.PingInterval = 0 },
		"commit-delay":           func(c *Config) { c.CommitDelay = 2 * time.Second },
		"idle-timeout":           func(c *Config) { c.IdleTimeout = c.PingInterval },
		"write-timeout":          func(c *Config) { c.WriteTimeout = 0 },
		"shutdown-grace":         func(c *Config) { c.ShutdownGrace = 0 },
		"cluster-key-file":       func(c *Config) { c.Links = clusterlink.Config{} },
		"tls-cert":               func(c *Config) { c.TLS.KeyFile = "k" },
		"tls-client-ca":          func(c *Config) { c.TLS.CertFile, c.TLS.KeyFile, c.TLS.ClientCAFile = "c", "k", "ca" },
		"tls-handshake-rate":     func(c *Config) { c.TLS.CertFile, c.TLS.KeyFile, c.TLS.HandshakeRate = "c", "k", -1 },
		"tls-min-version":        func(c *Config) { c.TLS.MinVersion = "1.0" },
		"device-auth":            func(c *Config) { c.DeviceAuth = "password" },
		"device-auth cert":       func(c *Config) { c.DeviceAuth = DeviceAuthCert },
		"accept-rate":            func(c *Config) { c.Admission.Rate = -5 },
		"accept-burst":           func(c *Config) { c.Admission.Burst = 0 },
		"accept-rate-min":        func(c *Config) { c.Admission.MinRate = c.Admission.Rate + 1 },
		"admission-delay-target": func(c *Config) { c.Admission.DelayTarget = -time.Second },
		"flap-window":            func(c *Config) { c.Admission.FlapWindow = 0 },
		"lame-duck":              func(c *Config) { c.LameDuck = -time.Second },
	} {
		cfg := DefaultConfig()
		cfg.Links = testLinks
		mutate(&cfg)
		err := cfg.Validate()
		field, _, _ := strings.Cut(name, " ")
		if err == nil || !strings.Contains(err.Error(), field+":") {
			t.Errorf("%s: Validate() = %v, want an error naming %s", name, err, field)
		}
		if _, err := New(cfg, nil, nil); err == nil {
			t.Errorf("%s: New accepted an invalid config", name)
		}
	}
}

func TestValidateReportsAllProblems(t *testing.T) {
	cfg := Config{}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("empty config accepted")
	}
	for _, field := range []string{"listen:", "queue-dir:", "routers:", "id:", "registry:", "rate:"} {
		if !strings.Contains(err.Error(), field) {
			t.Errorf("error lacks %s: %v", field, err)
		}
	}
}

func TestNewCopiesConfig(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Links = testLinks
	f, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Routers[0] = "tcp://changed:1"
	if f.cfg.Routers[0] == "tcp://changed:1" {
		t.Error("New kept a reference to the caller's Routers slice")
	}
}
