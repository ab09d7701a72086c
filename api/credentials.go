package api

import (
	"fmt"
	"net/http"
	"time"
)

// maxOverlap bounds a rotation's overlap window.
const maxOverlap = 30 * 24 * time.Hour

// credentialChange runs one change of a device's tokens in a transaction:
// apply returns the SQL assignment and its arguments (from $1), or an
// error; the device's version moves and the change is audited.
func (s *Server) credentialChange(w http.ResponseWriter, r *http.Request, p *principal, action string, status int,
	apply func(t *tx, before deviceRow) (set string, args []any, token string, err error)) error {
	id := r.PathValue("id")
	var d deviceRow
	err := s.db.write(r.Context(), func(t *tx) error {
		before, err := loadDevice(t.ctx, t, p, id)
		if err != nil {
			return err
		}
		if err := checkIfMatch(r, before.Version); err != nil {
			return err
		}
		set, args, token, err := apply(t, before)
		if err != nil {
			return err
		}
		v := t.next()
		n := len(args)
		args = append(args, v, t.ms(), id)
		if _, err := t.ExecContext(t.ctx, fmt.Sprintf(`UPDATE devices SET %s, version = $%d, updated_at = $%d WHERE id = $%d`,
			set, n+1, n+2, n+3), args...); err != nil {
			return fmt.Errorf("%s %s: %w", action, id, err)
		}
		if d, err = loadDevice(t.ctx, t, p, id); err != nil {
			return err
		}
		d.Token = token
		return t.audit(actorOf(r, p), change{action: action, objType: "device", objID: id, fleet: d.Fleet,
			before: before.auditView(), after: d.auditView()})
	})
	if err != nil {
		return err
	}
	if status == http.StatusNoContent {
		w.WriteHeader(status)
		return nil
	}
	return writeObject(w, status, d.Version, d.Device)
}

// issueToken answers POST /v1/devices/{id}/token: the device's first token
// (or its first after a revoke), shown once in the answer. A device that
// has a token is rotated instead (409).
func (s *Server) issueToken(w http.ResponseWriter, r *http.Request, p *principal) error {
	return s.credentialChange(w, r, p, "device.token.issue", http.StatusCreated,
		func(t *tx, before deviceRow) (string, []any, string, error) {
			if before.tokenHash != "" {
				return "", nil, "", errConflict("device %q has a token: rotate it (POST .../token/rotate) or revoke it first", before.ID)
			}
			token := newSecret()
			return `token_hash = $1, token_issued_at = $2, prev_token_hash = NULL, prev_token_expires_at = NULL`,
				[]any{hashSecret(token), t.ms()}, token, nil
		})
}

// rotateToken answers POST /v1/devices/{id}/token/rotate: a new token;
// the current one stays valid for overlap_seconds (default 3600; 0 ends it
// at once), so that a device can be given its new token while it still
// connects with the old one.
func (s *Server) rotateToken(w http.ResponseWriter, r *http.Request, p *principal) error {
	in := struct {
		OverlapSeconds *int64 `json:"overlap_seconds"`
	}{}
	if err := decodeOptionalJSON(r, &in); err != nil {
		return err
	}
	overlap := time.Hour
	if in.OverlapSeconds != nil {
		overlap = time.Duration(*in.OverlapSeconds) * time.Second
		if *in.OverlapSeconds < 0 || overlap > maxOverlap {
			return errInvalid("overlap_seconds", "overlap_seconds: %d, want 0 to %d", *in.OverlapSeconds, int64(maxOverlap/time.Second))
		}
	}
	return s.credentialChange(w, r, p, "device.token.rotate", http.StatusCreated,
		func(t *tx, before deviceRow) (string, []any, string, error) {
			if before.tokenHash == "" {
				return "", nil, "", errConflict("device %q has no token to rotate: issue one (POST .../token)", before.ID)
			}
			token := newSecret()
			if overlap == 0 {
				return `token_hash = $1, token_issued_at = $2, prev_token_hash = NULL, prev_token_expires_at = NULL`,
					[]any{hashSecret(token), t.ms()}, token, nil
			}
			return `token_hash = $1, token_issued_at = $2, prev_token_hash = $3, prev_token_expires_at = $4`,
				[]any{hashSecret(token), t.ms(), before.tokenHash, t.now.Add(overlap).UnixMilli()}, token, nil
		})
}

// revokeToken answers DELETE /v1/devices/{id}/token: every token of the
// device stops working at once (the overlap of a rotation too).
func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request, p *principal) error {
	return s.credentialChange(w, r, p, "device.token.revoke", http.StatusNoContent,
		func(t *tx, before deviceRow) (string, []any, string, error) {
			if before.tokenHash == "" && before.prevHash == "" {
				return "", nil, "", errConflict("device %q has no token", before.ID)
			}
			return `token_hash = NULL, token_issued_at = NULL, prev_token_hash = NULL, prev_token_expires_at = NULL`, nil, "", nil
		})
}
