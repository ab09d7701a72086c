package storagewriter

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
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
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cfg.Routers, []string{"tcp://router-0:5557", "tcp://router-1:5557"}) ||
		cfg.Sink != SinkInflux || cfg.QueueDir != "/var/lib/drover/influx" || cfg.Name != "influx-eu" {
		t.Errorf("parsed %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"routers":        func(c *Config) { c.Routers = []string{} },
		"sink":           func(c *Config) { c.Sink = "postgres" },
		"queue-dir":      func(c *Config) { c.QueueDir = "" },
		"name":           func(c *Config) { c.Name = "has space" },
		"batch-records":  func(c *Config) { c.BatchRecords = 0 },
		"batch-interval": func(c *Config) { c.BatchInterval = 0 },
		"lake":           func(c *Config) { c.Lake.Dir = "" },
		"influx":         func(c *Config) { c.Sink = SinkInflux; c.Influx.URL = "" },
	} {
		cfg := DefaultConfig()
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
	w, err := New(DefaultConfig(), nil, nil)
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
