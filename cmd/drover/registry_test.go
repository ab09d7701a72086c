package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/drover-telemetry/drover/internal/registry"
)

// TestRegistryAdd: drover registry add creates the file, prints a fresh
// token once (on standard output only) that then authenticates the device,
// keeps the entries already there (refused ones too), and refuses an id
// twice, a bad id and a bad label with the rule.
func TestRegistryAdd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "devices.json")
	r := runDrover(t, nil, "registry", "add", "-file", path, "-id", "truck-0001", "-fleet", "Acme Haulage, JHB", "-region", "gauteng")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	token := strings.TrimSpace(r.stdout)
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(token) {
		t.Fatalf("stdout %q, want the token alone: 64 hex characters", r.stdout)
	}
	if strings.Contains(r.stderr, token) {
		t.Errorf("the token is on standard error too: %s", r.stderr)
	}
	if b, _ := os.ReadFile(path); strings.Contains(string(b), token) {
		t.Errorf("the file holds the token itself")
	}
	reg, err := registry.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := reg.Authenticate("truck-0001", token)
	if err != nil || d.Fleet != "Acme Haulage, JHB" || d.Region != "gauteng" {
		t.Fatalf("Authenticate with the printed token: %+v, %v", d, err)
	}

	// A second device through the environment; a fresh token each time.
	r = runDrover(t, []string{"DROVER_REGISTRY_FILE=" + path}, "registry", "add", "-id", "truck-0002")
	if r.code != 0 || strings.TrimSpace(r.stdout) == token {
		t.Fatalf("second add: exit %d, token %q: %s", r.code, r.stdout, r.stderr)
	}

	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-id", "truck-0001"}, 1, `device "truck-0001" is already in`},
		{[]string{"-id", `tail\`}, 2, `invalid device id: byte 4 ('\\') is not one of A-Z a-z 0-9 . _ - :`},
		{[]string{"-id", "a b"}, 2, "invalid device id"},
		{[]string{"-id", "ok-1", "-class", "bus\\"}, 2, `class: invalid label: "bus\\" has a backslash`},
		{[]string{}, 2, "-file and -id are required"},
	} {
		r := runDrover(t, nil, append([]string{"registry", "add", "-file", path}, c.args...)...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) || r.stdout != "" {
			t.Errorf("add %q: exit %d, stdout %q, stderr %q; want exit %d saying %q", c.args, r.code, r.stdout, r.stderr, c.code, c.want)
		}
	}
	if devs, err := registry.ReadFile(path); err != nil || len(devs) != 2 {
		t.Errorf("after the refused adds the file holds %v (%v), want the 2 devices", devs, err)
	}

	// A file with an entry the registry refuses keeps it: add edits, check reports.
	old := filepath.Join(t.TempDir(), "old.json")
	if err := registry.Write(old, []registry.Device{{ID: "trück", TokenSHA256: registry.HashToken("x")}}); err != nil {
		t.Fatal(err)
	}
	if r := runDrover(t, nil, "registry", "add", "-file", old, "-id", "truck-9"); r.code != 0 {
		t.Fatalf("add to a file with a refused entry: exit %d: %s", r.code, r.stderr)
	}
	if devs, _ := registry.ReadFile(old); len(devs) != 2 || devs[0].ID != "trück" {
		t.Errorf("entries %v, want the refused one kept and the new one added", devs)
	}
}

// TestRegistryCheck: drover registry check lists each refused entry with
// its position, id and rule, and says so in its exit status.
func TestRegistryCheck(t *testing.T) {
	dir := t.TempDir()
	good, bad, broken := filepath.Join(dir, "good.json"), filepath.Join(dir, "bad.json"), filepath.Join(dir, "broken.json")
	h := registry.HashToken("x")
	if err := registry.Write(good, []registry.Device{{ID: "a", TokenSHA256: h}}); err != nil {
		t.Fatal(err)
	}
	if err := registry.Write(bad, []registry.Device{{ID: "a", TokenSHA256: h}, {ID: "truck 7", TokenSHA256: h}, {ID: `tail\`, TokenSHA256: h}}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(broken, []byte(`{"devices": [`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runDrover(t, nil, "registry", "check", "-file", good)
	if r.code != 0 || !strings.Contains(r.stdout, "1 devices served, 0 entries refused") {
		t.Errorf("good file: exit %d, stdout %q", r.code, r.stdout)
	}
	r = runDrover(t, nil, "registry", "check", "-file", bad)
	for _, want := range []string{
		`device 1 "truck 7": invalid device id: byte 5 (' ') is not one of A-Z a-z 0-9 . _ - :`,
		`device 2 "tail\\": invalid device id: byte 4 ('\\')`,
		"1 devices served, 2 entries refused",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("bad file: stdout %q, want %q", r.stdout, want)
		}
	}
	if r.code != 1 {
		t.Errorf("bad file: exit %d, want 1", r.code)
	}
	if r = runDrover(t, nil, "registry", "check", "-file", broken); r.code != 1 || !strings.Contains(r.stderr, "parse registry") {
		t.Errorf("broken file: exit %d, stderr %q", r.code, r.stderr)
	}
	// drover -h lists the command, and drover registry -h its two commands.
	if r = runDrover(t, nil, "-h"); !strings.Contains(r.stdout, "registry") {
		t.Errorf("drover -h does not list registry:\n%s", r.stdout)
	}
	if r = runDrover(t, nil, "registry", "-h"); r.code != 0 || !strings.Contains(r.stdout, "add ") || !strings.Contains(r.stdout, "check ") {
		t.Errorf("drover registry -h: exit %d:\n%s", r.code, r.stdout)
	}
	if r = runDrover(t, nil, "registry", "nope"); r.code != 2 {
		t.Errorf("unknown registry command: exit %d", r.code)
	}
}
