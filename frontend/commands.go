package frontend

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/backoff"
	"github.com/drover-telemetry/drover/telemetry"
)

// Commands to devices (docs/commands.md, "Delivery"). A frontend that
// follows the control plane long-polls it for the commands of the devices
// it holds (GET /v1/frontends/{id}/commands), writes each to its device's
// WebSocket, and posts back what devices report of them, with the commands
// it could not write (POST /v1/frontends/{id}/command-reports). Only once
// the API has stored a report does the device get a report_ack: a report
// lost with this process is sent again by the device.
//
// Nothing here is on the ack path of readings: reports go into a bounded
// list that one goroutine sends; command writes take the connection's
// write lock for one frame, like an ack.

// commandWait is how long one command stream (or long poll) stays open.
const commandWait = 25 * time.Second

// maxPendingReports bounds the reports waiting for the control plane
// (~200 B each). Past it a report is dropped and counted: the device sends
// a final report again until it is acked, so nothing is lost but time.
const maxPendingReports = 100_000

// pendingReport is a report waiting to be posted; ack says whether the
// device gets a report_ack once it is stored.
type pendingReport struct {
	rep apiclient.CommandReport
	ack bool
}

// commander delivers commands and reports.
type commander struct {
	f      *Frontend
	client *apiclient.Client
	id     string
	log    *slog.Logger

	mu      sync.Mutex
	pending []pendingReport
	kick    chan struct{}

	events  *prometheus.CounterVec
	dropped prometheus.Counter
	fwBytes prometheus.Counter
}

func newCommander(f *Frontend, client *apiclient.Client) (*commander, error) {
	c := &commander{
		f: f, client: client, id: f.cfg.ID, log: f.logger, kick: make(chan struct{}, 1),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "drover_frontend_commands_total",
			Help: "Commands and reports, by event: written (to a device), undeliverable (device not here or write failed), expired (not written: its TTL ended on the way), received, downloading, verifying, installing, succeeded, failed (device reports posted), report_failures (posts the API did not take), progress_refused (progress reports an API older than wire format 1.2 refused, dropped)."},
			[]string{"event"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_frontend_command_reports_dropped_total",
			Help: "Device command reports dropped because too many waited for the control plane (the device sends final reports again until acked)."}),
		fwBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "drover_frontend_firmware_bytes_total",
			Help: "Firmware bytes served to devices (capped by -firmware-bytes-per-second)."}),
	}
	for _, col := range []prometheus.Collector{c.events, c.dropped, c.fwBytes} {
		if err := f.reg.Register(col); err != nil {
			return nil, fmt.Errorf("register command metrics: %w", err)
		}
	}
	return c, nil
}

// startCommands makes the commander when the frontend follows the control
// plane (nil otherwise).
func (f *Frontend) startCommands() (*commander, error) {
	if !f.cfg.Follow.Enabled() {
		return nil, nil
	}
	client, err := apiclient.New(f.cfg.Follow.API)
	if err != nil {
		return nil, err
	}
	c, err := newCommander(f, client)
	if err != nil {
		return nil, err
	}
	f.commands = c
	return c, nil
}

// run polls for commands and posts reports until ctx ends, then closes
// its idle connections to the API (a connection dialed for a request that
// was cancelled would otherwise hold up the API's own shutdown for 5 s).
func (c *commander) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { c.poll(ctx) })
	wg.Go(func() { c.post(ctx) })
	wg.Wait()
	c.client.Close()
}

// poll holds a command stream open to the API (one after the other, each
// for commandWait) and writes the commands that come on it.
func (c *commander) poll(ctx context.Context) {
	bo := backoff.New(200*time.Millisecond, 10*time.Second, nil)
	answered := func() { // the stream gave a batch, or ended as it should
		if bo.Active() {
			c.log.Info("frontend: command polls answered again")
		}
		bo.Reset()
	}
	for ctx.Err() == nil {
		err := c.client.CommandStream(ctx, c.id, commandWait, func(d apiclient.Dispatch) {
			answered()
			c.deliver(d.Commands)
		})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			if !bo.Active() {
				c.log.Warn("frontend: the control plane does not answer command polls; retrying", "api", c.client.URL(), "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(bo.Next()):
			}
			continue
		}
		answered()
	}
}

// deliver writes commands to their devices: in order per device (they
// come sorted by device and seq), devices in parallel so that one slow
// socket delays only its own commands.
func (c *commander) deliver(cmds []apiclient.DispatchedCommand) {
	for i := 0; i < len(cmds); {
		j := i + 1
		for j < len(cmds) && cmds[j].DeviceID == cmds[i].DeviceID {
			j++
		}
		run := cmds[i:j]
		go func() {
			for _, cmd := range run {
				c.write(cmd)
			}
		}()
		i = j
	}
}

// write writes one command to its device, checking its expiry right
// before, or reports it undeliverable.
func (c *commander) write(cmd apiclient.DispatchedCommand) {
	conn := c.f.devs.connOf(cmd.DeviceID)
	msg := telemetry.NewCommand(&telemetry.Command{Id: cmd.ID, Name: cmd.Name, Params: cmd.Params,
		ExpiresMs: cmd.ExpiresAt, Seq: cmd.Seq}, time.Now())
	event := "written"
	switch {
	case msg == nil:
		event = "expired"
	case conn == nil:
		event = "undeliverable"
	default:
		if err := conn.writeDownlink(msg); err != nil {
			conn.log(slog.LevelDebug, "frontend: command not written", "command", cmd.ID, "err", err)
			event = "undeliverable"
		}
	}
	c.events.WithLabelValues(event).Inc()
	if event != "written" {
		c.add(pendingReport{rep: apiclient.CommandReport{ID: cmd.ID, DeviceID: cmd.DeviceID,
			Outcome: apiclient.OutcomeUndeliverable, At: time.Now().UnixMilli()}})
	}
}

// take takes the reports a device sent in a frame. Safe from any
// goroutine; never blocks on the API. Without a control plane (nil) there
// are no commands, and reports are dropped.
func (c *commander) take(dev string, reps []*telemetry.CommandReport, at time.Time) {
	if c == nil {
		return
	}
	for _, r := range reps {
		out := apiclient.OutcomeReceived
		var n int64
		switch r.GetStatus() {
		case telemetry.CommandStatus_COMMAND_STATUS_SUCCEEDED:
			out = apiclient.OutcomeSucceeded
		case telemetry.CommandStatus_COMMAND_STATUS_FAILED:
			out = apiclient.OutcomeFailed
		case telemetry.CommandStatus_COMMAND_STATUS_DOWNLOADING:
			out, n = apiclient.OutcomeDownloading, int64(r.GetBytes()) // validated: at most MaxInt64
		case telemetry.CommandStatus_COMMAND_STATUS_VERIFYING:
			out = apiclient.OutcomeVerifying
		case telemetry.CommandStatus_COMMAND_STATUS_INSTALLING:
			out = apiclient.OutcomeInstalling
		}
		c.add(pendingReport{ack: true, rep: apiclient.CommandReport{ID: r.GetId(), DeviceID: dev, Outcome: out,
			Message: r.GetMessage(), Payload: r.GetPayload(), Bytes: n, At: at.UnixMilli()}})
	}
}

func (c *commander) add(p pendingReport) {
	c.mu.Lock()
	if len(c.pending) >= maxPendingReports {
		c.mu.Unlock()
		c.dropped.Inc()
		return
	}
	c.pending = append(c.pending, p)
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// post sends waiting reports as soon as there are some, one request at a
// time (what arrives meanwhile goes in the next), and acks them to their
// devices once stored.
func (c *commander) post(ctx context.Context) {
	bo := backoff.New(200*time.Millisecond, 10*time.Second, nil)
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		for {
			c.mu.Lock()
			n := min(len(c.pending), apiclient.MaxCommandReports)
			batch := append([]pendingReport(nil), c.pending[:n]...)
			c.mu.Unlock()
			if n == 0 {
				break
			}
			reps := make([]apiclient.CommandReport, n)
			for i, p := range batch {
				reps[i] = p.rep
			}
			if err := c.client.ReportCommands(ctx, c.id, reps); err != nil {
				if ctx.Err() != nil {
					return
				}
				if c.dropProgress(err, n) {
					continue
				}
				c.events.WithLabelValues("report_failures").Inc()
				if !bo.Active() {
					c.log.Warn("frontend: the control plane does not take command reports; they wait (bounded)", "err", err)
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(bo.Next()):
				}
				continue
			}
			bo.Reset()
			c.mu.Lock()
			c.pending = append(c.pending[:0], c.pending[n:]...)
			c.mu.Unlock()
			c.acked(batch)
		}
	}
}

// dropProgress handles a control plane that refuses a batch of reports as
// invalid (422): one older than wire format 1.2 does not know the progress
// outcomes (downloading, verifying, installing), and would refuse the
// batch, and every final report behind it, forever. The progress reports
// among the batch's n are dropped and counted (progress_refused): they
// only ever add detail, and a device does not send them again. It reports
// whether it dropped any (then the rest goes at once).
func (c *commander) dropProgress(err error, n int) bool {
	var ae *apiclient.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusUnprocessableEntity {
		return false
	}
	dropped := 0
	c.mu.Lock()
	kept := make([]pendingReport, 0, len(c.pending))
	for i, p := range c.pending {
		switch p.rep.Outcome {
		case apiclient.OutcomeDownloading, apiclient.OutcomeVerifying, apiclient.OutcomeInstalling:
			if i < n {
				dropped++
				continue
			}
		}
		kept = append(kept, p)
	}
	if dropped > 0 {
		c.pending = kept
	}
	c.mu.Unlock()
	if dropped == 0 {
		return false
	}
	c.events.WithLabelValues("progress_refused").Add(float64(dropped))
	c.log.Warn("frontend: the control plane refused command progress reports (older than wire format 1.2?): dropped them; the other reports go on",
		"dropped", dropped, "err", err)
	return true
}

// acked counts stored reports and tells their devices (report_ack), one
// frame per device.
func (c *commander) acked(batch []pendingReport) {
	ids := map[string][]string{}
	for _, p := range batch {
		c.events.WithLabelValues(p.rep.Outcome).Inc()
		if p.ack {
			ids[p.rep.DeviceID] = append(ids[p.rep.DeviceID], p.rep.ID)
		}
	}
	for dev, list := range ids {
		if conn := c.f.devs.connOf(dev); conn != nil {
			// A failed write loses nothing: the device sends the report again.
			_ = conn.writeDownlink(telemetry.NewReportAck(list))
		}
	}
}

// writeDownlink writes a frame to the device in the encoding it last used
// (binary until it sent a text frame), under the connection's write lock:
// the read loop writes acks, the commander commands and report acks.
func (cn *conn) writeDownlink(d *telemetry.Downlink) error {
	text := cn.text.Load()
	msg, err := telemetry.EncodeDownlink(d, text)
	if err != nil {
		return err
	}
	typ := websocket.BinaryMessage
	if text {
		typ = websocket.TextMessage
	}
	cn.wmu.Lock()
	defer cn.wmu.Unlock()
	_ = cn.ws.SetWriteDeadline(time.Now().Add(cn.f.cfg.WriteTimeout))
	return cn.ws.WriteMessage(typ, msg)
}
