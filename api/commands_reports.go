package api

import (
	"database/sql"
	"errors"
	"fmt"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/jackc/pgx/v5"
)

// applied is what one report did: its metric label (the new state or
// progress stage, "requeued", or "ignored"), whether a command of the
// device may now be due (wake its frontend's poll), and the command's
// final row when a request of this replica waits for it.
type applied struct {
	label string
	wake  bool
	final *Command
}

// applyReport applies one report in t. One conditional UPDATE each: a
// report that cannot apply (an unknown command, another device's, a step
// back) changes no row.
//
// The device's word is the truth, even about a command marked expired
// while its report was on the way, as long as it was ever sent (attempts
// > 0). Progress means the device has the command (so it is delivered,
// even if its received report was lost) and is working on it; the last
// stage named wins (a device that found its image corrupt downloads
// again), and the bytes are the downloading reports' only.
//
// A report that moves a command past sent (received, progress, a result)
// may unblock the device's next command: its UPDATE returns whether one
// is queued, and only then is the frontend's poll woken for the device
// (a poll's read of a device with nothing due was 7.6% of the api's CPU
// at 500 commands/s; docs/performance.md). A requeue always wakes it. A
// result that a request of this replica waits for (?wait) also returns
// the row, which the waiter answers without reading it again.
func (s *Server) applyReport(t *tx, fe string, rep apiclient.CommandReport) (applied, error) {
	label, query, args := reportWrite(fe, t.ms(), rep)
	a := applied{label: label}
	var err error
	switch {
	case query == reportRequeue:
		var res sql.Result
		if res, err = t.execW(query, args...); err == nil {
			if n, err := res.RowsAffected(); err != nil || n == 0 {
				return applied{label: "ignored"}, nil
			}
			a.wake = true
		}
	case query == reportResult && s.notify.watchingCommand(rep.ID):
		var c Command
		c, err = scanCommand(withScan{sc: t.queryRowW(reportResultReturning, args...), extra: []any{&a.wake}})
		a.final = &c
	default:
		err = t.queryRowW(query, args...).Scan(&a.wake)
	}
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return applied{label: "ignored"}, nil
	case err != nil:
		return applied{}, fmt.Errorf("apply report (%s) of command %s: %w", rep.Outcome, rep.ID, err)
	}
	return a, nil
}

// reportWrite is the statement that applies rep and the metric label of
// what it does if it changes a row (applyReport).
func reportWrite(fe string, now int64, rep apiclient.CommandReport) (label, query string, args []any) {
	switch rep.Outcome {
	case apiclient.OutcomeUndeliverable:
		return "requeued", reportRequeue, []any{CmdQueued, now, rep.ID, rep.DeviceID, fe}
	case apiclient.OutcomeReceived:
		return CmdDelivered, reportReceived, []any{CmdDelivered, now, rep.ID, rep.DeviceID}
	case apiclient.OutcomeDownloading:
		return rep.Outcome, reportProgressDownloading, []any{CmdDelivered, now, rep.Outcome, rep.ID, rep.DeviceID, rep.Bytes}
	case apiclient.OutcomeVerifying, apiclient.OutcomeInstalling:
		return rep.Outcome, reportProgressStage, []any{CmdDelivered, now, rep.Outcome, rep.ID, rep.DeviceID}
	}
	label = CmdSucceeded
	if rep.Outcome == apiclient.OutcomeFailed {
		label = CmdFailed
	}
	return label, reportResult, []any{label, now, truncate(rep.Message, 1024), truncate(rep.Payload, 4096), rep.ID, rep.DeviceID}
}

// applyReports applies reps in order and returns what each did
// (applyReport). On PostgreSQL their statements go as one pgx batch, one
// round trip (with BEGIN when it is the transaction's first): run in
// order in the transaction, as one by one (a later report of a command
// sees what an earlier one wrote).
func (s *Server) applyReports(t *tx, fe string, reps []apiclient.CommandReport) ([]applied, error) {
	out := make([]applied, len(reps))
	if t.s.driver != DriverPostgres || len(reps) == 0 {
		for i, rep := range reps {
			a, err := s.applyReport(t, fe, rep)
			if err != nil {
				return nil, err
			}
			out[i] = a
		}
		return out, nil
	}
	b := &pgx.Batch{}
	queries := make([]string, len(reps))
	for i, rep := range reps {
		label, query, args := reportWrite(fe, t.ms(), rep)
		out[i].label = label
		if query == reportResult && s.notify.watchingCommand(rep.ID) {
			query = reportResultReturning
		}
		queries[i] = query
		b.Queue(query, args...)
	}
	err := t.batch(b, func(br pgx.BatchResults) error {
		for i, rep := range reps {
			var err error
			switch queries[i] {
			case reportRequeue:
				tag, e := br.Exec()
				if err = e; err == nil {
					out[i].wake = tag.RowsAffected() > 0
					if !out[i].wake {
						out[i].label = "ignored"
					}
				}
			case reportResultReturning:
				var c Command
				if c, err = scanCommand(withScan{sc: br.QueryRow(), extra: []any{&out[i].wake}}); err == nil {
					out[i].final = &c
				}
			default:
				err = br.QueryRow().Scan(&out[i].wake)
			}
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				out[i] = applied{label: "ignored"}
			case err != nil:
				return fmt.Errorf("apply report (%s) of command %s: %w", rep.Outcome, rep.ID, err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// reportBehind ends the report statements that move a command past sent:
// whether the device has a command queued (behind it, or requeued), which
// the report may have made due.
const reportBehind = ` RETURNING EXISTS (SELECT 1 FROM commands b WHERE b.device_id = commands.device_id AND b.state = 'queued')`

// The statements of applyReport (prepared once on SQLite).
const (
	reportRequeue = `UPDATE commands SET state = $1, sent_to = '', updated_at = $2
 WHERE id = $3 AND device_id = $4 AND state = 'sent' AND sent_to = $5`
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
