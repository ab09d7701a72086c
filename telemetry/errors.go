package telemetry

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxCloseReasonBytes is the longest reason a WebSocket close frame can carry: a control frame's
// payload is at most 125 bytes, two of which are the status code (RFC 6455, section 5.5).
const MaxCloseReasonBytes = 123

// FrameErrorKind classifies a FrameError. Its String form is a short, fixed label suitable for a
// metric label (the Reason itself is unbounded in variety and must not be one).
type FrameErrorKind uint8

// The kinds of FrameError.
const (
	// KindMalformed: the frame does not decode (bad protobuf or JSON, unknown field).
	KindMalformed FrameErrorKind = iota + 1
	// KindTooLarge: the frame exceeds Limits.MaxFrameBytes.
	KindTooLarge
	// KindEmpty: the frame has no reading.
	KindEmpty
	// KindTooManyReadings: the frame has more than Limits.MaxReadingsPerFrame readings.
	KindTooManyReadings
	// KindSequence: a seq is 0, or seqs do not strictly increase within the frame.
	KindSequence
	// KindTime: time_ms is missing, too far ahead of the server clock, or too old.
	KindTime
	// KindRange: a value is NaN, infinite or outside its physical range, or a position is half
	// given.
	KindRange
	// KindExtra: the extra map breaks a limit (count, key length, key characters).
	KindExtra
	// KindReport: a command report breaks a rule (id, status, message or payload size, count).
	KindReport
)

// String returns the kind's metric label, e.g. "too_large".
func (k FrameErrorKind) String() string {
	switch k {
	case KindMalformed:
		return "malformed"
	case KindTooLarge:
		return "too_large"
	case KindEmpty:
		return "empty"
	case KindTooManyReadings:
		return "too_many_readings"
	case KindSequence:
		return "sequence"
	case KindTime:
		return "time"
	case KindRange:
		return "range"
	case KindExtra:
		return "extra"
	case KindReport:
		return "report"
	default:
		return "kind_" + strconv.Itoa(int(k))
	}
}

// FrameError is why a device frame or reading was refused. DecodeUplink, ValidateUplink and
// ValidateReading return errors of this type only (match with errors.As).
type FrameError struct {
	// Kind classifies the error (for metrics).
	Kind FrameErrorKind
	// Reason is a short human-readable explanation meant for the device maker, e.g.
	// "reading 3: latitude 95.1 out of range [-90, 90]". See CloseReason for a WebSocket close.
	Reason string
	// Index is the index of the offending reading in the frame, or -1 when the error concerns the
	// frame as a whole (or a reading validated alone by ValidateReading).
	Index int
	// Field is the protobuf name of the offending field (e.g. "lat_e7", "extra"), or "" when the
	// error is not about one field.
	Field string
	// Err is the underlying decoding error, if any.
	Err error
}

// Error implements error.
func (e *FrameError) Error() string {
	return "invalid telemetry frame: " + e.Reason
}

// Unwrap returns the underlying decoding error, if any.
func (e *FrameError) Unwrap() error { return e.Err }

// CloseReason returns Reason as valid UTF-8 of at most MaxCloseReasonBytes bytes, cut on a rune
// boundary and ending in "..." when cut, ready to be the reason of a WebSocket close frame (the
// frontend closes with status 1007, invalid frame payload data).
func (e *FrameError) CloseReason() string {
	return truncateReason(e.Reason, MaxCloseReasonBytes)
}

// truncateReason makes s valid UTF-8 of at most max bytes (max ≥ 3).
func truncateReason(s string, max int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "?")
	}
	if len(s) <= max {
		return s
	}
	cut := max - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// frameErr builds a frame-level FrameError.
func frameErr(kind FrameErrorKind, field, reason string) *FrameError {
	return &FrameError{Kind: kind, Reason: reason, Index: -1, Field: field}
}
