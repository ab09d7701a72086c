package livefeed

import (
	"context"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
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
	fs := flag.NewFlagSet("livefeed", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if len(f.Usage) < 20 {
			t.Errorf("flag -%s has no real usage text: %q", f.Name, f.Usage)
		}
	})
	tokenFile := filepath.Join(t.TempDir(), "dev-token")
	if err := os.WriteFile(tokenFile, []byte("local-dev-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"-listen", "127.0.0.1:0", "-routers", "tcp://r0:5556,tcp://r1:5556",
		"-clients", "/etc/drover/clients.json", "-dev-token-file", tokenFile, "-dev", "-max-clients", "50",
		"-max-rate", "2.5", "-snapshot-max", "100", "-slow-backlog", "10", "-slow-timeout", "3s",
		"-auth-failures", "7", "-trusted-proxies", "10.0.0.0/8",
		"-cluster-key-file", "/etc/drover/cluster.key"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:0" || !slices.Equal(cfg.Routers, []string{"tcp://r0:5556", "tcp://r1:5556"}) ||
		cfg.Clients != "/etc/drover/clients.json" || cfg.DevToken != "local-dev-token" || !cfg.Dev || cfg.MaxClients != 50 ||
		cfg.MaxRate != 2.5 || cfg.SnapshotMax != 100 || cfg.SlowBacklog != 10 || cfg.SlowTimeout != 3*time.Second ||
		cfg.AuthLimit.Failures != 7 || !slices.Equal(cfg.TrustedProxies, []string{"10.0.0.0/8"}) ||
		cfg.Links.KeyFile != "/etc/drover/cluster.key" {
		t.Errorf("parsed %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"listen":           func(c *Config) { c.Listen = "" },
		"routers":          func(c *Config) { c.Routers = []string{"tcp://r0:5556", "tcp://r0:5556"} },
		"id":               func(c *Config) { c.ID = "a/b" },
		"dev-token":        func(c *Config) { c.DevToken = "short" },
		"max-clients":      func(c *Config) { c.MaxClients = 0 },
		"max-rate":         func(c *Config) { c.MaxRate = 0 },
		"snapshot-max":     func(c *Config) { c.SnapshotMax = -1 },
		"slow-backlog":     func(c *Config) { c.SlowBacklog = 0 },
		"slow-timeout":     func(c *Config) { c.SlowTimeout = 0 },
		"idle-timeout":     func(c *Config) { c.IdleTimeout = c.PingInterval },
		"vehicle-ttl":      func(c *Config) { c.VehicleTTL = -time.Second },
		"auth-window":      func(c *Config) { c.AuthLimit.Window = 0 },
		"trusted-proxies":  func(c *Config) { c.TrustedProxies = []string{"not-an-ip"} },
		"cluster-key-file": func(c *Config) { c.Links = clusterlink.Config{} },
	} {
		cfg := DefaultConfig()
		cfg.Links = testLinks
		mutate(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), name+":") {
			t.Errorf("%s: Validate() = %v, want an error naming %s", name, err, name)
		}
		if _, err := New(cfg, nil, nil); err == nil {
			t.Errorf("%s: New accepted an invalid config", name)
		}
	}
}

func TestRunTwice(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, nil, pub)
	if err := rf.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("second Run = %v, want an error", err)
	}
}

func TestRunFailsOnBadClientsFile(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Links = testLinks
	cfg.Clients = filepath.Join(t.TempDir(), "missing.json")
	f, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "clients") {
		t.Errorf("Run = %v, want a clients file error", err)
	}
	if f.Ready() == nil {
		t.Error("Ready() = nil for a livefeed that could not start")
	}
}
