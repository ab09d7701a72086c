package livefeed

import (
	"context"
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
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
	if err := fs.Parse([]string{"-listen", "127.0.0.1:0", "-routers", "tcp://r0:5556,tcp://r1:5556"}); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:0" || !slices.Equal(cfg.Routers, []string{"tcp://r0:5556", "tcp://r1:5556"}) {
		t.Errorf("parsed %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
}

func TestValidateRejects(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"listen":  func(c *Config) { c.Listen = "" },
		"routers": func(c *Config) { c.Routers = []string{"tcp://r0:5556", "tcp://r0:5556"} },
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

func TestRunNotYetBuilt(t *testing.T) {
	f, err := New(DefaultConfig(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "not yet built") {
		t.Errorf("Run = %v, want the not-yet-built error", err)
	}
	if f.Ready() == nil {
		t.Error("Ready() = nil for a livefeed that does not run")
	}
}
