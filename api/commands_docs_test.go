package api

import (
	"strings"
	"testing"
)

// TestCommandDocsCurlExamples runs every ```sh block of docs/commands.md,
// in order, in one bash with set -euo pipefail, against a fresh server.
func TestCommandDocsCurlExamples(t *testing.T) {
	e, out := runDocExamples(t, "commands.md", 6)
	var lines []string // the examples' output, without the block markers
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasPrefix(l, ">>> ") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	// What the walk-through says it shows: the wait answers queued (the
	// device is offline), the cancel answers cancelled, the retried
	// request made one command.
	for _, want := range []string{"queued", "cancelled"} {
		if !strings.Contains(out, want) {
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
