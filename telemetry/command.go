package telemetry

import (
	"math"
	"strconv"
	"time"
)

// Bounds of command reports (Uplink.reports), wire format 1.1.
const (
	// MaxReportsPerFrame is the most command reports one frame may carry.
	MaxReportsPerFrame = 100
	// MaxCommandIDLen is the longest command id, in bytes. Ids are the control plane's
	// (cmd_ and 26 characters); the bound keeps a device from sending garbage of any size.
	MaxCommandIDLen = 64
	// MaxReportMessageLen is the longest report message, in bytes.
	MaxReportMessageLen = 1024
	// MaxReportPayloadLen is the longest report payload, in bytes.
	MaxReportPayloadLen = 4096
)

// validateReports checks the command reports of a frame. Protobuf-go has already refused
// strings that are not UTF-8.
func validateReports(reps []*CommandReport) *FrameError {
	if len(reps) > MaxReportsPerFrame {
		return frameErr(KindReport, "reports", strconv.Itoa(len(reps))+" reports in frame, limit "+
			strconv.Itoa(MaxReportsPerFrame))
	}
	for i, r := range reps {
		at := "report " + strconv.Itoa(i) + ": "
		if r == nil {
			return frameErr(KindMalformed, "", at+"missing")
		}
		// As for frames and readings: a field this version does not know could not be acted on
		// faithfully, and a misspelt one must not be acked and lost.
		if unk := r.ProtoReflect().GetUnknown(); len(unk) > 0 {
			return frameErr(KindMalformed, "", at+unknownFieldReason(r.ProtoReflect().Descriptor(), unk))
		}
		switch {
		case r.GetId() == "" || len(r.GetId()) > MaxCommandIDLen || hasControl(r.GetId()):
			return frameErr(KindReport, "id", at+"id must be 1 to "+strconv.Itoa(MaxCommandIDLen)+
				" bytes without control characters")
		case r.GetStatus() < CommandStatus_COMMAND_STATUS_RECEIVED || r.GetStatus() > CommandStatus_COMMAND_STATUS_INSTALLING:
			return frameErr(KindReport, "status", at+"status "+strconv.Itoa(int(r.GetStatus()))+
				" unknown, want RECEIVED, SUCCEEDED, FAILED, DOWNLOADING, VERIFYING or INSTALLING")
		case r.GetBytes() > math.MaxInt64:
			// The control plane stores it as a signed 64-bit integer.
			return frameErr(KindReport, "bytes", at+"bytes "+strconv.FormatUint(r.GetBytes(), 10)+
				" out of range [0, 9223372036854775807]")
		case len(r.GetMessage()) > MaxReportMessageLen:
			return frameErr(KindReport, "message", at+"message of "+strconv.Itoa(len(r.GetMessage()))+
				" bytes, limit "+strconv.Itoa(MaxReportMessageLen))
		case len(r.GetPayload()) > MaxReportPayloadLen:
			return frameErr(KindReport, "payload", at+"payload of "+strconv.Itoa(len(r.GetPayload()))+
				" bytes, limit "+strconv.Itoa(MaxReportPayloadLen))
		}
	}
	return nil
}

// Final reports whether the status ends the command (SUCCEEDED or FAILED).
func (s CommandStatus) Final() bool {
	return s == CommandStatus_COMMAND_STATUS_SUCCEEDED || s == CommandStatus_COMMAND_STATUS_FAILED
}

// Progress reports whether the status is a progress report of a command still running
// (DOWNLOADING, VERIFYING, INSTALLING: wire format 1.2), neither received nor final.
func (s CommandStatus) Progress() bool {
	return s >= CommandStatus_COMMAND_STATUS_DOWNLOADING && s <= CommandStatus_COMMAND_STATUS_INSTALLING
}

// NewCommand returns a Downlink carrying c, with ttl_ms set to what is left of c's time to live
// at now. It returns nil when c has expired at now: an expired command is never written to a
// device, and every sender checks it here, right before writing.
func NewCommand(c *Command, now time.Time) *Downlink {
	left := c.GetExpiresMs() - now.UnixMilli()
	if left <= 0 {
		return nil
	}
	out := &Command{Id: c.GetId(), Name: c.GetName(), Params: c.GetParams(), ExpiresMs: c.GetExpiresMs(),
		TtlMs: left, Seq: c.GetSeq()}
	return &Downlink{Kind: &Downlink_Command{Command: out}}
}

// NewReportAck returns a Downlink telling the device its reports of ids are stored.
func NewReportAck(ids []string) *Downlink {
	return &Downlink{Kind: &Downlink_ReportAck{ReportAck: &ReportAck{Ids: ids}}}
}
