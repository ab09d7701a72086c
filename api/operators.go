package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"
)

// Operator is a person or a service with API keys. Its role and fleets
// apply to every one of its keys.
type Operator struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Fleets    []string  `json:"fleets"`
	Disabled  bool      `json:"disabled"`
	Version   int64     `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// APIKey is an operator's key as listed: never the secret.
type APIKey struct {
	ID         string     `json:"id"`
	OperatorID string     `json:"operator_id"`
	Name       string     `json:"name"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	// Key is present once: in the answer that created it.
	Key string `json:"key,omitempty"`
}

const operatorCols = `id, name, role, fleets, disabled_at, version, created_at, updated_at`

func scanOperator(sc scanner) (Operator, error) {
	var o Operator
	var fleetsJSON string
	var disabled sql.NullInt64
	var created, updated int64
	if err := sc.Scan(&o.ID, &o.Name, &o.Role, &fleetsJSON, &disabled, &o.Version, &created, &updated); err != nil {
		return o, err
	}
	if err := json.Unmarshal([]byte(fleetsJSON), &o.Fleets); err != nil {
		return o, fmt.Errorf("operator %s: fleets: %w", o.ID, err)
	}
	o.Disabled, o.CreatedAt, o.UpdatedAt = disabled.Valid, msTime(created), msTime(updated)
	return o, nil
}

// loadOperator reads an operator the caller may manage: one whose fleets
// are all within the caller's (404 otherwise).
func loadOperator(ctx context.Context, q querier, p *principal, id string) (Operator, error) {
	o, err := scanOperator(q.QueryRowContext(ctx, `SELECT `+operatorCols+` FROM operators WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.covers(o.Fleets)) {
		return o, errNotFound("operator", id)
	}
	if err != nil {
		return o, fmt.Errorf("read operator %s: %w", id, err)
	}
	return o, nil
}

// getMe answers GET /v1/me: who the key is.
func (s *Server) getMe(w http.ResponseWriter, r *http.Request, p *principal) error {
	writeJSON(w, http.StatusOK, map[string]any{
		"operator_id": p.OperatorID, "operator_name": p.OperatorName, "key_id": p.KeyID, "role": p.Role, "fleets": p.fleetList(),
	})
	return nil
}

func (s *Server) listOperators(w http.ResponseWriter, r *http.Request, p *principal) error {
	pg, err := parsePage(r)
	if err != nil {
		return err
	}
	// Operators are few (people and services, not devices): read them in
	// id order and keep those the caller may manage.
	var qa queryArgs
	if pg.cursor != "" {
		qa.add("id > ?", pg.cursor)
	}
	rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT `+operatorCols+` FROM operators`+qa.clause()+` ORDER BY id`, qa.args...)
	if err != nil {
		return fmt.Errorf("list operators: %w", err)
	}
	defer rows.Close()
	var out []Operator
	for rows.Next() && len(out) <= pg.limit {
		o, err := scanOperator(rows)
		if err != nil {
			return fmt.Errorf("list operators: %w", err)
		}
		if p.covers(o.Fleets) {
			out = append(out, o)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list operators: %w", err)
	}
	writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(o Operator) string { return o.ID }))
	return nil
}

func (s *Server) getOperator(w http.ResponseWriter, r *http.Request, p *principal) error {
	o, err := loadOperator(r.Context(), s.db.rdb, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeObject(w, http.StatusOK, o.Version, o)
}

type operatorInput struct {
	Name     *string  `json:"name"`
	Role     *string  `json:"role"`
	Fleets   []string `json:"fleets"`
	Disabled *bool    `json:"disabled"`
}

// checkOperator validates an operator's role and fleets against the
// caller: nobody grants what it does not have.
func checkOperator(ctx context.Context, q querier, p *principal, o Operator) error {
	if err := validateName("name", o.Name); err != nil {
		return err
	}
	if o.Name == "" {
		return errInvalid("name", "name: required")
	}
	if !slices.Contains(roles, o.Role) {
		return errInvalid("role", "role: %q, want one of %v", o.Role, roles)
	}
	if len(o.Fleets) == 0 {
		return errInvalid("fleets", `fleets: at least one fleet, or ["*"] for every fleet`)
	}
	if o.Role == RoleFollower && !slices.Equal(o.Fleets, []string{allFleets}) {
		return errInvalid("fleets", `fleets: a follower serves every fleet: ["*"]`)
	}
	if !p.covers(o.Fleets) {
		return errInvalid("fleets", "fleets: %v reach beyond your own %v", o.Fleets, p.fleetList())
	}
	for _, f := range o.Fleets {
		if f == allFleets {
			if len(o.Fleets) > 1 {
				return errInvalid("fleets", `fleets: "*" stands alone`)
			}
			continue
		}
		var one int
		err := q.QueryRowContext(ctx, `SELECT 1 FROM fleets WHERE id = $1`, f).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return errInvalid("fleets", "unknown fleet %q", f)
		}
		if err != nil {
			return fmt.Errorf("check fleet: %w", err)
		}
	}
	return nil
}

func (s *Server) createOperator(w http.ResponseWriter, r *http.Request, p *principal) error {
	var in operatorInput
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	o := Operator{ID: newID("op_"), Fleets: in.Fleets}
	if in.Name != nil {
		o.Name = *in.Name
	}
	if in.Role != nil {
		o.Role = *in.Role
	}
	slices.Sort(o.Fleets)
	err := s.db.write(r.Context(), func(t *tx) error {
		if err := checkOperator(t.ctx, t, p, o); err != nil {
			return err
		}
		o.Version = t.next()
		o.CreatedAt, o.UpdatedAt = msTime(t.ms()), msTime(t.ms())
		if err := insertOperator(t, o); err != nil {
			return err
		}
		return t.audit(actorOf(r, p), change{action: "operator.create", objType: "operator", objID: o.ID, after: o, version: o.Version})
	})
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/operators/"+o.ID)
	return writeObject(w, http.StatusCreated, o.Version, o)
}

func insertOperator(t *tx, o Operator) error {
	fl, _ := json.Marshal(o.Fleets)
	if _, err := t.ExecContext(t.ctx, `INSERT INTO operators (id, name, role, fleets, version, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $6)`, o.ID, o.Name, o.Role, string(fl), o.Version, t.ms()); err != nil {
		return fmt.Errorf("create operator: %w", err)
	}
	return nil
}

func (s *Server) updateOperator(w http.ResponseWriter, r *http.Request, p *principal) error {
	var in operatorInput
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	id := r.PathValue("id")
	var after Operator
	err := s.db.write(r.Context(), func(t *tx) error {
		before, err := loadOperator(t.ctx, t, p, id)
		if err != nil {
			return err
		}
		if err := checkIfMatch(r, before.Version); err != nil {
			return err
		}
		after = before
		if in.Name != nil {
			after.Name = *in.Name
		}
		if in.Role != nil {
			after.Role = *in.Role
		}
		if in.Fleets != nil {
			after.Fleets = slices.Sorted(slices.Values(in.Fleets))
		}
		if in.Disabled != nil {
			after.Disabled = *in.Disabled
		}
		if id == p.OperatorID && (after.Role != before.Role || !slices.Equal(after.Fleets, before.Fleets) || after.Disabled) {
			return errConflict("you cannot change your own role, fleets or disable yourself: ask another admin")
		}
		if err := checkOperator(t.ctx, t, p, after); err != nil {
			return err
		}
		after.Version, after.UpdatedAt = t.next(), msTime(t.ms())
		fl, _ := json.Marshal(after.Fleets)
		var disabled any
		if after.Disabled {
			disabled = t.ms()
			if before.Disabled {
				disabled = nil // keep the first time below
			}
		}
		if _, err := t.ExecContext(t.ctx, `UPDATE operators SET name = $1, role = $2, fleets = $3, version = $4, updated_at = $5,
 disabled_at = CASE WHEN $6 = 0 THEN NULL ELSE COALESCE(disabled_at, $7) END WHERE id = $8`,
			after.Name, after.Role, string(fl), after.Version, t.ms(), boolInt(after.Disabled), disabled, id); err != nil {
			return fmt.Errorf("update operator %s: %w", id, err)
		}
		t.operatorChanged(id) // its keys' role, fleets, name or standing changed: every replica reads them again
		return t.audit(actorOf(r, p), change{action: "operator.update", objType: "operator", objID: id,
			before: before, after: after, version: after.Version})
	})
	if err != nil {
		return err
	}
	return writeObject(w, http.StatusOK, after.Version, after)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *Server) deleteOperator(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	err := s.db.write(r.Context(), func(t *tx) error {
		before, err := loadOperator(t.ctx, t, p, id)
		if err != nil {
			return err
		}
		if err := checkIfMatch(r, before.Version); err != nil {
			return err
		}
		if id == p.OperatorID {
			return errConflict("you cannot delete yourself: ask another admin")
		}
		if _, err := t.ExecContext(t.ctx, `DELETE FROM api_keys WHERE operator_id = $1`, id); err != nil {
			return fmt.Errorf("delete operator %s: %w", id, err)
		}
		if _, err := t.ExecContext(t.ctx, `DELETE FROM operators WHERE id = $1`, id); err != nil {
			return fmt.Errorf("delete operator %s: %w", id, err)
		}
		t.operatorChanged(id)
		return t.audit(actorOf(r, p), change{action: "operator.delete", objType: "operator", objID: id, before: before})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

const keyCols = `id, operator_id, name, created_at, expires_at, revoked_at, last_used_at`

func scanKey(sc scanner) (APIKey, error) {
	var k APIKey
	var created int64
	var expires, revoked, used sql.NullInt64
	if err := sc.Scan(&k.ID, &k.OperatorID, &k.Name, &created, &expires, &revoked, &used); err != nil {
		return k, err
	}
	k.CreatedAt = msTime(created)
	k.ExpiresAt, k.RevokedAt, k.LastUsedAt = optTime(expires), optTime(revoked), optTime(used)
	return k, nil
}

func optTime(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := msTime(v.Int64)
	return &t
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, p *principal) error {
	op, err := loadOperator(r.Context(), s.db.rdb, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT `+keyCols+` FROM api_keys WHERE operator_id = $1 ORDER BY created_at, id`, op.ID)
	if err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	defer rows.Close()
	out := []APIKey{}
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return fmt.Errorf("list keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list keys: %w", err)
	}
	writeJSON(w, http.StatusOK, listResponse[APIKey]{Items: out})
	return nil
}

// maxKeyLifetime bounds expires_in_seconds.
const maxKeyLifetime = 5 * 365 * 24 * time.Hour

func (s *Server) createKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	var in struct {
		Name             string `json:"name"`
		ExpiresInSeconds int64  `json:"expires_in_seconds"`
	}
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	if err := validateName("name", in.Name); err != nil {
		return err
	}
	if in.ExpiresInSeconds < 0 || time.Duration(in.ExpiresInSeconds)*time.Second > maxKeyLifetime {
		return errInvalid("expires_in_seconds", "expires_in_seconds: %d, want 0 (never) to %d", in.ExpiresInSeconds, int64(maxKeyLifetime/time.Second))
	}
	var k APIKey
	err := s.db.write(r.Context(), func(t *tx) error {
		op, err := loadOperator(t.ctx, t, p, r.PathValue("id"))
		if err != nil {
			return err
		}
		k, err = createKey(t, op.ID, in.Name, time.Duration(in.ExpiresInSeconds)*time.Second)
		if err != nil {
			return err
		}
		view := k
		view.Key = ""
		return t.audit(actorOf(r, p), change{action: "api_key.create", objType: "api_key", objID: k.ID, after: view})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

// createKey makes a key for operator opID; the answer carries the secret,
// once.
func createKey(t *tx, opID, name string, lifetime time.Duration) (APIKey, error) {
	secret := newSecret()
	k := APIKey{ID: newID("key_"), OperatorID: opID, Name: name, CreatedAt: msTime(t.ms())}
	var expires any
	if lifetime > 0 {
		e := t.now.Add(lifetime).UnixMilli()
		expires = e
		et := msTime(e)
		k.ExpiresAt = &et
	}
	if _, err := t.ExecContext(t.ctx, `INSERT INTO api_keys (id, operator_id, name, secret_hash, created_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)`, k.ID, opID, name, hashSecret(secret), t.ms(), expires); err != nil {
		return k, fmt.Errorf("create api key: %w", err)
	}
	k.Key = formatAPIKey(k.ID, secret)
	return k, nil
}

func (s *Server) revokeKey(w http.ResponseWriter, r *http.Request, p *principal) error {
	keyID := r.PathValue("key")
	err := s.db.write(r.Context(), func(t *tx) error {
		op, err := loadOperator(t.ctx, t, p, r.PathValue("id"))
		if err != nil {
			return err
		}
		before, err := scanKey(t.QueryRowContext(t.ctx, `SELECT `+keyCols+` FROM api_keys WHERE id = $1 AND operator_id = $2`, keyID, op.ID))
		if errors.Is(err, sql.ErrNoRows) {
			return errNotFound("api key", keyID)
		}
		if err != nil {
			return fmt.Errorf("revoke key: %w", err)
		}
		if before.RevokedAt != nil {
			return nil
		}
		if keyID == p.KeyID {
			return errConflict("you cannot revoke the key you are using")
		}
		if _, err := t.ExecContext(t.ctx, `UPDATE api_keys SET revoked_at = $1 WHERE id = $2`, t.ms(), keyID); err != nil {
			return fmt.Errorf("revoke key: %w", err)
		}
		t.keyChanged(keyID) // refused on every replica from its commit (on the others, once notified)
		after := before
		now := msTime(t.ms())
		after.RevokedAt = &now
		return t.audit(actorOf(r, p), change{action: "api_key.revoke", objType: "api_key", objID: keyID, before: before, after: after})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
