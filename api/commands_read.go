package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Reading commands: the columns, their scan, the read of one command in
// the caller's scope, and the wait for its outcome.

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

// watched is a command as last known and the watch taken before it was
// read (or written).
type watched struct {
	c       Command
	w       *watch
	release func()
}

// waitCommand waits until the command is final or wait passes, and
// returns it as it then is. Its final state wakes it at once, whichever
// replica wrote it (LISTEN/NOTIFY on PostgreSQL); while this replica is not
// listening it reads the row every -command-poll instead, and the state
// reached short of final is read when the wait ends. start, when not nil,
// is what the caller knows already (its first read is skipped). A wake-up
// that brings the final row (a report of this replica read it as it
// wrote it) ends the wait without reading it again: the command was in
// the caller's scope when the wait began.
func (s *Server) waitCommand(ctx context.Context, p *principal, devID, id string, wait time.Duration, start *watched) (Command, error) {
	deadline := time.Now().Add(wait)
	for {
		var (
			c       Command
			err     error
			wt      *watch
			release func()
		)
		if start != nil {
			c, wt, release = start.c, start.w, start.release
			start = nil
		} else {
			wt, release = s.notify.watchCommand(id)
			c, err = loadCommand(ctx, s.db.read, p, devID, id)
		}
		ch := wt.ch
		if err != nil || cmdFinal(c.State) {
			release()
			return c, err
		}
		left := time.Until(deadline)
		if left <= 0 {
			release()
			return c, nil
		}
		// Poll only where a final state could come unannounced: on
		// PostgreSQL while this replica is not listening. On SQLite (one
		// replica) and while listening every final state wakes it; at
		// 500 commands/s on PostgreSQL the waits with polls were 23.7% of
		// the api's CPU, 13.9% without (docs/performance.md).
		poll := left
		if s.db.driver == DriverPostgres && !s.listening.Load() {
			poll = s.cfg.Commands.Poll
		}
		timer := time.NewTimer(min(left, poll))
		select {
		case <-ch:
			if wt.final != nil && wt.final.ID == id {
				timer.Stop()
				release()
				return *wt.final, nil
			}
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		release()
		if ctx.Err() != nil {
			return c, nil // the caller left: what it gets (nothing) is not an error of ours
		}
	}
}
