package ctl

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestInterleave: flags may follow the positional argument, as operators
// type them (drover ctl add truck-1 -fleet acme -token).
func TestInterleave(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.String("fleet", "", "")
	fs.Bool("token", false, "")
	got := interleave(fs, []string{"truck-1", "-fleet", "acme", "-token", "--", "-odd-id"})
	want := []string{"-fleet", "acme", "-token", "truck-1", "-odd-id"}
	if !slices.Equal(got, want) {
		t.Errorf("interleave = %q, want %q", got, want)
	}
	if err := fs.Parse(got[:len(got)-2]); err != nil {
		t.Fatal(err)
	}
}

// TestKeySources: the key comes from -key-file or $DROVER_API_KEY, and
// nowhere else; without either, a clear usage error.
func TestKeySources(t *testing.T) {
	t.Setenv(KeyEnv, "")
	if _, err := loadKey(""); err == nil || !strings.Contains(err.Error(), KeyEnv) {
		t.Errorf("no key: %v", err)
	}
	t.Setenv(KeyEnv, " drv_key_a_secret \n")
	if k, _ := loadKey(""); k != "drv_key_a_secret" {
		t.Errorf("from env: %q", k)
	}
	f := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(f, []byte("drv_key_b_secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if k, _ := loadKey(f); k != "drv_key_b_secret" {
		t.Errorf("from file (over env): %q", k)
	}
	var out, errb strings.Builder
	if code := Main([]string{"-h"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "live-token") {
		t.Errorf("ctl -h: %d %q", code, out.String())
	}
	if code := Main([]string{"rotate"}, &out, &errb); code != 2 {
		t.Errorf("rotate without an id: exit %d", code)
	}
}
