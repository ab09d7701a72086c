package telemetry

import (
	"errors"
	"fmt"
)

// ErrFirmwareVersion is the error of a firmware version outside the rule.
var ErrFirmwareVersion = errors.New("bad firmware version")

// MaxFirmwareVersionLen is the longest firmware version, in bytes.
const MaxFirmwareVersionLen = 64

// HeaderFirmware is the request header (and QueryFirmware the query
// parameter, for clients that cannot set headers) in which a device names
// the firmware version it runs when it opens its WebSocket. Optional:
// devices that do not name one connect as before.
const (
	HeaderFirmware = "X-Drover-Firmware"
	QueryFirmware  = "firmware"
)

// ValidateFirmwareVersion checks a firmware version against the rule the
// control plane gives images: 1 to 64 bytes of A-Z a-z 0-9 _ . + -, not
// starting with _ . + - ("4.2.0", "4.2.0-rc1+build.7").
func ValidateFirmwareVersion(v string) error {
	if v == "" || len(v) > MaxFirmwareVersionLen {
		return fmt.Errorf("%w: %d bytes, want 1 to %d", ErrFirmwareVersion, len(v), MaxFirmwareVersionLen)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case (c == '.' || c == '_' || c == '-' || c == '+') && i > 0:
		default:
			return fmt.Errorf("%w: byte %d (%q): want A-Z a-z 0-9 and, after the first, _ . + -", ErrFirmwareVersion, i, c)
		}
	}
	return nil
}
