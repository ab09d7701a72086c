package api

import (
	"strings"
	"testing"
)

// TestFirmwareDocsCurlExamples runs every ```sh block of docs/firmware.md,
// in order, in one bash with set -euo pipefail, against a fresh server.
func TestFirmwareDocsCurlExamples(t *testing.T) {
	_, out := runDocExamples(t, "firmware.md", 3)
	for _, want := range []string{"4.2.0 200000", "resumed download verified", "paused", "t1-0001 pending", "aborted", "409", "204"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
