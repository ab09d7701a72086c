package api

import (
	"encoding/json"
	"fmt"
	"net/http"
)

// deviceBulkCols and auditBulkCols are the columns an import writes.
var (
	deviceBulkCols = []bulkColumn{{"id", "text"}, {"name", "text"}, {"fleet", "text"}, {"class", "text"}, {"region", "text"},
		{"labels", "text"}, {"state", "text"}, {"state_changed_at", "bigint"}, {"state_changed_by", "text"}, {"state_reason", "text"},
		{"token_hash", "text"}, {"token_issued_at", "bigint"}, {"version", "bigint"}, {"created_at", "bigint"}, {"updated_at", "bigint"}}
	auditBulkCols = []bulkColumn{{"id", "bigint"}, {"at", "bigint"}, {"actor", "text"}, {"key_id", "text"}, {"action", "text"},
		{"object_type", "text"}, {"object_id", "text"}, {"fleet", "text"}, {"fleet_before", "text"}, {"before_json", "text"},
		{"after_json", "text"}, {"request_id", "text"}, {"remote_addr", "text"}}
)

// writeImport writes checked rows: inserts for new ids (in bulk), updates
// for existing ones (upsert), one audit entry per device (in bulk), all in
// t.
func (s *Server) writeImport(t *tx, r *http.Request, p *principal, rows []ImportRow, existing map[string]string, issue bool, res *ImportResult) error {
	actor := actorOf(r, p)
	inserts := make([][]any, 0, len(rows))
	audits := make([][]any, 0, len(rows))
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
			inserts = append(inserts, []any{row.ID, row.Name, nullString(row.Fleet), nullString(row.Class), nullString(row.Region),
				string(lj), state, now, p.actor(), "", nullString(hash), issued, v, now, now})
			res.Created++
		}
		after, _ := json.Marshal(view)
		audits = append(audits, []any{t.next(), now, actor.actor, actor.keyID, action, "device", row.ID, nullString(row.Fleet),
			nullString(fleetBefore), nil, string(after), actor.requestID, actor.remote})
	}
	if err := s.db.bulkInsert(t, "devices", deviceBulkCols, inserts); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	if err := s.db.bulkInsert(t, "audit", auditBulkCols, audits); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	return nil
}
