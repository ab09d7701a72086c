package telemetry

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateFirmwareVersion(t *testing.T) {
	for _, v := range []string{"4.2.0", "4.2.0-rc1+build.7", "v2", "2024_11", strings.Repeat("9", MaxFirmwareVersionLen)} {
		if err := ValidateFirmwareVersion(v); err != nil {
			t.Errorf("%q: %v", v, err)
		}
	}
	for _, v := range []string{"", ".4", "-rc", "4.2 beta", "4.2\n", "ü", strings.Repeat("9", MaxFirmwareVersionLen+1)} {
		if err := ValidateFirmwareVersion(v); !errors.Is(err, ErrFirmwareVersion) {
			t.Errorf("%q: %v, want ErrFirmwareVersion", v, err)
		}
	}
}
