package telemetry

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateDeviceID(t *testing.T) {
	good := []string{"truck-0001", "356938035643809", "1HGCM82633A004352", "00:1A:2B:3C:4D:5E",
		"fleet.a_b-c", "x", strings.Repeat("a", MaxDeviceIDLen)}
	for _, id := range good {
		if err := ValidateDeviceID(id); err != nil {
			t.Errorf("ValidateDeviceID(%q) = %v, want nil", id, err)
		}
	}
	// Each of these would be changed, escaped or merged with another id by
	// some sink (a trailing backslash in an InfluxDB tag, a space, a comma,
	// '=', '/', a quote, non-ASCII), or is empty or too long.
	bad := []string{"", "tail\\", "tail_\\", "a b", "a,b", "a=b", "a/b", "a\"b", "truck\n", "trück",
		"-lead", "_lead", ".lead", ":lead", strings.Repeat("a", MaxDeviceIDLen+1), "a\x00b"}
	for _, id := range bad {
		err := ValidateDeviceID(id)
		if err == nil {
			t.Errorf("ValidateDeviceID(%q) = nil, want an error", id)
			continue
		}
		if !errors.Is(err, ErrDeviceID) {
			t.Errorf("ValidateDeviceID(%q) = %v, want it to wrap ErrDeviceID", id, err)
		}
	}
}
