package telemetry

import (
	"errors"
	"fmt"
)

// MaxDeviceIDLen is the longest device id, in bytes.
const MaxDeviceIDLen = 128

// ErrDeviceID is wrapped by every error of ValidateDeviceID.
var ErrDeviceID = errors.New("invalid device id")

// ValidateDeviceID is the one definition of a device id, used by the
// registry, the control plane and the frontend: 1 to MaxDeviceIDLen bytes
// of ASCII letters, digits and the four marks . _ - :, starting with a
// letter or a digit.
//
// The alphabet is chosen so that an id is stored unchanged, and therefore
// distinct, in every sink: an InfluxDB tag value may not end in a
// backslash and needs escapes for space, comma and '='; file names and URL
// paths treat '/' specially; lake rows, JSON and Prometheus labels take the
// rest as they are. IMEIs, VINs, serial numbers and MAC addresses (with ':'
// or '-') all fit. Ids are case-sensitive ("Truck-1" and "truck-1" are two
// devices).
func ValidateDeviceID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrDeviceID)
	}
	if len(id) > MaxDeviceIDLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrDeviceID, len(id), MaxDeviceIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case (c == '.' || c == '_' || c == '-' || c == ':') && i > 0:
		case i == 0 && (c == '.' || c == '_' || c == '-' || c == ':'):
			return fmt.Errorf("%w: must start with a letter or a digit", ErrDeviceID)
		default:
			return fmt.Errorf("%w: byte %d (%q) is not one of A-Z a-z 0-9 . _ - :", ErrDeviceID, i, c)
		}
	}
	return nil
}
