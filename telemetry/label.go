package telemetry

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxLabelLen is the longest label (fleet, vehicle class, region), in bytes.
const MaxLabelLen = 128

// ErrLabel is wrapped by every error of ValidateLabel.
var ErrLabel = errors.New("invalid label")

// ValidateLabel is the one definition of a label the registry attaches to a
// device and the router to each of its readings (fleet, vehicle class,
// region): empty (no label), or at most MaxLabelLen bytes of UTF-8 without
// control characters or backslashes.
//
// Labels become InfluxDB tag values and lake strings. A tag value carries
// spaces, commas and '=' escaped, but cannot end in a backslash or carry a
// line break; a label that a sink had to change could merge two fleets into
// one series, so such a label is refused where it enters (the registry)
// rather than changed where it is stored. The length keeps an InfluxDB
// series key (measurement and every tag) far below its 65,535 bytes.
func ValidateLabel(s string) error {
	switch {
	case len(s) > MaxLabelLen:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrLabel, len(s), MaxLabelLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: not valid UTF-8", ErrLabel)
	case hasControl(s):
		return fmt.Errorf("%w: %q has a control character", ErrLabel, s)
	case strings.IndexByte(s, '\\') >= 0:
		return fmt.Errorf("%w: %q has a backslash", ErrLabel, s)
	}
	return nil
}
