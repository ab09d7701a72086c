package sim

import (
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/telemetry"
)

// A simulated device plays the device's side of commands as docs/wire-format.md asks:
// it dedups by command id (a command delivered twice is executed once; its report is sent
// again), refuses an expired command without executing it, reports received and then the
// result after Config.CommandDelay (failing with Config.CommandFailureRate), and keeps each
// final report until a report_ack names it, sending it again on every new connection.

// simCmd is what a device remembers of one command.
type simCmd struct {
	expires int64                    // unix ms: the entry may go some time after it
	final   *telemetry.CommandReport // nil while executing
	acked   bool                     // the server stored the final report
}

// cmdState is a device's command state, under its own lock (the reader and the execution
// timers write it, the writer sends its reports).
type cmdState struct {
	mu   sync.Mutex
	cmds map[string]*simCmd
	out  []*telemetry.CommandReport // to send on the current connection
}

// cmdCounters are the fleet's command figures (Summary.Commands).
type cmdCounters struct {
	received   atomic.Uint64 // command frames received
	executed   atomic.Uint64 // commands executed (once per id)
	succeeded  atomic.Uint64
	failed     atomic.Uint64
	duplicates atomic.Uint64 // a command received again: its report resent, not executed
	expired    atomic.Uint64 // received after its expiry: refused, not executed
	lateMs     atomic.Int64  // the most any of those arrived after its expiry
	reports    atomic.Uint64 // reports sent (resends included)
	acked      atomic.Uint64 // report acks received
	// latency is from the API call to the device's receipt, for commands that carry
	// BenchSentParam (internal/bench/cmdlat sets it; the same host's clock).
	latency histogram
}

// BenchSentParam is the command parameter in which a benchmark puts the time it called the API
// (Unix nanoseconds): a device that gets it records how long the command took to reach it.
const BenchSentParam = "bench_sent_ns"

// CommandStats are the figures of a fleet's commands, in its summary.
type CommandStats struct {
	Received   uint64 `json:"received"`
	Executed   uint64 `json:"executed"`
	Succeeded  uint64 `json:"succeeded"`
	Failed     uint64 `json:"failed"`
	Duplicates uint64 `json:"duplicates"`
	// Expired counts commands received after their expiry: refused and reported FAILED
	// "expired on device" (docs/wire-format.md); ExpiredLateMs is the most any of them
	// arrived after its expiry. A frame that sat in a buffer as its expiry passed arrives a
	// few ms late; one written hours after its expiry would show hours.
	Expired       uint64 `json:"expired"`
	ExpiredLateMs int64  `json:"expired_late_ms"`
	Reports       uint64 `json:"reports"`
	ReportAcks    uint64 `json:"report_acks"`
	// LatencyMs is from the API call to the device's receipt of commands that carry
	// BenchSentParam; absent when none did.
	LatencyMs *LatencyMs `json:"latency_ms,omitempty"`
	// Firmware updates (FirmwareCommand): images verified and installed, failed, bytes
	// received, downloads resumed after a drop, downloads started again from zero, progress
	// reports queued (downloading, verifying, installing).
	FirmwareInstalled uint64 `json:"firmware_installed"`
	FirmwareFailed    uint64 `json:"firmware_failed"`
	FirmwareBytes     uint64 `json:"firmware_bytes"`
	FirmwareResumes   uint64 `json:"firmware_resumes"`
	FirmwareRestarts  uint64 `json:"firmware_restarts"`
	FirmwareProgress  uint64 `json:"firmware_progress_reports"`
}

func (c *cmdCounters) stats() CommandStats {
	s := CommandStats{Received: c.received.Load(), Executed: c.executed.Load(), Succeeded: c.succeeded.Load(),
		Failed: c.failed.Load(), Duplicates: c.duplicates.Load(), Expired: c.expired.Load(),
		ExpiredLateMs: c.lateMs.Load(), Reports: c.reports.Load(), ReportAcks: c.acked.Load()}
	if l := c.latency.snapshot().latency(); l.Count > 0 {
		ms := latencyMs(l)
		s.LatencyMs = &ms
	}
	return s
}

// command handles a command frame received at now.
func (d *device) command(cmd *telemetry.Command, now time.Time) {
	f := d.f
	f.cc.received.Add(1)
	if v, ok := cmd.GetParams()[BenchSentParam]; ok {
		if ns, err := strconv.ParseInt(v, 10, 64); err == nil {
			f.cc.latency.recordN(now.Sub(time.Unix(0, ns)), 1)
		}
	}
	s := &d.cmd
	s.mu.Lock()
	if s.cmds == nil {
		s.cmds = map[string]*simCmd{}
	}
	if st := s.cmds[cmd.GetId()]; st != nil {
		f.cc.duplicates.Add(1)
		if st.final != nil {
			s.out = append(s.out, st.final)
		} else {
			s.out = append(s.out, &telemetry.CommandReport{Id: cmd.GetId(), Status: telemetry.CommandStatus_COMMAND_STATUS_RECEIVED})
		}
		s.mu.Unlock()
		d.wakeWriter()
		return
	}
	d.pruneCommands(now)
	st := &simCmd{expires: cmd.GetExpiresMs()}
	s.cmds[cmd.GetId()] = st
	if now.UnixMilli() >= cmd.GetExpiresMs() || cmd.GetTtlMs() <= 0 {
		f.cc.expired.Add(1)
		late := now.UnixMilli() - cmd.GetExpiresMs()
		for m := f.cc.lateMs.Load(); late > m && !f.cc.lateMs.CompareAndSwap(m, late); m = f.cc.lateMs.Load() {
		}
		st.final = &telemetry.CommandReport{Id: cmd.GetId(), Status: telemetry.CommandStatus_COMMAND_STATUS_FAILED, Message: "expired on device"}
		s.out = append(s.out, st.final)
		s.mu.Unlock()
		d.wakeWriter()
		return
	}
	if cmd.GetName() == FirmwareCommand {
		s.out = append(s.out, &telemetry.CommandReport{Id: cmd.GetId(), Status: telemetry.CommandStatus_COMMAND_STATUS_RECEIVED})
		s.mu.Unlock()
		d.wakeWriter()
		go d.updateFirmware(f.runCtx(), cmd)
		return
	}
	delay := f.cfg.CommandDelay
	if delay <= 0 {
		s.mu.Unlock()
		d.execute(cmd)
		return
	}
	s.out = append(s.out, &telemetry.CommandReport{Id: cmd.GetId(), Status: telemetry.CommandStatus_COMMAND_STATUS_RECEIVED})
	s.mu.Unlock()
	d.wakeWriter()
	time.AfterFunc(delay, func() { d.execute(cmd) })
}

// execute runs a command (once per id: command guarantees it) and queues its result.
func (d *device) execute(cmd *telemetry.Command) {
	f := d.f
	f.cc.executed.Add(1)
	rep := &telemetry.CommandReport{Id: cmd.GetId(), Status: telemetry.CommandStatus_COMMAND_STATUS_SUCCEEDED,
		Payload: `{"device":"` + d.id + `","name":"` + cmd.GetName() + `"}`}
	if f.cfg.CommandFailureRate > 0 && rand.Float64() < f.cfg.CommandFailureRate {
		rep.Status, rep.Payload, rep.Message = telemetry.CommandStatus_COMMAND_STATUS_FAILED, "", "simulated failure"
		f.cc.failed.Add(1)
	} else {
		f.cc.succeeded.Add(1)
	}
	d.finish(cmd.GetId(), rep)
}

// finish records a command's final report and queues it.
func (d *device) finish(id string, rep *telemetry.CommandReport) {
	s := &d.cmd
	s.mu.Lock()
	if st := s.cmds[id]; st != nil {
		st.final = rep
	}
	s.out = append(s.out, rep)
	s.mu.Unlock()
	d.wakeWriter()
}

// reportAck forgets the final reports the server stored (never the ids: they dedup until
// their commands expire).
func (d *device) reportAck(ids []string) {
	d.f.cc.acked.Add(1)
	s := &d.cmd
	s.mu.Lock()
	for _, id := range ids {
		if st := s.cmds[id]; st != nil && st.final != nil {
			st.acked = true
		}
	}
	s.mu.Unlock()
}

// pruneCommands forgets commands whose report is acked and whose expiry passed a minute ago.
// Call with d.cmd.mu held.
func (d *device) pruneCommands(now time.Time) {
	cut := now.Add(-time.Minute).UnixMilli()
	for id, st := range d.cmd.cmds {
		if st.acked && st.expires < cut {
			delete(d.cmd.cmds, id)
		}
	}
}

// resendReports queues again every final report not acked yet: a new connection.
func (d *device) resendReports() {
	s := &d.cmd
	s.mu.Lock()
	s.out = s.out[:0]
	for _, st := range s.cmds {
		if st.final != nil && !st.acked {
			s.out = append(s.out, st.final)
		}
	}
	s.mu.Unlock()
}

// sendReports writes the queued reports in one frame, if any. Writer goroutine only.
func (d *device) sendReports(conn *websocket.Conn) error {
	s := &d.cmd
	s.mu.Lock()
	if len(s.out) == 0 {
		s.mu.Unlock()
		return nil
	}
	n := min(len(s.out), telemetry.MaxReportsPerFrame)
	reps := append([]*telemetry.CommandReport(nil), s.out[:n]...)
	s.out = append(s.out[:0], s.out[n:]...)
	more := len(s.out) > 0
	s.mu.Unlock()
	text := d.f.cfg.JSON
	b, err := telemetry.EncodeUplink(&telemetry.Uplink{Reports: reps}, text)
	if err != nil {
		return err
	}
	typ := websocket.BinaryMessage
	if text {
		typ = websocket.TextMessage
	}
	_ = conn.SetWriteDeadline(time.Now().Add(d.f.cfg.WriteTimeout))
	if err := conn.WriteMessage(typ, b); err != nil {
		// Final reports are sent again on the next connection; a lost received is harmless.
		return err
	}
	d.f.cc.reports.Add(uint64(n))
	if more {
		d.wakeWriter()
	}
	return nil
}

func (d *device) wakeWriter() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// commandStats is cc's figures with the firmware ones.
func (f *Fleet) commandStats() CommandStats {
	s := f.cc.stats()
	s.FirmwareInstalled, s.FirmwareFailed = f.fc.downloads.Load(), f.fc.failed.Load()
	s.FirmwareBytes, s.FirmwareResumes, s.FirmwareRestarts = f.fc.bytes.Load(), f.fc.resumes.Load(), f.fc.restarts.Load()
	s.FirmwareProgress = f.fc.progress.Load()
	return s
}
