package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/daemon"
)

// Delivery of commands to devices (docs/commands.md, "Delivery"). A
// frontend long-polls GET /v1/frontends/{id}/commands; the API answers the
// commands due for the devices whose presence says they are connected to
// that frontend, marking them sent in the same write. The frontend writes
// them to the devices and posts what the devices report (and what it could
// not write) to POST /v1/frontends/{id}/command-reports.
//
// Rules, per device, in seq order:
//   - a command is due when it is queued and never tried, or when its last
//     attempt is older than the device's last connect (presence: it
//     reconnected somewhere since), or than the resend delay (which
//     doubles per attempt, to 16×);
//   - a sent command not yet due holds the device's later commands back:
//     order is kept even when one is resent;
//   - an expired command is never answered (and the frontend checks again
//     right before writing).

// DispatchedCommand is one command of a dispatch answer.
type DispatchedCommand = apiclient.DispatchedCommand

// notifier wakes waiting requests of this replica: command waits by
// command id, dispatch long polls by frontend. For each frontend it also
// keeps the devices that may have work (a new command, a connect, a
// report), so that a wake-up reads those devices' commands, not every open
// command: the full scan (resend delays, other replicas) runs at most once
// per -command-poll per frontend.
type notifier struct {
	mu       sync.Mutex
	cmds     map[string]*watch
	fes      map[string]*watch
	work     map[string]map[string]struct{} // frontend → devices
	lastFull map[string]time.Time           // frontend → last full scan
}

type watch struct {
	ch chan struct{}
	n  int
}

func newNotifier() *notifier {
	return &notifier{cmds: map[string]*watch{}, fes: map[string]*watch{}, work: map[string]map[string]struct{}{},
		lastFull: map[string]time.Time{}}
}

func (n *notifier) watchKey(m map[string]*watch, key string) (<-chan struct{}, func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	w := m[key]
	if w == nil {
		w = &watch{ch: make(chan struct{})}
		m[key] = w
	}
	w.n++
	return w.ch, func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		w.n--
		if w.n == 0 && m[key] == w {
			delete(m, key)
		}
	}
}

func (n *notifier) fire(m map[string]*watch, keys ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, k := range keys {
		if w := m[k]; w != nil {
			close(w.ch)
			delete(m, k)
		}
	}
}

// watchCommand returns a channel closed when the command changes; call
// release when done waiting.
func (n *notifier) watchCommand(id string) (<-chan struct{}, func()) { return n.watchKey(n.cmds, id) }

// commandsChanged wakes the waiters of these commands.
func (n *notifier) commandsChanged(ids ...string) { n.fire(n.cmds, ids...) }

// watchFrontend returns a channel closed when a frontend may have work.
func (n *notifier) watchFrontend(fe string) (<-chan struct{}, func()) { return n.watchKey(n.fes, fe) }

// maxWorkDevices bounds the devices a frontend's wake-ups remember; past
// it the next pass is a full scan.
const maxWorkDevices = 10_000

// addWork records that devices of frontend fe may have commands due, and
// wakes its long poll.
func (n *notifier) addWork(fe string, devs ...string) {
	n.mu.Lock()
	set := n.work[fe]
	if set == nil {
		set = map[string]struct{}{}
		n.work[fe] = set
	}
	for _, d := range devs {
		if len(set) >= maxWorkDevices {
			delete(n.lastFull, fe) // too many: scan them all
			break
		}
		set[d] = struct{}{}
	}
	n.mu.Unlock()
	n.fire(n.fes, fe)
}

// takeWork returns the devices recorded for fe (and forgets them), and
// whether a full scan is due instead (at most one per every).
func (n *notifier) takeWork(fe string, now time.Time, every time.Duration) (devs []string, full bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	set := n.work[fe]
	delete(n.work, fe)
	if now.Sub(n.lastFull[fe]) >= every {
		n.lastFull[fe] = now
		return nil, true
	}
	for d := range set {
		devs = append(devs, d)
	}
	return devs, false
}

// wakeDeviceFrontend wakes the frontend that holds the device, if any,
// for that device.
func (s *Server) wakeDeviceFrontend(ctx context.Context, devID string) {
	var fe string
	err := s.db.rdb.QueryRowContext(ctx, `SELECT frontend FROM device_presence WHERE device_id = $1 AND connected = 1`, devID).Scan(&fe)
	if err == nil {
		s.notify.addWork(fe, devID)
	}
}

// resendDelay is how long after an attempt a command not reported received
// is due again.
func (c CommandConfig) resendDelay(attempts int) time.Duration {
	return c.Resend << min(max(attempts-1, 0), 4)
}

// Dispatch is the answer of GET /v1/frontends/{id}/commands.
type Dispatch = apiclient.Dispatch

const maxDispatch = 1000

// frontendCommands answers GET /v1/frontends/{id}/commands[?wait=25s]: the
// commands now due for the devices this frontend holds, marked sent to it.
// With wait it answers as soon as there is one, or empty when the wait ends.
func (s *Server) frontendCommands(w http.ResponseWriter, r *http.Request, _ *principal) error {
	fe := r.PathValue("id")
	if err := daemon.ValidateID(fe); err != nil {
		return errBadRequest("frontend id: %v", err)
	}
	wait, err := parseWait(r, s.cfg.FeedMaxWait)
	if err != nil {
		return err
	}
	ctx := r.Context()
	deadline := time.Now().Add(wait)
	for {
		// Watch before reading, so that a change between the read and the
		// wait is not missed.
		ch, release := s.notify.watchFrontend(fe)
		now := time.Now()
		var cmds []DispatchedCommand
		devs, full := s.notify.takeWork(fe, now, s.cfg.Commands.Poll)
		if full || len(devs) > 0 {
			cmds, err = s.dispatch(ctx, fe, now, devs)
		}
		if err != nil || len(cmds) > 0 {
			release()
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, Dispatch{Commands: cmds})
			return nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			release()
			writeJSON(w, http.StatusOK, Dispatch{Commands: []DispatchedCommand{}})
			return nil
		}
		timer := time.NewTimer(min(left, s.cfg.Commands.Poll))
		select {
		case <-ch:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		release()
		if ctx.Err() != nil {
			return nil
		}
	}
}

// dueRow is an open command of a device held by the frontend.
type dueRow struct {
	DispatchedCommand
	state    string
	sentAt   sql.NullInt64
	sentTo   string
	attempts int
	lastSeen int64
}

// dispatch picks the commands due for fe's devices at now (only those of
// devs unless devs is nil) and marks them sent to fe. Reading is outside
// the write transaction (cheap, concurrent); each mark is conditional on
// the row being unchanged, so two dispatches never hand out the same
// attempt.
func (s *Server) dispatch(ctx context.Context, fe string, now time.Time, devs []string) ([]DispatchedCommand, error) {
	args := []any{fe}
	only := ""
	if devs != nil {
		only = ` AND c.device_id IN (` + placeholders(2, len(devs)) + `)`
		for _, d := range devs {
			args = append(args, d)
		}
	}
	rows, err := s.db.rdb.QueryContext(ctx, `SELECT c.id, c.device_id, c.seq, c.name, c.params, c.expires_at, c.state,
 c.sent_at, c.sent_to, c.attempts, p.last_seen_at
FROM commands c JOIN device_presence p ON p.device_id = c.device_id
WHERE p.frontend = $1 AND p.connected = 1 AND c.state IN `+openStates+only+`
ORDER BY c.device_id, c.seq`, args...)
	if err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	var open []dueRow
	for rows.Next() {
		var d dueRow
		var params string
		if err := rows.Scan(&d.ID, &d.DeviceID, &d.Seq, &d.Name, &params, &d.ExpiresAt, &d.state, &d.sentAt, &d.sentTo,
			&d.attempts, &d.lastSeen); err != nil {
			rows.Close()
			return nil, fmt.Errorf("dispatch: %w", err)
		}
		if err := json.Unmarshal([]byte(params), &d.Params); err != nil {
			d.Params = map[string]string{}
		}
		open = append(open, d)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("dispatch: %w", err)
	}
	nowMs := now.UnixMilli()
	var due []dueRow
	blocked := ""
	for _, d := range open {
		if d.DeviceID == blocked || len(due) >= maxDispatch {
			continue
		}
		if d.state == CmdDelivered || d.ExpiresAt <= nowMs {
			continue // on the device already; or expired, never sent (the sweep marks it)
		}
		if d.sentAt.Valid {
			reconnected := d.lastSeen > d.sentAt.Int64
			if !reconnected && nowMs < d.sentAt.Int64+s.cfg.Commands.resendDelay(d.attempts).Milliseconds() {
				blocked = d.DeviceID // an attempt in flight holds the later ones back
				continue
			}
		}
		due = append(due, d)
	}
	if len(due) == 0 {
		return nil, nil
	}
	var out []DispatchedCommand
	var evs []CommandEvent
	err = s.db.writeGroup(ctx, func(t *tx) error {
		out, evs = out[:0], evs[:0]
		stop := ""
		for _, d := range due {
			if d.DeviceID == stop {
				continue
			}
			res, err := t.execW(dispatchMark, CmdSent, nowMs, fe, d.ID, d.state, d.attempts)
			if err != nil {
				return fmt.Errorf("mark command sent: %w", err)
			}
			if n, _ := res.RowsAffected(); n == 0 {
				stop = d.DeviceID // changed meanwhile: keep order, take it next time
				continue
			}
			out = append(out, d.DispatchedCommand)
			evs = append(evs, CommandEvent{ID: d.ID, DeviceID: d.DeviceID, State: CmdSent, At: msTime(nowMs)})
		}
		return t.notifyCommands(evs...)
	})
	if err != nil {
		return nil, err
	}
	ids := make([]string, len(out))
	for i, c := range out {
		ids[i] = c.ID
	}
	s.notify.commandsChanged(ids...)
	s.events.publish(evs...)
	s.metrics.commands.WithLabelValues("sent").Add(float64(len(out)))
	return out, nil
}

// dispatchMark marks a command sent to a frontend, if it is as read.
const dispatchMark = `UPDATE commands SET state = $1, sent_at = $2, sent_to = $3, attempts = attempts + 1,
 updated_at = $2 WHERE id = $4 AND state = $5 AND attempts = $6`

// CommandReports is the body of POST /v1/frontends/{id}/command-reports.
type CommandReports = apiclient.CommandReports

// frontendCommandReports answers POST /v1/frontends/{id}/command-reports:
// what devices reported, and the commands the frontend could not write, in
// one transaction. A report that cannot apply (unknown command, another
// device's, a step back) is ignored and counted, not refused: the frontend
// must be able to tell the device its report is taken, whatever it said.
func (s *Server) frontendCommandReports(w http.ResponseWriter, r *http.Request, _ *principal) error {
	fe := r.PathValue("id")
	if err := daemon.ValidateID(fe); err != nil {
		return errBadRequest("frontend id: %v", err)
	}
	var in CommandReports
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	if len(in.Reports) > apiclient.MaxCommandReports {
		return errInvalid("reports", "reports: %d, at most %d per request", len(in.Reports), apiclient.MaxCommandReports)
	}
	for i, rep := range in.Reports {
		switch rep.Outcome {
		case apiclient.OutcomeReceived, apiclient.OutcomeSucceeded, apiclient.OutcomeFailed, apiclient.OutcomeUndeliverable,
			apiclient.OutcomeDownloading, apiclient.OutcomeVerifying, apiclient.OutcomeInstalling:
		default:
			return errInvalid("reports", "report %d: outcome %q, want received, downloading, verifying, installing, succeeded, failed or undeliverable", i, rep.Outcome)
		}
		if rep.Bytes < 0 {
			return errInvalid("reports", "report %d: bytes %d, want >= 0", i, rep.Bytes)
		}
	}
	ctx := r.Context()
	var changed []string
	var evs []CommandEvent
	applied := map[string]int{}
	err := s.db.writeGroup(ctx, func(t *tx) error {
		changed, evs = changed[:0], evs[:0]
		clear(applied)
		for _, rep := range in.Reports {
			res, err := s.applyReport(t, fe, rep)
			if err != nil {
				return err
			}
			applied[res]++
			if res != "ignored" {
				changed = append(changed, rep.ID)
				ev := CommandEvent{ID: rep.ID, DeviceID: rep.DeviceID, State: res, At: msTime(t.ms())}
				switch res {
				case "requeued":
					ev.State = CmdQueued
				case ProgressDownloading, ProgressVerifying, ProgressInstalling:
					ev.State, ev.Progress, ev.Bytes = CmdDelivered, res, rep.Bytes
				}
				evs = append(evs, ev)
			}
		}
		return t.notifyCommands(evs...)
	})
	if err != nil {
		return err
	}
	for res, n := range applied {
		s.metrics.commands.WithLabelValues(res).Add(float64(n))
	}
	s.notify.commandsChanged(changed...)
	s.events.publish(evs...)
	// A report may unblock the device's next command.
	devs := make([]string, 0, len(in.Reports))
	for _, rep := range in.Reports {
		devs = append(devs, rep.DeviceID)
	}
	s.notify.addWork(fe, devs...)
	writeJSON(w, http.StatusOK, map[string]int{"applied": len(changed), "ignored": applied["ignored"]})
	return nil
}

// applyReport applies one report in t and returns the metric label of
// what it did: the new state (or progress stage), "requeued", or
// "ignored". One conditional UPDATE each: a report that cannot apply (an
// unknown command, another device's, a step back) changes no row.
//
// The device's word is the truth, even about a command marked expired
// while its report was on the way, as long as it was ever sent (attempts
// > 0). Progress means the device has the command (so it is delivered,
// even if its received report was lost) and is working on it; the last
// stage named wins (a device that found its image corrupt downloads
// again), and the bytes are the downloading reports' only.
func (s *Server) applyReport(t *tx, fe string, rep apiclient.CommandReport) (string, error) {
	now := t.ms()
	var res sql.Result
	var err error
	label := rep.Outcome
	switch rep.Outcome {
	case apiclient.OutcomeUndeliverable:
		label = "requeued"
		res, err = t.execW(reportRequeue, CmdQueued, now, rep.ID, rep.DeviceID, fe)
	case apiclient.OutcomeReceived:
		label = CmdDelivered
		res, err = t.execW(reportReceived, CmdDelivered, now, rep.ID, rep.DeviceID)
	case apiclient.OutcomeDownloading:
		res, err = t.execW(reportProgress+reportProgressBytes+reportProgressWhere, CmdDelivered, now, rep.Outcome, rep.ID, rep.DeviceID, rep.Bytes)
	case apiclient.OutcomeVerifying, apiclient.OutcomeInstalling:
		res, err = t.execW(reportProgress+reportProgressWhere, CmdDelivered, now, rep.Outcome, rep.ID, rep.DeviceID)
	default:
		label = CmdSucceeded
		if rep.Outcome == apiclient.OutcomeFailed {
			label = CmdFailed
		}
		res, err = t.execW(reportResult, label, now, truncate(rep.Message, 1024), truncate(rep.Payload, 4096), rep.ID, rep.DeviceID)
	}
	if err != nil {
		return "", fmt.Errorf("apply report (%s) of command %s: %w", rep.Outcome, rep.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return "ignored", nil
	}
	return label, nil
}

// The statements of applyReport (prepared once on SQLite).
const (
	reportRequeue = `UPDATE commands SET state = $1, sent_to = '', updated_at = $2
 WHERE id = $3 AND device_id = $4 AND state = 'sent' AND sent_to = $5`
	reportReceived = `UPDATE commands SET state = $1, delivered_at = $2, completed_at = NULL, updated_at = $2
 WHERE id = $3 AND device_id = $4 AND attempts > 0 AND state IN ('queued', 'sent', 'expired')`
	reportProgress = `UPDATE commands SET state = $1, delivered_at = COALESCE(delivered_at, $2), completed_at = NULL,
 progress = $3, progress_at = $2, updated_at = $2`
	reportProgressBytes = `, progress_bytes = $6`
	reportProgressWhere = ` WHERE id = $4 AND device_id = $5 AND attempts > 0 AND state IN ('queued', 'sent', 'delivered', 'expired')`
	reportResult        = `UPDATE commands SET state = $1, delivered_at = COALESCE(delivered_at, $2), completed_at = $2,
 message = $3, payload = $4, updated_at = $2
 WHERE id = $5 AND device_id = $6 AND attempts > 0 AND state IN ('queued', 'sent', 'delivered', 'expired')`
)

func wrapErr(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// sweepCommands marks expired what expired before reaching the device:
// queued commands at their expiry, sent ones ReportGrace later (a report
// of a command written just before its expiry may be on the way). Once a
// minute it also prunes the commands finished longer than Retention ago.
func (s *Server) sweepCommands(ctx context.Context) {
	t := time.NewTicker(s.cfg.Commands.Poll)
	defer t.Stop()
	var lastPrune time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		if err := s.sweepOnce(ctx, now); err != nil && ctx.Err() == nil {
			s.log.Error("api: command expiry sweep failed", "err", err)
		}
		if now.Sub(lastPrune) >= pruneEvery {
			lastPrune = now
			if _, err := s.pruneCommands(ctx, now); err != nil && ctx.Err() == nil {
				s.log.Error("api: command retention: pruning finished commands failed", "err", err)
			}
		}
	}
}

func (s *Server) sweepOnce(ctx context.Context, now time.Time) error {
	nowMs := now.UnixMilli()
	grace := s.cfg.Commands.ReportGrace.Milliseconds()
	const pick = `SELECT id, device_id FROM commands WHERE state IN ` + openStates + ` AND
 ((state = 'queued' AND expires_at <= $1) OR (state = 'sent' AND expires_at <= $2))`
	rows, err := s.db.rdb.QueryContext(ctx, pick, nowMs, nowMs-grace)
	if err != nil {
		return fmt.Errorf("sweep: %w", err)
	}
	var ids []string
	devOf := map[string]string{}
	for rows.Next() {
		var id, dev string
		if err := rows.Scan(&id, &dev); err != nil {
			rows.Close()
			return fmt.Errorf("sweep: %w", err)
		}
		ids = append(ids, id)
		devOf[id] = dev
	}
	rows.Close()
	if len(ids) == 0 {
		return nil
	}
	var done []string
	var evs []CommandEvent
	err = s.db.write(ctx, func(t *tx) error {
		done, evs = done[:0], evs[:0]
		for _, id := range ids {
			res, err := t.ExecContext(ctx, `UPDATE commands SET state = $1, completed_at = $2, updated_at = $2
WHERE id = $3 AND ((state = 'queued' AND expires_at <= $2) OR (state = 'sent' AND expires_at <= $4))`, CmdExpired, nowMs, id, nowMs-grace)
			if err != nil {
				return fmt.Errorf("expire command: %w", err)
			}
			if n, _ := res.RowsAffected(); n > 0 {
				done = append(done, id)
				evs = append(evs, CommandEvent{ID: id, DeviceID: devOf[id], State: CmdExpired, At: msTime(nowMs)})
			}
		}
		return t.notifyCommands(evs...)
	})
	if err != nil {
		return err
	}
	s.metrics.commands.WithLabelValues(CmdExpired).Add(float64(len(done)))
	s.notify.commandsChanged(done...)
	s.events.publish(evs...)
	return nil
}
