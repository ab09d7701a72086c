package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/jackc/pgx/v5"
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
//
// With stream=true as well, the answer stays open for the wait and carries
// one line of NDJSON (a Dispatch) per batch of commands, as they become due:
// a frontend then takes a command without asking again for each one (an
// HTTP exchange less per command on both sides; docs/commands.md,
// "Delivery"). A batch written to a stream that then breaks is what a long
// poll's lost answer always was: sent, resent after -command-resend.
func (s *Server) frontendCommands(w http.ResponseWriter, r *http.Request, _ *principal) error {
	fe := r.PathValue("id")
	if err := daemon.ValidateID(fe); err != nil {
		return errBadRequest("frontend id: %v", err)
	}
	wait, err := parseWait(r, s.cfg.FeedMaxWait)
	if err != nil {
		return err
	}
	var stream http.Flusher
	switch v := r.URL.Query().Get("stream"); v {
	case "", "false":
	case "true":
		if stream, _ = w.(http.Flusher); stream == nil {
			return fmt.Errorf("frontend commands: the response cannot stream")
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Accel-Buffering", "no") // a proxy (nginx) passes each line on at once
	default:
		return errBadRequest("stream: %q, want true or false", v)
	}
	var lines *json.Encoder
	if stream != nil {
		lines = json.NewEncoder(w)
	}
	ctx := r.Context()
	deadline := time.Now().Add(wait)
	streamed := false // a line is written: the status and headers have gone
	defer s.handoff.pollBegin(fe)()
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
		if err != nil {
			release()
			if streamed { // the answer has begun: end it, the frontend asks again
				s.log.Warn("api: command stream ended by a failed dispatch", "frontend", fe, "err", err)
				return nil
			}
			return err // the hand-offs wait for the next poll
		}
		handed, stale := s.handoff.take(fe, now, s.cfg.Commands.Resend) // commands_handoff.go
		if stale > 0 {
			s.metrics.handoffs.WithLabelValues("stale").Add(float64(stale))
		}
		if cmds = mergeDispatched(handed, cmds); len(cmds) > 0 {
			release()
			s.metrics.handoffs.WithLabelValues("taken").Add(float64(len(handed)))
			if stream == nil {
				writeJSON(w, http.StatusOK, Dispatch{Commands: cmds})
				return nil
			}
			if err := lines.Encode(Dispatch{Commands: cmds}); err != nil {
				return nil // the frontend is gone: these are resent, as a lost answer's
			}
			stream.Flush()
			streamed = true
			continue
		}
		left := time.Until(deadline)
		if left <= 0 {
			release()
			if stream == nil {
				writeJSON(w, http.StatusOK, Dispatch{Commands: []DispatchedCommand{}})
			}
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

// dispatchQuery is the read of the open commands of fe's devices (only
// those of devs unless devs is nil). devs is one parameter, not an IN
// list: an IN list of n placeholders is a statement of its own for every
// n (parsed, planned and cached per connection), and PostgreSQL tests each
// row against an IN list's items one by one, so a poll that had fallen
// behind (thousands of devices with work) took seconds and fell further
// behind (docs/performance.md). On PostgreSQL it is an array (= ANY, an
// index condition on commands_open); on SQLite a JSON array that
// json_each unpacks, so that the three shapes are three statements, each
// prepared once (db_prepared.go) instead of parsed at every poll.
func dispatchQuery(driver, fe string, devs []string) (string, []any, error) {
	switch {
	case devs == nil:
		return dispatchAll, []any{fe}, nil
	case driver == DriverPostgres:
		return dispatchSomePG, []any{fe, devs}, nil
	}
	list, err := json.Marshal(devs)
	if err != nil {
		return "", nil, fmt.Errorf("dispatch: %w", err)
	}
	return dispatchSomeSQLite, []any{fe, string(list)}, nil
}

// dispatchSelect is the dispatch's read but for its devices' condition
// and order ($1 the frontend).
const dispatchSelect = `SELECT c.id, c.device_id, c.seq, c.name, c.params, c.expires_at, c.state,
 c.sent_at, c.sent_to, c.attempts, p.last_seen_at
FROM commands c JOIN device_presence p ON p.device_id = c.device_id
WHERE p.frontend = $1 AND p.connected = 1 AND c.state IN ` + openStates

// dispatchOrder ends the dispatch's read.
const dispatchOrder = `
ORDER BY c.device_id, c.seq`

// The dispatch's reads: all of a frontend's devices, or those of $2.
const (
	dispatchAll        = dispatchSelect + dispatchOrder
	dispatchSomePG     = dispatchSelect + ` AND c.device_id = ANY($2)` + dispatchOrder
	dispatchSomeSQLite = dispatchSelect + ` AND c.device_id IN (SELECT value FROM json_each($2))` + dispatchOrder
)

// dispatch picks the commands due for fe's devices at now (only those of
// devs unless devs is nil) and marks them sent to fe. Reading is outside
// the write transaction (cheap, concurrent); each mark is conditional on
// the row being unchanged, so two dispatches never hand out the same
// attempt.
func (s *Server) dispatch(ctx context.Context, fe string, now time.Time, devs []string) ([]DispatchedCommand, error) {
	query, args, err := dispatchQuery(s.db.driver, fe, devs)
	if err != nil {
		return nil, err
	}
	readAt := time.Now()
	rows, err := s.db.read.QueryContext(ctx, query, args...)
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
	var held []string // devices whose next command waits behind one in flight
	blocked := ""
	for _, d := range open {
		if d.DeviceID == blocked {
			if len(held) == 0 || held[len(held)-1] != blocked {
				held = append(held, blocked)
			}
			continue
		}
		if len(due) >= maxDispatch {
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
	// A report committed since the read began may have freed them: look
	// again (commands_holds.go).
	if again := s.holds.hold(held, readAt); len(again) > 0 {
		s.notify.addWork(fe, again...)
	}
	if len(due) == 0 {
		return nil, nil
	}
	var out []DispatchedCommand
	var evs []CommandEvent
	err = s.db.writeGroup(ctx, "", func(t *tx) error {
		out, evs = out[:0], evs[:0]
		if t.s.driver == DriverPostgres { // one round trip, with BEGIN when first (tx.batch)
			marked, err := markSentBatch(t, fe, nowMs, due)
			if err != nil {
				return err
			}
			for i, d := range due {
				if marked[i] {
					out = append(out, d.DispatchedCommand)
					evs = append(evs, CommandEvent{ID: d.ID, DeviceID: d.DeviceID, State: CmdSent, At: msTime(nowMs)})
				}
			}
			return t.notifyCommands(evs...)
		}
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
	// No waiter is woken: a sent command is not final (finalIDs).
	s.events.publish(evs...)
	s.metrics.commands.WithLabelValues("sent").Add(float64(len(out)))
	return out, nil
}

// dispatchMark marks a command sent to a frontend, if it is as read.
const dispatchMark = `UPDATE commands SET state = $1, sent_at = $2, sent_to = $3, attempts = attempts + 1,
 updated_at = $2 WHERE id = $4 AND state = $5 AND attempts = $6`

// dispatchMarkAfter conditions a mark on the command before it, of the
// same device, having been marked by this dispatch ($7: its id).
const dispatchMarkAfter = ` AND EXISTS (SELECT 1 FROM commands b WHERE b.id = $7 AND b.state = 'sent' AND b.sent_to = $3
 AND b.sent_at = $2)`

// markSentBatch marks due sent to fe, as the loop in dispatch does, in
// one round trip (PostgreSQL; with BEGIN when it is the transaction's
// first): one pgx batch of its marks, run in order,
// each of a device's later commands marked only if the one before it
// was (dispatchMarkAfter), so that a device's commands still stop at the
// first that changed meanwhile. It returns which were marked.
func markSentBatch(t *tx, fe string, nowMs int64, due []dueRow) ([]bool, error) {
	b := &pgx.Batch{}
	for i, d := range due {
		if i > 0 && due[i-1].DeviceID == d.DeviceID {
			b.Queue(dispatchMark+dispatchMarkAfter, CmdSent, nowMs, fe, d.ID, d.state, d.attempts, due[i-1].ID)
		} else {
			b.Queue(dispatchMark, CmdSent, nowMs, fe, d.ID, d.state, d.attempts)
		}
	}
	marked := make([]bool, len(due))
	err := t.batch(b, func(br pgx.BatchResults) error {
		for i := range due {
			tag, err := br.Exec()
			if err != nil {
				return fmt.Errorf("mark command sent: %w", err)
			}
			marked[i] = tag.RowsAffected() == 1
		}
		return nil
	})
	return marked, err
}

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
	var finals map[string]*Command
	var wake []string // devices a report may have given a command due
	err := s.db.writeGroup(ctx, "", func(t *tx) error {
		changed, evs = changed[:0], evs[:0]
		clear(applied)
		results, err := s.applyReports(t, fe, in.Reports)
		if err != nil {
			return err
		}
		finals, wake = nil, wake[:0]
		for i, rep := range in.Reports {
			res := results[i].label
			if results[i].final != nil {
				if finals == nil {
					finals = map[string]*Command{}
				}
				finals[rep.ID] = results[i].final
			}
			if results[i].wake {
				wake = append(wake, rep.DeviceID)
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
	s.notify.commandsFinal(finals)
	s.notify.commandsChanged(finalIDs(evs)...) // those without a row read
	s.events.publish(evs...)
	// A report may have unblocked the device's next command: the report
	// said one is queued, or a dispatch found one held back behind it
	// (commands_holds.go).
	wake = append(wake, s.holds.reportedAt(reportedDevices(in.Reports), time.Now())...)
	if len(wake) > 0 {
		s.notify.addWork(fe, wake...)
	}
	writeJSON(w, http.StatusOK, map[string]int{"applied": len(changed), "ignored": applied["ignored"]})
	return nil
}

// reportedDevices are the devices of reports that can free a device's next
// command: those that move a command past sent (received, progress, a
// result), as the report statements' own answer says (reportBehind). An
// undeliverable report requeues, and wakes by itself.
func reportedDevices(reps []apiclient.CommandReport) []string {
	var devs []string
	for _, r := range reps {
		if r.Outcome != apiclient.OutcomeUndeliverable {
			devs = append(devs, r.DeviceID)
		}
	}
	return devs
}

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
