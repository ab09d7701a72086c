package api

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// actorInfo is who made a change, for the audit log.
type actorInfo struct {
	actor, keyID, requestID, remote string
}

func actorOf(r *http.Request, p *principal) actorInfo {
	return actorInfo{actor: p.actor(), keyID: p.KeyID, requestID: requestID(r), remote: r.RemoteAddr}
}

// change is one audited change.
type change struct {
	action             string // device.create, device.state, fleet.update, ...
	objType, objID     string
	fleet, fleetBefore string
	before, after      any // JSON-encoded; nil for none
	version            int64
}

// audit records c, taking a new change version as the entry's id unless
// c.version is already one this transaction took.
func (t *tx) audit(a actorInfo, c change) error {
	id := c.version
	if id == 0 {
		id = t.next()
	}
	before, err := jsonOrNil(c.before)
	if err != nil {
		return err
	}
	after, err := jsonOrNil(c.after)
	if err != nil {
		return err
	}
	_, err = t.ExecContext(t.ctx, `
INSERT INTO audit (id, at, actor, key_id, action, object_type, object_id, fleet, fleet_before, before_json, after_json, request_id, remote_addr)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
		id, t.ms(), a.actor, a.keyID, c.action, c.objType, c.objID, nullString(c.fleet), nullString(c.fleetBefore),
		before, after, a.requestID, a.remote)
	if err != nil {
		return fmt.Errorf("write audit entry: %w", err)
	}
	return nil
}

func jsonOrNil(v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("audit: encode: %w", err)
	}
	return string(b), nil
}

// AuditEntry is one entry of the audit log.
type AuditEntry struct {
	ID         int64           `json:"id"`
	At         time.Time       `json:"at"`
	Actor      string          `json:"actor"`
	KeyID      string          `json:"key_id"`
	Action     string          `json:"action"`
	ObjectType string          `json:"object_type"`
	ObjectID   string          `json:"object_id"`
	Fleet      string          `json:"fleet"`
	Before     json.RawMessage `json:"before"`
	After      json.RawMessage `json:"after"`
	RequestID  string          `json:"request_id"`
	RemoteAddr string          `json:"remote_addr"`
}

// listAudit answers GET /v1/audit: newest first, filtered by object, actor
// and time; a scoped key sees the entries of its fleets only.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request, p *principal) error {
	pg, err := parsePage(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var qa queryArgs
	if pg.cursor != "" {
		c, err := strconv.ParseInt(pg.cursor, 10, 64)
		if err != nil {
			return errBadRequest("cursor: not one this API returned")
		}
		qa.add("id < ?", c)
	}
	for _, f := range []struct{ param, col string }{
		{"object_type", "object_type"}, {"object_id", "object_id"}, {"actor", "actor"}, {"action", "action"},
	} {
		if v := q.Get(f.param); v != "" {
			qa.add(f.col+" = ?", v)
		}
	}
	for _, f := range []struct{ param, op string }{{"since", ">="}, {"until", "<"}} {
		if v := q.Get(f.param); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return errBadRequest("%s: %q, want an RFC 3339 time (2025-01-02T15:04:05Z)", f.param, v)
			}
			qa.add("at "+f.op+" ?", t.UnixMilli())
		}
	}
	if fl := p.scopeFleets(); fl != nil {
		n := qa.next()
		ph := placeholders(n, len(fl))
		ph2 := placeholders(n+len(fl), len(fl))
		for _, f := range fl {
			qa.args = append(qa.args, f)
		}
		for _, f := range fl {
			qa.args = append(qa.args, f)
		}
		qa.where = append(qa.where, "(fleet IN ("+ph+") OR fleet_before IN ("+ph2+"))")
	}
	rows, err := s.db.rdb.QueryContext(r.Context(), `
SELECT id, at, actor, key_id, action, object_type, object_id, fleet, before_json, after_json, request_id, remote_addr
FROM audit`+qa.clause()+fmt.Sprintf(` ORDER BY id DESC LIMIT %d`, pg.limit+1), qa.args...)
	if err != nil {
		return fmt.Errorf("list audit: %w", err)
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var at int64
		var fleet, before, after sql.NullString
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.KeyID, &e.Action, &e.ObjectType, &e.ObjectID, &fleet, &before, &after,
			&e.RequestID, &e.RemoteAddr); err != nil {
			return fmt.Errorf("list audit: %w", err)
		}
		e.At, e.Fleet = time.UnixMilli(at).UTC(), fleet.String
		e.Before, e.After = rawOrNull(before), rawOrNull(after)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list audit: %w", err)
	}
	writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(e AuditEntry) string { return strconv.FormatInt(e.ID, 10) }))
	return nil
}

func rawOrNull(s sql.NullString) json.RawMessage {
	if !s.Valid {
		return json.RawMessage("null")
	}
	return json.RawMessage(s.String)
}
