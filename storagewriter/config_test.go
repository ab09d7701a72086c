package storagewriter

import (
	"flag"
	"io"
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
	fs := flag.NewFlagSet("storage-writer", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		if len(f.Usage) < 20 {
			t.Errorf("flag -%s has no real usage text: %q", f.Name, f.Usage)
		}
	})
	err := fs.Parse([]string{
		"-routers", "tcp://router-0:5557,tcp://router-1:5557",
		"-sink", "influx",
		"-queue-dir", "/var/lib/drover/influx",
		"-name", "influx-eu",
		"-insecure-links",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Routers, []string{"tcp://router-0:5557", "tcp://router-1:5557"}) ||
		cfg.Sink != SinkInflux || cfg.QueueDir != "/var/lib/drover/influx" || cfg.Name != "influx-eu" || !cfg.Links.Insecure {
		t.Errorf("parsed %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"routers":          func(c *Config) { c.Routers = []string{} },
		"sink":             func(c *Config) { c.Sink = "postgres" },
		"queue-dir":        func(c *Config) { c.QueueDir = "" },
		"name":             func(c *Config) { c.Name = "has space" },
		"batch-records":    func(c *Config) { c.BatchRecords = 0 },
		"batch-interval":   func(c *Config) { c.BatchInterval = 0 },
		"lake":             func(c *Config) { c.Lake.Dir = "" },
		"influx":           func(c *Config) { c.Sink = SinkInflux; c.Influx.URL = "" },
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

func TestNameDefaultsToSink(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Links = testLinks
	cfg.Sink = SinkInflux
	w, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Name() != "influx" {
		t.Errorf("Name() = %q, want the sink's name", w.Name())
	}
	cfg.Name = "influx-2"
	if w, _ = New(cfg, nil, nil); w.Name() != "influx-2" {
		t.Errorf("Name() = %q, want the configured name", w.Name())
	}
}

func TestReadyBeforeRun(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Links = testLinks
	w, err := New(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if w.Ready() == nil {
		t.Error("Ready() = nil for a writer that does not run")
	}
}

func TestSinkFlagsRegistered(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("storage-writer", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{
		"-sink", "influx", "-influx-url", "http://influx:8086", "-influx-database", "fleet",
		"-lake-dir", "/lake", "-batch-records", "100", "-batch-interval", "250ms",
		"-queue-max-bytes", "1048576", "-dead-letter-dir", "/dl",
		"-cluster-key-file", "/etc/drover/cluster.key",
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Influx.URL != "http://influx:8086" || cfg.Influx.Database != "fleet" || cfg.Lake.Dir != "/lake" ||
		cfg.BatchRecords != 100 || cfg.BatchInterval != 250*time.Millisecond || cfg.QueueMaxBytes != 1<<20 ||
		cfg.DeadLetterDir != "/dl" {
		t.Errorf("parsed %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}
