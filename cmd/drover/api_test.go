package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/registry"
)

// TestAPIAndCtl: the real `drover api` process and `drover ctl` against
// it, as an operator would use them from a shell: the first start writes
// an admin key to a 0600 file; ctl adds, imports (a registry file),
// lists, suspends, rotates, exports and issues a live-client token; the
// key never appears on a command line or in the log.
func TestAPIAndCtl(t *testing.T) {
	dir := t.TempDir()
	addr, ops := freeAddr(t), freeAddr(t)
	cmd := exec.Command(drover, "api", "-listen", addr, "-data-dir", filepath.Join(dir, "api"), "-ops-listen", ops)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // a no-op once it has stopped
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get("http://" + ops + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("drover api not ready:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	keyFile := filepath.Join(dir, "api", "api-admin-key")
	st, err := os.Stat(keyFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("admin key file: %v %v", st, err)
	}
	key, _ := os.ReadFile(keyFile)
	env := []string{"DROVER_CTL_API=http://" + addr, "DROVER_API_KEY=" + strings.TrimSpace(string(key))}
	ctl := func(args ...string) result {
		t.Helper()
		r := runDrover(t, env, append([]string{"ctl"}, args...)...)
		if r.code != 0 {
			t.Fatalf("drover ctl %q: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
		}
		return r
	}

	if r := ctl("whoami"); !strings.Contains(r.stdout, "role admin") {
		t.Errorf("whoami: %s", r.stdout)
	}
	reg := filepath.Join(dir, "registry.json")
	if err := registry.Write(reg, []registry.Device{
		{ID: "truck-0001", TokenSHA256: registry.HashToken("s1"), Fleet: "acme", Class: "truck"},
		{ID: "truck-0002", TokenSHA256: registry.HashToken("s2"), Fleet: "acme", Class: "truck"},
	}); err != nil {
		t.Fatal(err)
	}
	ctl("import", "-create-missing", reg)
	if r := ctl("add", "van-01", "-fleet", "acme", "-token"); !strings.Contains(r.stdout, "token: ") {
		t.Errorf("add -token printed no token: %s", r.stdout)
	}
	ctl("suspend", "truck-0002", "-reason", "stolen")
	r := ctl("list", "-fleet", "acme")
	for _, want := range []string{"truck-0001", "truck-0002", "van-01", "suspended"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("list lacks %q:\n%s", want, r.stdout)
		}
	}
	r = ctl("rotate", "truck-0001", "-overlap", "10m")
	tok := strings.TrimPrefix(strings.SplitN(r.stdout, "\n", 2)[0], "token: ")
	if len(tok) < 40 || !strings.Contains(r.stdout, "previous token works until") {
		t.Errorf("rotate: %s", r.stdout)
	}
	out := filepath.Join(dir, "export.json")
	ctl("export", "-o", out)
	exported, err := registry.Load(out)
	if err != nil {
		t.Fatalf("the export does not load as a registry: %v", err)
	}
	// truck-0002 is suspended: not in the file; truck-0001 has its new token.
	if _, ok := exported.Lookup("truck-0002"); ok || exported.Len() != 2 {
		t.Errorf("export has %d devices, truck-0002 in it: %v", exported.Len(), ok)
	}
	if _, err := exported.Authenticate("truck-0001", tok); err != nil {
		t.Errorf("the rotated token does not authenticate against the export: %v", err)
	}
	if r := ctl("live-token", "-name", "dispatch", "-fleets", "acme", "-ttl", "24h"); !strings.Contains(r.stdout, "live token lt_") {
		t.Errorf("live-token: %s", r.stdout)
	}
	if r := ctl("list", "-json", "-state", "suspended"); strings.Count(r.stdout, "\n") != 1 {
		t.Errorf("list -json -state suspended: %s", r.stdout)
	} else {
		var d map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || d["state_reason"] != "stolen" {
			t.Errorf("list -json: %v %v", d, err)
		}
	}
	// A command to a device that is not connected: queued, and after its
	// wait still queued (exit 0); one that expires exits 1.
	if r := ctl("send", "van-01", "set_interval", "-param", "seconds=30", "-ttl", "10m", "-wait", "200ms"); !strings.Contains(r.stdout, ": queued") {
		t.Errorf("send: %s", r.stdout)
	}
	if r := runDrover(t, env, "ctl", "send", "van-01", "locate", "-ttl", "1s", "-wait", "5s"); r.code != 1 || !strings.Contains(r.stdout, ": expired") {
		t.Errorf("send of a command that expires: exit %d %s %s", r.code, r.stdout, r.stderr)
	}
	// Refusals exit 1 with the API's reason; a missing key is a usage error.
	if r := runDrover(t, env, "ctl", "add", "bad id"); r.code != 1 || !strings.Contains(r.stderr, "invalid") {
		t.Errorf("ctl add 'bad id': exit %d %s", r.code, r.stderr)
	}
	if r := runDrover(t, []string{"DROVER_CTL_API=http://" + addr, "DROVER_API_KEY="}, "ctl", "list"); r.code != 2 || !strings.Contains(r.stderr, "DROVER_API_KEY") {
		t.Errorf("ctl without a key: exit %d %s", r.code, r.stderr)
	}
	// Stop it, then read its log (written until it exits).
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("drover api after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("drover api did not stop within 20s of SIGTERM")
	}
	log := stderr.String()
	if strings.Contains(log, strings.TrimSpace(string(key))) {
		t.Error("the api logged its admin key")
	}
	if !strings.Contains(log, keyFile) || !strings.Contains(log, "msg=stopped target=api") {
		t.Errorf("the log names no key file, or no clean stop:\n%s", log)
	}
}
