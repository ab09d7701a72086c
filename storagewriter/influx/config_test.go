package influx

import (
	"flag"
	"io"
	"os"
	"path/filepath"
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
	cfg.RegisterFlags(fs, "influx-")
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.HasPrefix(f.Name, "influx-") || len(f.Usage) < 20 {
			t.Errorf("flag -%s: want the prefix and a real usage text (%q)", f.Name, f.Usage)
		}
	})
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("writer:secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := fs.Parse([]string{
		"-influx-url", "https://influx.example:8086",
		"-influx-database", "fleet",
		"-influx-retention-policy", "one_year",
		"-influx-token-file", tokenFile,
		"-influx-measurement", "readings",
		"-influx-timeout", "5s",
		"-influx-gzip",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{URL: "https://influx.example:8086", Database: "fleet", RetentionPolicy: "one_year",
		Token: "writer:secret", Measurement: "readings", Timeout: 5 * time.Second, GZip: true}
	if cfg != want {
		t.Errorf("parsed %+v, want %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
	if cfg.bucket() != "fleet/one_year" {
		t.Errorf("bucket = %q", cfg.bucket())
	}
}

// Credentials in the URL would be on the command line and in logs: refused,
// and the error does not repeat the password.
func TestValidateRefusesCredentialsInURL(t *testing.T) {
	cfg := DefaultConfig()
	cfg.URL = "http://writer:pa55word@localhost:8086"
	err := cfg.Validate()
	if err == nil || !strings.Contains(err.Error(), "credentials in the URL") || strings.Contains(err.Error(), "pa55word") {
		t.Fatalf("Validate = %v, want a refusal without the password", err)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := Config{URL: "localhost:8086", Database: "a/b", RetentionPolicy: "x/y", Measurement: "", Timeout: 0}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("Validate = nil")
	}
	for _, want := range []string{"url", "database", "retention-policy", "measurement", "timeout"} {
		if !strings.Contains(err.Error(), want+":") {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if _, err := New(cfg, nil, nil); err == nil {
		t.Error("New accepted an invalid config")
	}
}

func TestOneSinkPerRegistry(t *testing.T) {
	_, reg := newTestSink(t, "http://127.0.0.1:1", "drover")
	if _, err := New(DefaultConfig(), nil, reg); err == nil || !strings.Contains(err.Error(), "register") {
		t.Errorf("second sink on one registry: %v, want a registration error", err)
	}
}
