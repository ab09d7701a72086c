package api

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestDocsCurlExamples runs every ```sh block of docs/api.md, in order, in
// one bash with set -euo pipefail, against a fresh server: the examples an
// operator copies are examples that work.
func TestDocsCurlExamples(t *testing.T) {
	e, out := runDocExamples(t, "api.md", 10)
	// What the walk-through did is there.
	var d Device
	e.must(200, req{method: "GET", path: "/v1/devices/van-002", key: e.adminKey}, &d)
	if d.Labels["depot"] != "pta" {
		t.Errorf("van-002 after the examples: %+v", d)
	}
	for _, want := range []string{`"invalid_id"`, `"unknown_fleet"`, "import_refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("the bad import example's output lacks %s", want)
		}
	}
}

// runDocExamples runs every ```sh block of docs/<doc>, in order, in one
// bash with set -euo pipefail, against a fresh server (SQLite) whose URL
// and admin key are $DROVER_API and $DROVER_API_KEY; each block's output
// starts with a line ">>> block N" (on stderr). It fails the test when the
// doc has fewer than minBlocks blocks (a walk-through cut short) or when
// the script fails, and returns the server and the combined output. The
// tools the docs use (bash, curl, jq, sha256sum) are required under
// CI=true.
func runDocExamples(t *testing.T, doc string, minBlocks int) (*env, string) {
	t.Helper()
	for _, tool := range []string{"bash", "curl", "jq", "sha256sum"} {
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
	blocks := shellBlocks(t, filepath.Join(root, "docs", doc))
	if len(blocks) < minBlocks {
		t.Fatalf("docs/%s has %d sh blocks; the walk-through has at least %d", doc, len(blocks), minBlocks)
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
		t.Fatalf("the examples of docs/%s failed: %v\n%s", doc, err, out)
	}
	t.Logf("%s", out)
	return e, string(out)
}

// shellBlocks returns the bodies of the ```sh fenced blocks of a markdown
// file.
func shellBlocks(t *testing.T, path string) []string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	var cur *strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(line) == "```sh":
			cur = &strings.Builder{}
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	return blocks
}
