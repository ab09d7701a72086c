package api

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestFirmwareDocsCurlExamples runs every ```sh block of docs/firmware.md,
// in order, in one bash with set -euo pipefail, against a fresh server.
func TestFirmwareDocsCurlExamples(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq", "sha256sum"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found (CI=true: not skipping)", tool)
			}
			t.Skipf("SKIPPED: %s not found", tool)
		}
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	blocks := shellBlocks(t, filepath.Join(root, "docs", "firmware.md"))
	if len(blocks) < 3 {
		t.Fatalf("docs/firmware.md has %d sh blocks", len(blocks))
	}
	e := startEnv(t, backends[0])
	script := "set -euo pipefail\n" + strings.Join(blocks, "\n")
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "DROVER_API="+e.base, "DROVER_API_KEY="+e.adminKey)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the examples of docs/firmware.md failed: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	for _, want := range []string{"4.2.0 200000", "resumed download verified", "paused", "t1-0001 pending", "aborted", "409", "204"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
