package telemetry

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// TestCommandDownlinkRoundTrip: a command survives both encodings, and the JSON mapping uses the
// names docs/wire-format.md shows.
func TestCommandDownlinkRoundTrip(t *testing.T) {
	c := &Command{Id: "cmd_1", Name: "set_interval", Params: map[string]string{"seconds": "30"},
		ExpiresMs: testNow.Add(time.Minute).UnixMilli(), Seq: 7}
	d := NewCommand(c, testNow)
	if got := d.GetCommand().GetTtlMs(); got != 60_000 {
		t.Fatalf("ttl_ms = %d, want 60000", got)
	}
	for _, text := range []bool{false, true} {
		b, err := EncodeDownlink(d, text)
		if err != nil {
			t.Fatal(err)
		}
		if text {
			for _, name := range []string{`"command"`, `"expiresMs"`, `"ttlMs"`, `"params"`} {
				if !strings.Contains(string(b), name) {
					t.Errorf("JSON %s lacks %s", b, name)
				}
			}
		}
		got, err := DecodeDownlink(b, text)
		if err != nil || !proto.Equal(got, d) {
			t.Errorf("text=%v: %v, %v", text, got, err)
		}
	}
	ack, _ := EncodeDownlink(NewReportAck([]string{"cmd_1"}), true)
	if got, err := DecodeDownlink(ack, true); err != nil || got.GetReportAck().GetIds()[0] != "cmd_1" {
		t.Errorf("report ack: %v %v", got, err)
	}
}

// TestNewCommandExpired: an expired command is never encoded for a device, even at the exact
// millisecond of its expiry.
func TestNewCommandExpired(t *testing.T) {
	c := &Command{Id: "cmd_1", Name: "immobilise", ExpiresMs: testNow.UnixMilli()}
	if d := NewCommand(c, testNow); d != nil {
		t.Errorf("expired command encoded: %v", d)
	}
	if d := NewCommand(c, testNow.Add(-time.Millisecond)); d == nil || d.GetCommand().GetTtlMs() != 1 {
		t.Errorf("live command: %v", d)
	}
}

// TestOldDeviceIgnoresCommand: a device built on wire format 1.0 (which knows only ack and
// error) decodes a command frame as a Downlink of unknown kind, which it ignores, in both
// encodings. Simulated by decoding into a message without the new fields.
func TestOldDeviceIgnoresCommand(t *testing.T) {
	d := NewCommand(&Command{Id: "cmd_1", Name: "locate", ExpiresMs: testNow.Add(time.Second).UnixMilli()}, testNow)
	b, _ := EncodeDownlink(d, false)
	old := &Error{} // any 1.0 message: fields 3 and 4 are unknown to it
	if err := proto.Unmarshal(b, old); err != nil {
		t.Fatalf("1.0 decoder fails on a command: %v", err)
	}
	j, _ := EncodeDownlink(d, true)
	if _, err := DecodeDownlink(append(j[:len(j)-1], []byte(`,"firmware":{}}`)...), true); err != nil {
		t.Errorf("an unknown JSON kind is not ignored: %v", err)
	}
}

func TestReportsValidation(t *testing.T) {
	ok := &CommandReport{Id: "cmd_1", Status: CommandStatus_COMMAND_STATUS_SUCCEEDED, Payload: `{"lat":45.7}`}
	// A frame of reports only is valid: a device answers a command without a reading to send.
	for _, text := range []bool{false, true} {
		b, _ := EncodeUplink(&Uplink{Reports: []*CommandReport{ok}}, text)
		got, err := DecodeUplink(b, text, testNow, DefaultLimits())
		if err != nil || len(got.Reports) != 1 || got.Reports[0].Status != ok.Status {
			t.Fatalf("text=%v: %v %v", text, got, err)
		}
	}
	// JSON names the status by its enum name.
	got, err := DecodeUplink([]byte(`{"reports":[{"id":"cmd_2","status":"COMMAND_STATUS_FAILED","message":"no such door"}]}`),
		true, testNow, DefaultLimits())
	if err != nil || got.Reports[0].Status != CommandStatus_COMMAND_STATUS_FAILED {
		t.Fatalf("JSON report: %v %v", got, err)
	}
	// Wire format 1.2: progress of a long command, with the bytes downloaded so far.
	for _, text := range []bool{false, true} {
		prog := []*CommandReport{{Id: "cmd_3", Status: CommandStatus_COMMAND_STATUS_DOWNLOADING, Bytes: 61440},
			{Id: "cmd_3", Status: CommandStatus_COMMAND_STATUS_VERIFYING}, {Id: "cmd_3", Status: CommandStatus_COMMAND_STATUS_INSTALLING}}
		b, _ := EncodeUplink(&Uplink{Reports: prog}, text)
		got, err := DecodeUplink(b, text, testNow, DefaultLimits())
		if err != nil || len(got.Reports) != 3 || got.Reports[0].Bytes != 61440 || !got.Reports[0].Status.Progress() ||
			got.Reports[2].Status != CommandStatus_COMMAND_STATUS_INSTALLING || got.Reports[2].Status.Final() {
			t.Fatalf("text=%v: progress reports: %v %v", text, got, err)
		}
	}
	got, err = DecodeUplink([]byte(`{"reports":[{"id":"cmd_4","status":"COMMAND_STATUS_DOWNLOADING","bytes":"4096"}]}`),
		true, testNow, DefaultLimits())
	if err != nil || got.Reports[0].Bytes != 4096 {
		t.Fatalf("JSON progress report: %v %v", got, err)
	}
	if CommandStatus_COMMAND_STATUS_RECEIVED.Progress() || CommandStatus_COMMAND_STATUS_SUCCEEDED.Progress() {
		t.Error("received or succeeded counted as progress")
	}
	many := make([]*CommandReport, MaxReportsPerFrame+1)
	for i := range many {
		many[i] = ok
	}
	cases := []struct {
		name  string
		rep   []*CommandReport
		field string
	}{
		{"no id", []*CommandReport{{Status: CommandStatus_COMMAND_STATUS_RECEIVED}}, "id"},
		{"long id", []*CommandReport{{Id: strings.Repeat("a", MaxCommandIDLen+1), Status: 1}}, "id"},
		{"control in id", []*CommandReport{{Id: "a\nb", Status: 1}}, "id"},
		{"no status", []*CommandReport{{Id: "cmd_1"}}, "status"},
		{"unknown status", []*CommandReport{{Id: "cmd_1", Status: 9}}, "status"},
		{"status after INSTALLING", []*CommandReport{{Id: "cmd_1", Status: CommandStatus_COMMAND_STATUS_INSTALLING + 1}}, "status"},
		{"bytes past int64", []*CommandReport{{Id: "cmd_1", Status: 4, Bytes: 1 << 63}}, "bytes"},
		{"long message", []*CommandReport{{Id: "cmd_1", Status: 3, Message: strings.Repeat("m", MaxReportMessageLen+1)}}, "message"},
		{"long payload", []*CommandReport{{Id: "cmd_1", Status: 2, Payload: strings.Repeat("p", MaxReportPayloadLen+1)}}, "payload"},
		{"too many", many, "reports"},
	}
	for _, c := range cases {
		err := ValidateUplink(&Uplink{Reports: c.rep}, testNow, DefaultLimits())
		fe := asFrameError(t, err)
		if fe.Kind != KindReport || fe.Field != c.field {
			t.Errorf("%s: kind %v field %q (%v)", c.name, fe.Kind, fe.Field, err)
		}
	}
	// A field this version does not know, in a report, refuses the frame as in a frame or a
	// reading (found by FuzzDecodeUplinkBinary: a report of unknown field 6 was accepted).
	b, _ := EncodeUplink(&Uplink{Reports: []*CommandReport{ok}}, false)
	rep := protowire.AppendTag(nil, 6, protowire.VarintType)
	rep = protowire.AppendVarint(rep, 48)
	b = protowire.AppendTag(b, 2, protowire.BytesType) // Uplink.reports, a second report
	okBytes, _ := proto.Marshal(ok)
	b = protowire.AppendBytes(b, append(okBytes, rep...))
	if _, err := DecodeUplink(b, false, testNow, DefaultLimits()); err == nil ||
		!strings.Contains(err.Error(), "report 1: unknown field 6") {
		t.Errorf("report with unknown field 6: %v, want refused naming it", err)
	}
	// A bad report refuses the whole frame, readings included: stored whole or not at all.
	f := typicalFrame(1, 1, testNow)
	f.Reports = []*CommandReport{{Id: "cmd_1"}}
	if err := ValidateUplink(f, testNow, DefaultLimits()); err == nil {
		t.Error("frame with a bad report accepted")
	}
}
