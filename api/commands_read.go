package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// Reading commands: the columns, their scan, and the read of one command
// in the caller's scope.

const commandCols = `id, device_id, seq, name, params, idempotency_key, state, created_at, created_by, expires_at,
 sent_at, sent_to, attempts, delivered_at, completed_at, cancelled_by, message, payload, progress, progress_bytes, progress_at`

func scanCommand(sc scanner) (Command, error) {
	var c Command
	var params string
	var idem sql.NullString
	var created, expires int64
	var sent, delivered, completed, progressAt sql.NullInt64
	var progress string
	var progressBytes int64
	err := sc.Scan(&c.ID, &c.DeviceID, &c.Seq, &c.Name, &params, &idem, &c.State, &created, &c.CreatedBy, &expires,
		&sent, &c.SentTo, &c.Attempts, &delivered, &completed, &c.CancelledBy, &c.Message, &c.Payload,
		&progress, &progressBytes, &progressAt)
	if err != nil {
		return c, err
	}
	if progress != "" {
		c.Progress = &CommandProgress{Stage: progress, Bytes: progressBytes, At: msTime(progressAt.Int64)}
	}
	if err := json.Unmarshal([]byte(params), &c.Params); err != nil || c.Params == nil {
		c.Params = map[string]string{}
	}
	c.IdempotencyKey = idem.String
	c.CreatedAt, c.ExpiresAt = msTime(created), msTime(expires)
	c.SentAt, c.DeliveredAt, c.CompletedAt = optTime(sent), optTime(delivered), optTime(completed)
	return c, nil
}

// loadCommand reads a command of a device the caller sees (404 otherwise).
func loadCommand(ctx context.Context, q querier, p *principal, devID, id string) (Command, error) {
	// One statement, the device's fleet beside the command: this is the
	// read of every wait's end. Only a miss reads the device, to say
	// which of the two is not there.
	var fleet string
	c, err := scanCommand(withScan{q.QueryRowContext(ctx, commandWithFleet, id, devID), []any{&fleet}})
	if errors.Is(err, sql.ErrNoRows) {
		if _, err := loadDevice(ctx, q, p, devID); err != nil {
			return Command{}, err
		}
		return c, errNotFound("command", id)
	}
	if err != nil {
		return c, fmt.Errorf("read command %s: %w", id, err)
	}
	if !p.sees(fleet) {
		return Command{}, errNotFound("device", devID)
	}
	return c, nil
}

// commandWithFleet reads a command and its device's fleet.
var commandWithFleet = `SELECT c.` + strings.Join(strings.Fields(strings.ReplaceAll(commandCols, ",", " ")), ", c.") +
	`, COALESCE(d.fleet, '') FROM commands c JOIN devices d ON d.id = c.device_id WHERE c.id = $1 AND c.device_id = $2`

// withScan scans a row's first columns as its caller asks and the rest
// into extra.
type withScan struct {
	sc    scanner
	extra []any
}

func (w withScan) Scan(dest ...any) error { return w.sc.Scan(append(dest, w.extra...)...) }
