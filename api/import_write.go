package api

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// importChunk is how many rows one multi-row INSERT carries: 200 rows of
// 14 values stay far below both databases' parameter limits (SQLite
// 32,766, PostgreSQL 65,535), and one statement per 200 rows is what makes
// 100,000 rows take seconds, not minutes.
const importChunk = 200

// writeImport writes checked rows: inserts for new ids, updates for
// existing ones (upsert), one audit entry per device, all in t.
func (s *Server) writeImport(t *tx, r *http.Request, p *principal, rows []ImportRow, existing map[string]string, issue bool, res *ImportResult) error {
	actor := actorOf(r, p)
	var inserts []any
	var audits []any
	nIns, nAud := 0, 0
	insertSQL := func(rows int) string {
		var b strings.Builder
		b.WriteString(`INSERT INTO devices (id, name, fleet, class, region, labels, state, state_changed_at, state_changed_by,
 state_reason, token_hash, token_issued_at, version, created_at, updated_at) VALUES `)
		for i := range rows {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "(%s, '', %s)", s.db.bulkPlaceholders(i*14+1, 9), s.db.bulkPlaceholders(i*14+10, 5))
		}
		return b.String()
	}
	auditSQL := func(rows int) string {
		var b strings.Builder
		b.WriteString(`INSERT INTO audit (id, at, actor, key_id, action, object_type, object_id, fleet, fleet_before, before_json,
 after_json, request_id, remote_addr) VALUES `)
		for i := range rows {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "(%s)", s.db.bulkPlaceholders(i*13+1, 13))
		}
		return b.String()
	}
	// Full chunks reuse one prepared statement each: parsing a statement
	// of 2,800 placeholders costs more than running it.
	var fullInsert, fullAudit *sql.Stmt
	defer func() {
		for _, st := range []*sql.Stmt{fullInsert, fullAudit} {
			if st != nil {
				st.Close()
			}
		}
	}()
	flush := func(n int, args []any, full **sql.Stmt, build func(int) string, what string) error {
		if n == 0 {
			return nil
		}
		var err error
		if n == importChunk {
			if *full == nil {
				if *full, err = t.PrepareContext(t.ctx, build(n)); err != nil {
					return fmt.Errorf("import: %s: %w", what, err)
				}
			}
			_, err = (*full).ExecContext(t.ctx, args...)
		} else {
			_, err = t.ExecContext(t.ctx, build(n), args...)
		}
		if err != nil {
			return fmt.Errorf("import: %s: %w", what, err)
		}
		return nil
	}
	flushInserts := func() error {
		err := flush(nIns, inserts, &fullInsert, insertSQL, "insert devices")
		inserts, nIns = inserts[:0], 0
		return err
	}
	flushAudits := func() error {
		err := flush(nAud, audits, &fullAudit, auditSQL, "audit")
		audits, nAud = audits[:0], 0
		return err
	}
	now := t.ms()
	for _, row := range rows {
		state := row.State
		if state == "" {
			state = StateActive
		}
		labels := nonNilLabels(row.Labels)
		lj, _ := json.Marshal(labels)
		hash := row.TokenSHA256
		if hash == "" && issue {
			tok := newSecret()
			hash = hashSecret(tok)
			res.Tokens = append(res.Tokens, IssuedToken{ID: row.ID, Token: tok})
		}
		v := t.next()
		view := Device{ID: row.ID, Name: row.Name, Fleet: row.Fleet, Class: row.Class, Region: row.Region, Labels: labels,
			State: state, StateChangedAt: msTime(now), StateChangedBy: p.actor(), Credential: Credential{HasToken: hash != ""},
			Version: v, CreatedAt: msTime(now), UpdatedAt: msTime(now)}
		action, fleetBefore := "device.create", ""
		if oldFleet, ok := existing[row.ID]; ok {
			action, fleetBefore = "device.import_update", oldFleet
			// An update keeps what the row does not say: the token unless
			// the row has one, the state unless the row has one.
			var tokenSet, stateSet string
			args := []any{row.Name, nullString(row.Fleet), nullString(row.Class), nullString(row.Region), string(lj), v, now}
			if hash != "" {
				args = append(args, hash)
				tokenSet = fmt.Sprintf(", token_hash = $%d, token_issued_at = $7, prev_token_hash = NULL, prev_token_expires_at = NULL", len(args))
			}
			if row.State != "" {
				args = append(args, state, p.actor())
				stateSet = fmt.Sprintf(`, state_changed_at = CASE WHEN state = $%[1]d THEN state_changed_at ELSE $7 END,
 state_changed_by = CASE WHEN state = $%[1]d THEN state_changed_by ELSE $%[2]d END, state = $%[1]d`, len(args)-1, len(args))
			}
			args = append(args, row.ID)
			if _, err := t.ExecContext(t.ctx, `UPDATE devices SET name = $1, fleet = $2, class = $3, region = $4, labels = $5,
 version = $6, updated_at = $7`+tokenSet+stateSet+fmt.Sprintf(` WHERE id = $%d`, len(args)), args...); err != nil {
				return fmt.Errorf("import: update device %s: %w", row.ID, err)
			}
			res.Updated++
		} else {
			var issued any
			if hash != "" {
				issued = now
			}
			inserts = append(inserts, row.ID, row.Name, nullString(row.Fleet), nullString(row.Class), nullString(row.Region),
				string(lj), state, now, p.actor(), nullString(hash), issued, v, now, now)
			nIns++
			res.Created++
			if nIns == importChunk {
				if err := flushInserts(); err != nil {
					return err
				}
			}
		}
		after, _ := json.Marshal(view)
		audits = append(audits, t.next(), now, actor.actor, actor.keyID, action, "device", row.ID, nullString(row.Fleet),
			nullString(fleetBefore), nil, string(after), actor.requestID, actor.remote)
		nAud++
		if nAud == importChunk {
			if err := flushAudits(); err != nil {
				return err
			}
		}
	}
	if err := flushInserts(); err != nil {
		return err
	}
	return flushAudits()
}
