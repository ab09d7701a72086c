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
// decommissioned, $15 the queue limit, $16 the frontends whose polls this
// replica answers: a command for a device one of them holds, with none of
// its own waiting, is inserted sent to it (a hand-off, commands_handoff.go).
const createCommandPG = `WITH d AS (
 SELECT COALESCE(d.fleet, '') AS fleet, d.state,
  (SELECT COUNT(*) FROM commands c WHERE c.device_id = d.id AND c.state IN ('queued', 'sent')) AS waiting,
  (SELECT COALESCE(MAX(c.seq), 0) + 1 FROM commands c WHERE c.device_id = d.id) AS seq,
  COALESCE((SELECT p.frontend FROM device_presence p WHERE p.device_id = d.id AND p.connected = 1), '') AS frontend,
  COALESCE((SELECT c.id FROM commands c WHERE c.device_id = d.id AND c.idempotency_key = $5), '') AS old
 FROM devices d WHERE d.id = $2),
h AS (SELECT d.*, d.waiting = 0 AND d.frontend <> '' AND d.frontend = ANY($16::text[]) AS handed FROM d),
ins AS (
 INSERT INTO commands (id, device_id, seq, name, params, idempotency_key, state, created_at,
  created_by, key_id, request_id, expires_at, updated_at, sent_at, sent_to, attempts)
 SELECT $1, $2, h.seq, $3, $4, $5, CASE WHEN h.handed THEN 'sent' ELSE $6::text END, $7::bigint, $8, $9, $10, $11,
  $7::bigint, CASE WHEN h.handed THEN $7::bigint END, CASE WHEN h.handed THEN h.frontend ELSE '' END,
  CASE WHEN h.handed THEN 1 ELSE 0 END
 FROM h
 WHERE ($12 OR (h.fleet <> '' AND h.fleet = ANY($13))) AND h.state <> $14 AND h.old = '' AND h.waiting < $15
 RETURNING state)
SELECT h.fleet, h.state, h.waiting, h.seq, h.frontend, h.old, EXISTS (SELECT 1 FROM ins),
 COALESCE((SELECT state FROM ins), '') FROM h`

// createPostgres is createCommand's write on PostgreSQL. cmd comes filled
// but for its seq, which it sets if it inserted cmd; on an idempotency
// key already used for the same command it replaces cmd with that one and
// answers 200. It returns the frontend holding the device (to wake), or
// the create's refusal as createCommand's SQLite path would.
func (t *tx) createPostgres(p *principal, cmd *Command, params, requestID string, limit int, polling []string) (frontend string, status int, err error) {
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
		cmd.CreatedBy, p.KeyID, requestID, cmd.ExpiresAt.UnixMilli(), p.all, fleets, StateDecommissioned, int64(limit), polling)
	var fleet, state, old, inserted string
	var waiting, seq int64
	var found, ok bool
	err = t.batch(b, func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return fmt.Errorf("lock device %s: %w", devID, err)
		}
		err := br.QueryRow().Scan(&fleet, &state, &waiting, &seq, &frontend, &old, &ok, &inserted)
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
	case !ok && waiting >= int64(limit):
		return "", 0, errQueueFull(devID, limit)
	case !ok:
		return "", 0, fmt.Errorf("create command of %s: not inserted, for no reason read", devID)
	}
	cmd.Seq = seq
	if inserted == CmdSent {
		cmd.sentBy(frontend)
	}
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
