package api

import (
	"database/sql"
	"errors"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"
)

// A create on PostgreSQL, in one round trip (docs/performance.md,
// "Commands round trip"): the device's row lock and one statement that
// reads what the write needs and inserts the command if it may, sent
// together as a pgx batch. Two statements, not one: in READ COMMITTED a
// statement reads as of its start, so the next seq, the waiting count
// and the idempotency key are read by a statement that starts after the
// lock is held — after the create it waited for has committed — and stay
// true until this transaction commits (lockDeviceCommands says why the
// lock). The insert is conditional on what the same statement read (the
// caller sees the device, it is not decommissioned, the key is unused,
// the queue has room), so a refused create wrote nothing; the statement
// returns what it read, from which the refusal's reason is told apart as
// on SQLite. SQLite, which has no data-modifying WITH and no round trips,
// keeps its prepared read and insert (createCommand).

// createCommandPG reads the device and inserts the command if it may:
// $1 id, $2 device, $3 name, $4 params, $5 idempotency key, $6 state,
// $7 created_at, $8 created_by, $9 key_id, $10 request_id, $11
// expires_at, $12 the caller sees every fleet, $13 its fleets, $14
// decommissioned, $15 the queue limit.
const createCommandPG = `WITH d AS (
 SELECT COALESCE(d.fleet, '') AS fleet, d.state,
  (SELECT COUNT(*) FROM commands c WHERE c.device_id = d.id AND c.state IN ('queued', 'sent')) AS waiting,
  (SELECT COALESCE(MAX(c.seq), 0) + 1 FROM commands c WHERE c.device_id = d.id) AS seq,
  COALESCE((SELECT p.frontend FROM device_presence p WHERE p.device_id = d.id AND p.connected = 1), '') AS frontend,
  COALESCE((SELECT c.id FROM commands c WHERE c.device_id = d.id AND c.idempotency_key = $5), '') AS old
 FROM devices d WHERE d.id = $2),
ins AS (
 INSERT INTO commands (id, device_id, seq, name, params, idempotency_key, state, created_at,
  created_by, key_id, request_id, expires_at, updated_at)
 SELECT $1, $2, d.seq, $3, $4, $5, $6, $7, $8, $9, $10, $11, $7 FROM d
 WHERE ($12 OR (d.fleet <> '' AND d.fleet = ANY($13))) AND d.state <> $14 AND d.old = '' AND d.waiting < $15
 RETURNING 1)
SELECT d.fleet, d.state, d.waiting, d.seq, d.frontend, d.old, EXISTS (SELECT 1 FROM ins) FROM d`

// createPostgres is createCommand's write on PostgreSQL. cmd comes filled
// but for its seq, which it sets if it inserted cmd; on an idempotency
// key already used for the same command it replaces cmd with that one and
// answers 200. It returns the frontend holding the device (to wake), or
// the create's refusal as createCommand's SQLite path would.
func (t *tx) createPostgres(p *principal, cmd *Command, params, requestID string, limit int) (frontend string, status int, err error) {
	devID, idem := cmd.DeviceID, cmd.IdempotencyKey
	fleets := make([]string, 0, len(p.fleets))
	for f, ok := range p.fleets {
		if ok {
			fleets = append(fleets, f)
		}
	}
	b := &pgx.Batch{}
	b.Queue(lockDeviceCommand, devID)
	b.Queue(createCommandPG, cmd.ID, devID, cmd.Name, params, nullString(idem), CmdQueued, cmd.CreatedAt.UnixMilli(),
		cmd.CreatedBy, p.KeyID, requestID, cmd.ExpiresAt.UnixMilli(), p.all, fleets, StateDecommissioned, int64(limit))
	var fleet, state, old string
	var waiting, seq int64
	var inserted, found bool
	err = t.batch(b, func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("lock device %s: %w", devID, err)
		}
		err := br.QueryRow().Scan(&fleet, &state, &waiting, &seq, &frontend, &old, &inserted)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("create command of %s: %w", devID, err)
		}
		found = true
		return nil
	})
	switch {
	case err != nil:
		return "", 0, err
	case !found || !p.sees(fleet):
		return "", 0, errNotFound("device", devID)
	case state == StateDecommissioned:
		return "", 0, errInvalid("device", "device %q is decommissioned: it takes no commands", devID)
	case old != "":
		prev, err := t.idempotentReplay(devID, idem, cmd.Name, cmd.Params)
		if errors.Is(err, sql.ErrNoRows) { // the statement saw it in use
			return "", 0, fmt.Errorf("read command: %w", err)
		}
		if err != nil {
			return "", 0, err
		}
		*cmd = prev
		return frontend, http.StatusOK, nil
	case !inserted && waiting >= int64(limit):
		return "", 0, errQueueFull(devID, limit)
	case !inserted:
		return "", 0, fmt.Errorf("create command of %s: not inserted, for no reason read", devID)
	}
	cmd.Seq = seq
	return frontend, http.StatusCreated, nil
}

// idempotentReplay reads the command of devID created with Idempotency-Key
// idem: the same request again gets that command (200); another command
// under the key is a conflict (409). sql.ErrNoRows: the key is unused.
// Both stores' creates answer a used key with it.
func (t *tx) idempotentReplay(devID, idem, name string, params map[string]string) (Command, error) {
	old, err := scanCommand(t.queryRowW(commandByIdempotencyKey, devID, idem))
	if errors.Is(err, sql.ErrNoRows) {
		return Command{}, err
	}
	if err != nil {
		return Command{}, fmt.Errorf("read command: %w", err)
	}
	if old.Name != name || !sameParams(old.Params, params) {
		return Command{}, errConflict("Idempotency-Key %q was used for another command (%s %s) of this device", idem, old.ID, old.Name)
	}
	return old, nil
}
