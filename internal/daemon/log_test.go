package daemon

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"strings"
	"testing"
)

func TestLogConfigFlagsAndLevels(t *testing.T) {
	var c LogConfig
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	if err := fs.Parse([]string{"-log-level", "warn", "-log-format", "json"}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	logger, err := c.NewLogger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("hidden")
	logger.Warn("shown", "queue", "q1", "depth", 3)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("want one line at warn level, got %d: %q", len(lines), buf.String())
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatalf("not JSON: %v: %q", err, lines[0])
	}
	if rec["msg"] != "shown" || rec["level"] != "WARN" || rec["queue"] != "q1" || rec["depth"] != float64(3) {
		t.Errorf("unexpected record %v", rec)
	}
}

func TestLogConfigTextDefault(t *testing.T) {
	c := DefaultLogConfig()
	var buf bytes.Buffer
	logger, err := c.NewLogger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	logger.Debug("hidden")
	logger.Info("started", "addr", ":8080")
	if got := buf.String(); !strings.Contains(got, "level=INFO msg=started addr=:8080") || strings.Contains(got, "hidden") {
		t.Errorf("unexpected text log %q", got)
	}
}

func TestLogConfigRejectsUnknown(t *testing.T) {
	for _, c := range []LogConfig{{Level: "verbose", Format: "text"}, {Level: "info", Format: "xml"}} {
		if _, err := c.NewLogger(io.Discard); err == nil {
			t.Errorf("NewLogger accepted %+v", c)
		}
	}
}
