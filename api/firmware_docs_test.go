package api

import (
	"strings"
	"testing"
)

// TestFirmwareDocsCurlExamples runs every ```sh block of docs/firmware.md,
// in order, in one bash with set -euo pipefail, against a fresh server.
func TestFirmwareDocsCurlExamples(t *testing.T) {
	_, out := runDocExamples(t, "firmware.md", 3)
	for _, want := range []string{"4.2.0 200000", "resumed download verified", "paused", "aborted", "409", "204"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The campaign's first tick (each -command-poll) may offer the image
	// before the example pauses it: either answer is the right one.
	if !strings.Contains(out, "t1-0001 pending") && !strings.Contains(out, "t1-0001 offered") {
		t.Errorf("output lacks the campaign's device, pending or offered")
	}
}
