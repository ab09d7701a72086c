package router

import (
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigIsValid(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
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
	})
	if err != nil {
		t.Fatal(err)
	}
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
	} {
		cfg := DefaultConfig()
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
	r, err := New(DefaultConfig(), nil, nil)
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
