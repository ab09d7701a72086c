package sim

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/registry"
)

// The simulator's registry file, its configuration's checks and Retry-After parsing.

func TestRegistry(t *testing.T) {
	if got := DeviceID("dev-", 42); got != "dev-000042" {
		t.Errorf("DeviceID: %q", got)
	}
	if got := DeviceID("t", 1234567); got != "t1234567" {
		t.Errorf("DeviceID: %q", got)
	}
	tok := Token("seed", "dev-000001")
	if len(tok) != 32 || strings.Trim(tok, "0123456789abcdef") != "" || tok != Token("seed", "dev-000001") ||
		tok == Token("seed2", "dev-000001") || tok == Token("seed", "dev-000002") {
		t.Errorf("Token: %q", tok)
	}
	cfg := Config{URLs: []string{"ws://x:1"}, Devices: 7, DeviceOffset: 10, TokenSeed: "s"}
	path := filepath.Join(t.TempDir(), "devices.json")
	if err := WriteRegistry(path, cfg); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if reg.Len() != 7 {
		t.Fatalf("registry has %d devices", reg.Len())
	}
	classSeen := map[string]bool{}
	for i := 10; i < 17; i++ {
		id := DeviceID("dev-", i)
		d, err := reg.Authenticate(id, Token("s", id))
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if d.Fleet == "" || d.Region == "" || d.Class == "" {
			t.Errorf("%s: %+v", id, d)
		}
		classSeen[d.Class] = true
	}
	if len(classSeen) != 3 {
		t.Errorf("classes: %v", classSeen)
	}
	if _, err := reg.Authenticate("dev-000009", Token("s", "dev-000009")); err == nil {
		t.Error("device before the offset registered")
	}
	// A prefix that makes ids the registry would refuse writes nothing.
	bad := filepath.Join(t.TempDir(), "bad.json")
	cfg.IDPrefix = `tail\`
	if err := WriteRegistry(bad, cfg); err == nil || !strings.Contains(err.Error(), "invalid device id") {
		t.Errorf("WriteRegistry with prefix %q: %v, want an invalid device id error", cfg.IDPrefix, err)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("a registry was written anyway (%v)", err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{URLs: []string{"ws://127.0.0.1:8080"}, Devices: 1}
	if err := good.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for name, mut := range map[string]func(*Config){
		"no urls":        func(c *Config) { c.URLs = nil },
		"http url":       func(c *Config) { c.URLs = []string{"http://x:1"} },
		"no devices":     func(c *Config) { c.Devices = 0 },
		"negative rate":  func(c *Config) { c.Rate = -1 },
		"big frames":     func(c *Config) { c.FrameReadings = 1001 },
		"idle readings":  func(c *Config) { c.Rate, c.Readings = 0, 5 },
		"backoff order":  func(c *Config) { c.BackoffMin, c.BackoffMax = time.Second, time.Millisecond },
		"bad local addr": func(c *Config) { c.LocalAddrs = []string{"localhost"} },
		"nan event rate": func(c *Config) { c.EventRate = math.NaN() },
		"neg stampede":   func(c *Config) { c.StampedeEvery = -time.Second },
		"space in id":    func(c *Config) { c.IDPrefix = "dev " },
		"dash first":     func(c *Config) { c.IDPrefix = "-dev" },
		"id too long":    func(c *Config) { c.IDPrefix = strings.Repeat("d", 122) + "-" },
	} {
		c := good
		c.Rate = 1
		mut(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "sim config: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if u, _ := ingestURL("ws://h:1"); u != "ws://h:1/v1/ingest" {
		t.Errorf("ingestURL: %s", u)
	}
	if u, _ := ingestURL("wss://h:1/custom"); u != "wss://h:1/custom" {
		t.Errorf("ingestURL: %s", u)
	}
	if d := (Config{Rate: 2}).withDefaults().Outbox; d != 7200 {
		t.Errorf("default outbox at 2/s: %d", d)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 11, 23, 12, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"": 0, "5": 5 * time.Second, "x": 0, "-1": 0,
		"Sun, 23 Nov 2025 12:00:30 GMT": 30 * time.Second, "Sun, 23 Nov 2025 11:00:00 GMT": 0,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", v, got, want)
		}
	}
}
