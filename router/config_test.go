package router

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/registry"
)

// TestDefaults: a router binds loopback unless told otherwise, serves only
// the listed durable subscribers, and does not start without a choice about
// its links: a cluster key, or -insecure-links said out loud.
func TestDefaults(t *testing.T) {
	cfg := DefaultConfig()
	for _, ep := range []string{cfg.Listen, cfg.LivePub, cfg.StoreListen} {
		if !strings.HasPrefix(ep, "tcp://127.0.0.1:") {
			t.Errorf("default endpoint %s is not on loopback", ep)
		}
	}
	if !cfg.FixedSubscribers {
		t.Error("FixedSubscribers is off by default")
	}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "cluster-key-file: required") {
		t.Errorf("DefaultConfig without links: Validate() = %v, want cluster-key-file required", err)
	}
	cfg.Links.KeyFile = "/etc/drover/cluster.key"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("DefaultConfig with a key file: Validate() = %v", err)
	}
	cfg.Links = clusterlink.Config{Insecure: true}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("DefaultConfig with -insecure-links: Validate() = %v", err)
	}
	// Both queue bounds default to a share of the volume (queue.Options).
	if cfg.QueueMaxBytes != 0 || cfg.SubscriberQueueMaxBytes != 0 {
		t.Errorf("default queue bounds %d and %d, want 0 (sized from the volume)", cfg.QueueMaxBytes, cfg.SubscriberQueueMaxBytes)
	}
}

func TestRegisterFlags(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("router", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if len(f.Usage) < 20 {
			t.Errorf("flag -%s has no real usage text: %q", f.Name, f.Usage)
		}
	})
	err := fs.Parse([]string{
		"-listen", "tcp://127.0.0.1:0",
		"-live-pub", "tcp://127.0.0.1:6001",
		"-store-listen", "ipc:///run/drover/store.sock",
		"-queue-dir", "/var/lib/drover/router",
		"-id", "router-1",
		"-queue-max-bytes", "1048576",
		"-max-pending-batches", "64",
		"-max-batch-bytes", "65536",
		"-dedup-intervals", "100",
		"-registry", "/etc/drover/devices.json",
		"-subscribers", "lake, influx",
		"-subscriber-retention", "2h",
		"-subscriber-queue-max-bytes", "1048576",
		"-live-buffer", "8",
		"-live-buffer-bytes", "1048576",
		"-fixed-subscribers=false",
		"-cluster-key-file", "/etc/drover/cluster.key",
		"-registry-cache", "/var/cache/drover/registry.cache",
	})
	if err != nil {
		t.Fatal(err)
	}
	follow := registry.DefaultFollowConfig()
	follow.Cache = "/var/cache/drover/registry.cache"
	want := Config{
		Listen:      "tcp://127.0.0.1:0",
		LivePub:     "tcp://127.0.0.1:6001",
		StoreListen: "ipc:///run/drover/store.sock",
		QueueDir:    "/var/lib/drover/router",
		ID:          "router-1",

		QueueMaxBytes:     1 << 20,
		MaxPendingBatches: 64,
		MaxBatchBytes:     64 << 10,
		DedupIntervals:    100,

		Registry:                "/etc/drover/devices.json",
		Subscribers:             []string{"lake", "influx"},
		SubscriberRetention:     2 * time.Hour,
		SubscriberQueueMaxBytes: 1 << 20,
		LiveBuffer:              8,
		LiveBufferBytes:         1 << 20,
		Links:                   clusterlink.Config{KeyFile: "/etc/drover/cluster.key"},
		Follow:                  follow,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("parsed %+v, want %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"listen":                     func(c *Config) { c.Listen = "127.0.0.1:5555" },
		"live-pub":                   func(c *Config) { c.LivePub = "udp://*:5556" },
		"store-listen":               func(c *Config) { c.StoreListen = "" },
		"store-listen equal":         func(c *Config) { c.StoreListen = c.LivePub },
		"subscribers name":           func(c *Config) { c.Subscribers = []string{"Lake"} },
		"subscribers twice":          func(c *Config) { c.Subscribers = []string{"lake", "lake"} },
		"subscriber-retention":       func(c *Config) { c.SubscriberRetention = 0 },
		"subscriber-queue-max-bytes": func(c *Config) { c.SubscriberQueueMaxBytes = 1000 },
		"live-buffer":                func(c *Config) { c.LiveBuffer = 0 },
		"queue-dir":                  func(c *Config) { c.QueueDir = "" },
		"id":                         func(c *Config) { c.ID = "router/1" },
		"max-pending-batches":        func(c *Config) { c.MaxPendingBatches = 0 },
		"max-batch-bytes":            func(c *Config) { c.MaxBatchBytes = -1 },
		"dedup-intervals":            func(c *Config) { c.DedupIntervals = 0 },
		"live-buffer-bytes":          func(c *Config) { c.LiveBufferBytes = 1000 },
		"cluster-key-file":           func(c *Config) { c.Links = clusterlink.Config{} },
		"insecure-links":             func(c *Config) { c.Links.KeyFile = "/etc/drover/cluster.key" },
		"fixed-subscribers":          func(c *Config) { c.FixedSubscribers = false },
	} {
		cfg := DefaultConfig()
		cfg.Links.Insecure = true
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

func TestReadyBeforeRun(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Links.Insecure = true
	r, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ready() == nil {
		t.Error("Ready() = nil for a router that does not run")
	}
	if r.Addr() != "" {
		t.Errorf("Addr() = %q before Run", r.Addr())
	}
}
