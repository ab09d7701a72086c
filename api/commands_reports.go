package api

import (
	"database/sql"
	"errors"
	"fmt"

	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/jackc/pgx/v5"
)

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
//
// A result that a request of this replica waits for (?wait) is written
// with RETURNING: the row goes to the waiter (final), which then answers
// without reading it again.
func (s *Server) applyReport(t *tx, fe string, rep apiclient.CommandReport) (label string, final *Command, err error) {
	label, query, args := reportWrite(fe, t.ms(), rep)
	if query == reportResult && s.notify.watchingCommand(rep.ID) {
		c, err := scanCommand(t.queryRowW(reportResultReturning, args...))
		switch {
		case errors.Is(err, sql.ErrNoRows):
			return "ignored", nil, nil
		case err != nil:
			return "", nil, fmt.Errorf("apply report (%s) of command %s: %w", rep.Outcome, rep.ID, err)
		}
		return label, &c, nil
	}
	res, err := t.execW(query, args...)
	if err != nil {
		return "", nil, fmt.Errorf("apply report (%s) of command %s: %w", rep.Outcome, rep.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return "ignored", nil, nil
	}
	return label, nil, nil
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
		return rep.Outcome, reportProgress + reportProgressBytes + reportProgressWhere,
			[]any{CmdDelivered, now, rep.Outcome, rep.ID, rep.DeviceID, rep.Bytes}
	case apiclient.OutcomeVerifying, apiclient.OutcomeInstalling:
		return rep.Outcome, reportProgress + reportProgressWhere, []any{CmdDelivered, now, rep.Outcome, rep.ID, rep.DeviceID}
	}
	label = CmdSucceeded
	if rep.Outcome == apiclient.OutcomeFailed {
		label = CmdFailed
	}
	return label, reportResult, []any{label, now, truncate(rep.Message, 1024), truncate(rep.Payload, 4096), rep.ID, rep.DeviceID}
}

// applyReports applies reps in order and returns each one's label
// (applyReport). On PostgreSQL their statements go as one pgx batch, one
// round trip (with BEGIN when it is the transaction's first): run in
// order in the transaction, as one by one (a later report of a command
// sees what an earlier one wrote).
// It also returns the final rows read for waiters, by command id.
func (s *Server) applyReports(t *tx, fe string, reps []apiclient.CommandReport) ([]string, map[string]*Command, error) {
	labels := make([]string, len(reps))
	var finals map[string]*Command
	keep := func(c *Command) {
		if finals == nil {
			finals = map[string]*Command{}
		}
		finals[c.ID] = c
	}
	if t.s.driver != DriverPostgres || len(reps) == 0 {
		for i, rep := range reps {
			l, c, err := s.applyReport(t, fe, rep)
			if err != nil {
				return nil, nil, err
			}
			labels[i] = l
			if c != nil {
				keep(c)
			}
		}
		return labels, finals, nil
	}
	b := &pgx.Batch{}
	returning := make([]bool, len(reps))
	for i, rep := range reps {
		label, query, args := reportWrite(fe, t.ms(), rep)
		labels[i] = label
		if query == reportResult && s.notify.watchingCommand(rep.ID) {
			query, returning[i] = reportResultReturning, true
		}
		b.Queue(query, args...)
	}
	err := t.batch(b, func(br pgx.BatchResults) error {
		for i, rep := range reps {
			if returning[i] {
				c, err := scanCommand(br.QueryRow())
				switch {
				case errors.Is(err, pgx.ErrNoRows):
					labels[i] = "ignored"
				case err != nil:
					return fmt.Errorf("apply report (%s) of command %s: %w", rep.Outcome, rep.ID, err)
				default:
					keep(&c)
				}
				continue
			}
			tag, err := br.Exec()
			if err != nil {
				return fmt.Errorf("apply report (%s) of command %s: %w", rep.Outcome, rep.ID, err)
			}
			if tag.RowsAffected() == 0 {
				labels[i] = "ignored"
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return labels, finals, nil
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
	// reportResultReturning is reportResult for a command a request waits
	// for: the row it wrote comes back.
	reportResultReturning = reportResult + ` RETURNING ` + commandCols
)
