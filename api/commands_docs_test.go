package api

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestCommandDocsCurlExamples runs every ```sh block of docs/commands.md,
// in order, in one bash with set -euo pipefail, against a fresh server.
func TestCommandDocsCurlExamples(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found (CI=true: not skipping): it is in the Debian image; apt-get install %s", tool, tool)
			}
			t.Skipf("SKIPPED: %s not found", tool)
		}
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	blocks := shellBlocks(t, filepath.Join(root, "docs", "commands.md"))
	if len(blocks) < 6 {
		t.Fatalf("docs/commands.md has %d sh blocks, want the whole walk-through", len(blocks))
	}
	e := startEnv(t, backends[0])
	script := "set -euo pipefail\n"
	for i, b := range blocks {
		script += "echo '>>> block " + itoa(i+1) + "' >&2\n" + b + "\n"
	}
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "DROVER_API="+e.base, "DROVER_API_KEY="+e.adminKey)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the examples of docs/commands.md failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	var lines []string // the examples' output, without the block markers
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if !strings.HasPrefix(l, ">>> ") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	// What the walk-through says it shows: the wait answers queued (the
	// device is offline), the cancel answers cancelled, the retried
	// request made one command.
	for _, want := range []string{"queued", "cancelled"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The idempotent retry's count, then the event stream's one state.
	if n := len(lines); n < 2 || lines[n-2] != "1" || lines[n-1] != "queued" {
		t.Errorf("the last outputs are %q, want the retry's 1 command and the event stream's queued", lines[max(0, n-2):])
	}
	var page listResponse[Command]
	e.must(200, req{method: "GET", path: "/v1/devices/truck-042/commands", key: e.adminKey}, &page)
	if len(page.Items) != 4 {
		t.Errorf("%d commands after the walk-through, want 4", len(page.Items))
	}
}
