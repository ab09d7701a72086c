package api

import (
	"database/sql"
	"errors"
	"fmt"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/jackc/pgx/v5"
)

// applyReports applies reps in order in t and returns what each did. One
// conditional UPDATE each: a report that cannot apply (an unknown command,
// another device's, a step back) changes no row and is "ignored". On
// PostgreSQL the statements go as one pgx batch, one round trip (with BEGIN
// when it is the transaction's first), run in order in the transaction as
// one by one would (a later report of a command sees what an earlier one
// wrote); on SQLite each is a prepared statement.
//
// The device's word is the truth, even about a command marked expired
// while its report was on the way, as long as it was ever sent (attempts
// > 0). Progress means the device has the command (so it is delivered,
// even if its received report was lost) and is working on it; the last
// stage named wins (a device that found its image corrupt downloads
// again), and the bytes are the downloading reports' only.
//
// Every statement returns a row when it applies. A report that moves a
// command past sent (received, progress, a result) returns whether the
// device has a command queued, which it may have made due: only then is
// the frontend's poll woken for the device (a poll's read of a device with
// nothing due was 7.6% of the api's CPU at 500 commands/s;
// docs/performance.md). A requeue always wakes it. A result that a request
// of this replica waits for (?wait) also returns the row, which the waiter
// answers without reading it again.
func (s *Server) applyReports(t *tx, fe string, reps []apiclient.CommandReport) ([]applied, error) {
	out := make([]applied, len(reps))
	stmts := make([]reportStatement, len(reps))
	for i, rep := range reps {
		stmts[i] = s.reportWrite(fe, t.ms(), rep)
	}
	apply := func(i int, row scanner) error {
		a, err := stmts[i].scan(row)
		if err != nil {
			return fmt.Errorf("apply report (%s) of command %s: %w", reps[i].Outcome, reps[i].ID, err)
		}
		out[i] = a
		return nil
	}
	if t.s.driver != DriverPostgres || len(reps) == 0 {
		for i, st := range stmts {
			if err := apply(i, t.queryRowW(st.query, st.args...)); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	b := &pgx.Batch{}
	for _, st := range stmts {
		b.Queue(st.query, st.args...)
	}
	err := t.batch(b, func(br pgx.BatchResults) error {
		for i := range stmts {
			if err := apply(i, br.QueryRow()); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// applied is what one report did: its metric label (the new state or
// progress stage, "requeued", or "ignored"), whether a command of the
// device may now be due (wake its frontend's poll), and the command's
// final row when a request of this replica waits for it.
type applied struct {
	label string
	wake  bool
	final *Command
}

// reportStatement is the statement that applies a report, and the label
// of what it does if it changes a row.
type reportStatement struct {
	label, query string
	args         []any
}

// reportWrite is the statement that applies rep (applyReports).
func (s *Server) reportWrite(fe string, now int64, rep apiclient.CommandReport) reportStatement {
	switch rep.Outcome {
	case apiclient.OutcomeUndeliverable:
		return reportStatement{"requeued", reportRequeue, []any{CmdQueued, now, rep.ID, rep.DeviceID, fe}}
	case apiclient.OutcomeReceived:
		return reportStatement{CmdDelivered, reportReceived, []any{CmdDelivered, now, rep.ID, rep.DeviceID}}
	case apiclient.OutcomeDownloading:
		return reportStatement{rep.Outcome, reportProgressDownloading, []any{CmdDelivered, now, rep.Outcome, rep.ID, rep.DeviceID, rep.Bytes}}
	case apiclient.OutcomeVerifying, apiclient.OutcomeInstalling:
		return reportStatement{rep.Outcome, reportProgressStage, []any{CmdDelivered, now, rep.Outcome, rep.ID, rep.DeviceID}}
	}
	st := reportStatement{CmdSucceeded, reportResult, []any{CmdSucceeded, now, truncate(rep.Message, 1024), truncate(rep.Payload, 4096), rep.ID, rep.DeviceID}}
	if rep.Outcome == apiclient.OutcomeFailed {
		st.label, st.args[0] = CmdFailed, CmdFailed
	}
	if s.notify.watchingCommand(rep.ID) {
		st.query = reportResultReturning
	}
	return st
}

// scan reads what st's statement returned: nothing (ignored), whether to
// wake the device's poll, and the row of a waited-for result.
func (st reportStatement) scan(row scanner) (applied, error) {
	a := applied{label: st.label}
	var err error
	if st.query == reportResultReturning {
		var c Command
		c, err = scanCommand(withScan{sc: row, extra: []any{&a.wake}})
		a.final = &c
	} else {
		err = row.Scan(&a.wake)
	}
	switch {
	case errors.Is(err, sql.ErrNoRows), errors.Is(err, pgx.ErrNoRows):
		return applied{label: "ignored"}, nil
	case err != nil:
		return applied{}, err
	}
	return a, nil
}

// reportBehind ends the report statements that move a command past sent:
// whether the device has a command queued (behind it, or requeued), which
// the report may have made due.
const reportBehind = ` RETURNING EXISTS (SELECT 1 FROM commands b WHERE b.device_id = commands.device_id AND b.state = 'queued')`

// The statements of applyReport (prepared once on SQLite).
const (
	reportRequeue = `UPDATE commands SET state = $1, sent_to = '', updated_at = $2
 WHERE id = $3 AND device_id = $4 AND state = 'sent' AND sent_to = $5 RETURNING TRUE`
	reportReceived = `UPDATE commands SET state = $1, delivered_at = $2, completed_at = NULL, updated_at = $2
 WHERE id = $3 AND device_id = $4 AND attempts > 0 AND state IN ('queued', 'sent', 'expired')` + reportBehind
	reportProgress = `UPDATE commands SET state = $1, delivered_at = COALESCE(delivered_at, $2), completed_at = NULL,
 progress = $3, progress_at = $2, updated_at = $2`
	reportProgressWhere       = ` WHERE id = $4 AND device_id = $5 AND attempts > 0 AND state IN ('queued', 'sent', 'delivered', 'expired')`
	reportProgressDownloading = reportProgress + `, progress_bytes = $6` + reportProgressWhere + reportBehind
	reportProgressStage       = reportProgress + reportProgressWhere + reportBehind
	reportResultSet           = `UPDATE commands SET state = $1, delivered_at = COALESCE(delivered_at, $2), completed_at = $2,
 message = $3, payload = $4, updated_at = $2
 WHERE id = $5 AND device_id = $6 AND attempts > 0 AND state IN ('queued', 'sent', 'delivered', 'expired')`
	reportResult = reportResultSet + reportBehind
	// reportResultReturning is reportResult for a command a request waits
	// for: the row it wrote comes back, then whether one is queued.
	reportResultReturning = reportResultSet + ` RETURNING ` + commandCols + `,
 EXISTS (SELECT 1 FROM commands b WHERE b.device_id = commands.device_id AND b.state = 'queued')`
)
