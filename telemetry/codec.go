package telemetry

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Codec options, shared: they are plain values and safe for concurrent use.
var (
	binMarshal   = proto.MarshalOptions{}
	binUnmarshal = proto.UnmarshalOptions{}
	// JSON frames use protojson's lowerCamelCase names on output and accept both those and the
	// proto names (lat_e7) on input.
	jsonMarshal = protojson.MarshalOptions{}
	// Uplinks: unknown JSON fields are refused, not discarded. A misspelt sensor name must not be
	// acked and lost: the device keeps the frame and its maker sees why (binary frames with
	// unknown fields are refused the same way, so both encodings behave alike).
	jsonUplinkUnmarshal = protojson.UnmarshalOptions{DiscardUnknown: false}
	// Downlinks: devices ignore what they do not know, so that servers can add kinds (commands).
	jsonDownlinkUnmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
)

// Codes of Downlink Error messages.
const (
	// ErrCodeInvalidFrame: the frame was refused as invalid and nothing of it was stored; resending
	// it unchanged will fail again. (A frontend may instead close the WebSocket with status 1007
	// and the same reason.)
	ErrCodeInvalidFrame uint32 = 1
	// ErrCodeOverloaded: the server cannot store now (queue full, disk full); nothing of the frame
	// was stored. Keep the readings and resend later, with backoff.
	ErrCodeOverloaded uint32 = 2
	// ErrCodeInternal: the server failed to store the frame; keep the readings and resend later.
	ErrCodeInternal uint32 = 3
)

// DecodeUplink decodes and validates a frame a device sent: binary protobuf when text is false,
// the proto3 JSON mapping when true (field names in lowerCamelCase or as in the .proto; unknown
// fields refused). now is the server's clock, against which reading times are checked.
//
// The frame is refused whole, never in part, when it exceeds lim.MaxFrameBytes, does not decode,
// carries a field this schema does not know, or fails ValidateUplink. The error is then always a
// *FrameError, whose Reason names the first problem found.
func DecodeUplink(data []byte, text bool, now time.Time, lim Limits) (*Uplink, error) {
	lim = lim.withDefaults()
	if len(data) > lim.MaxFrameBytes {
		return nil, frameErr(KindTooLarge, "", "frame of "+strconv.Itoa(len(data))+
			" bytes, limit "+strconv.Itoa(lim.MaxFrameBytes))
	}
	u := &Uplink{}
	if text {
		if err := jsonUplinkUnmarshal.Unmarshal(data, u); err != nil {
			return nil, &FrameError{Kind: KindMalformed, Reason: "bad JSON: " + protoErrText(err),
				Index: -1, Err: fmt.Errorf("decode uplink: %w", err)}
		}
	} else {
		// Count readings before allocating them: a 64 KiB frame could hold 30,000 empty ones.
		if fe := prescanReadings(data, lim.MaxReadingsPerFrame); fe != nil {
			return nil, fe
		}
		if err := binUnmarshal.Unmarshal(data, u); err != nil {
			return nil, &FrameError{Kind: KindMalformed, Reason: "bad protobuf: " + protoErrText(err),
				Index: -1, Err: fmt.Errorf("decode uplink: %w", err)}
		}
	}
	if fe := validateUplink(u, now.UnixMilli(), lim); fe != nil {
		return nil, fe
	}
	return u, nil
}

// prescanReadings refuses a binary frame with more than max readings (field 1) without decoding
// them. Malformed input is left for proto.Unmarshal to report.
func prescanReadings(b []byte, max int) *FrameError {
	n := 0
	for len(b) > 0 {
		num, typ, tl := protowire.ConsumeTag(b)
		if tl < 0 {
			break
		}
		vl := protowire.ConsumeFieldValue(num, typ, b[tl:])
		if vl < 0 {
			break
		}
		if num == 1 {
			n++
		}
		b = b[tl+vl:]
	}
	if n > max {
		return frameErr(KindTooManyReadings, "readings",
			strconv.Itoa(n)+" readings in frame, limit "+strconv.Itoa(max))
	}
	return nil
}

// protoErrText strips the "proto:" prefix (and the random spacing protobuf-go puts after it)
// from a protobuf decoding error.
func protoErrText(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "proto:")
	return strings.TrimLeft(s, " \u00a0")
}

// EncodeUplink encodes a device frame: binary protobuf when text is false, the proto3 JSON
// mapping when true. It does not validate. Compact JSON is not byte-stable across builds
// (protobuf-go varies spacing on purpose); decode it, never compare it.
func EncodeUplink(u *Uplink, text bool) ([]byte, error) {
	return AppendUplink(nil, u, text)
}

// AppendUplink is EncodeUplink appending to dst, so that a sender can reuse one buffer
// (pass buf[:0]).
func AppendUplink(dst []byte, u *Uplink, text bool) ([]byte, error) {
	var (
		b   []byte
		err error
	)
	if text {
		b, err = jsonMarshal.MarshalAppend(dst, u)
	} else {
		b, err = binMarshal.MarshalAppend(dst, u)
	}
	if err != nil {
		return dst, fmt.Errorf("encode uplink: %w", err)
	}
	return b, nil
}

// DecodeDownlink decodes a frame a frontend sent to a device: binary protobuf when text is false,
// JSON when true. Unknown fields are ignored (kept as unknown fields in binary): a Downlink whose
// Kind is nil is of a kind this version does not know, and the device must ignore it.
func DecodeDownlink(data []byte, text bool) (*Downlink, error) {
	d := &Downlink{}
	var err error
	if text {
		err = jsonDownlinkUnmarshal.Unmarshal(data, d)
	} else {
		err = binUnmarshal.Unmarshal(data, d)
	}
	if err != nil {
		return nil, fmt.Errorf("decode downlink: %w", err)
	}
	return d, nil
}

// EncodeDownlink encodes a frame for a device: binary protobuf when text is false, JSON when true.
func EncodeDownlink(d *Downlink, text bool) ([]byte, error) {
	var (
		b   []byte
		err error
	)
	if text {
		b, err = jsonMarshal.Marshal(d)
	} else {
		b, err = binMarshal.Marshal(d)
	}
	if err != nil {
		return nil, fmt.Errorf("encode downlink: %w", err)
	}
	return b, nil
}

// NewAck returns a Downlink acknowledging every reading with a sequence number ≤ seq.
func NewAck(seq uint64) *Downlink {
	return &Downlink{Kind: &Downlink_Ack{Ack: &Ack{Seq: seq}}}
}

// NewError returns a Downlink Error with code (an ErrCode constant) and reason.
func NewError(code uint32, reason string) *Downlink {
	return &Downlink{Kind: &Downlink_Error{Error: &Error{Code: code, Reason: reason}}}
}
