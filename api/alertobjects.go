package api

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
)

// alertKind is one of the three objects the alert engine follows: rules,
// geofences, webhooks. They share one table (alert_objects), one
// implementation and one life: every write moves the alert configuration's
// version, which the engine long-polls (GET /v1/alerts/config).
type alertKind struct {
	kind, path, label string
	// check decodes and validates a body: the object, its id and fleet.
	check func(body []byte) (any, string, string, error)
	// public is what a GET shows of a stored object (a webhook's secret
	// never).
	public func(obj any) any
}

var (
	ruleKind = alertKind{kind: "rule", path: "alert-rules", label: "alert rule",
		check: func(b []byte) (any, string, string, error) {
			var r eval.Rule
			if err := strictJSON(b, &r); err != nil {
				return nil, "", "", err
			}
			if err := r.Validate(); err != nil {
				return nil, "", "", errInvalid("rule", "%v", err)
			}
			return &r, r.ID, r.Fleet, nil
		}}
	fenceKind = alertKind{kind: "geofence", path: "geofences", label: "geofence",
		check: func(b []byte) (any, string, string, error) {
			var f eval.Fence
			if err := strictJSON(b, &f); err != nil {
				return nil, "", "", err
			}
			if err := f.Check(); err != nil {
				return nil, "", "", errInvalid("geofence", "%v", err)
			}
			return &f, f.ID, f.Fleet, nil
		}}
	webhookKind = alertKind{kind: "webhook", path: "alert-webhooks", label: "webhook",
		check: func(b []byte) (any, string, string, error) {
			var w eval.Webhook
			if err := strictJSON(b, &w); err != nil {
				return nil, "", "", err
			}
			if w.Secret == "" {
				w.Secret = newSecret()
			}
			if err := w.Validate(); err != nil {
				return nil, "", "", errInvalid("webhook", "%v", err)
			}
			return &w, w.ID, w.Fleet, nil
		},
		public: func(obj any) any {
			w := *obj.(*eval.Webhook)
			w.Secret = ""
			return w
		}}
)

// strictJSON decodes b into v, refusing unknown fields and trailing data.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errBadRequest("body: %v", err)
	}
	if dec.More() {
		return errBadRequest("body: data after the JSON object")
	}
	return nil
}

// alertObject is a stored object: its body and its bookkeeping.
type alertObject struct {
	ID, Fleet          string
	Body               json.RawMessage
	Version            int64
	CreatedAt, Updated time.Time
}

// view is what GET answers: the object's fields with version, created_at
// and updated_at.
func (k alertKind) view(o alertObject) (map[string]any, error) {
	obj, _, _, err := k.check(o.Body)
	if err != nil {
		return nil, fmt.Errorf("stored %s %s: %w", k.label, o.ID, err)
	}
	if k.public != nil {
		obj = k.public(obj)
	}
	b, _ := json.Marshal(obj)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	m["version"], m["created_at"], m["updated_at"] = o.Version, o.CreatedAt, o.Updated
	return m, nil
}

func scanAlertObject(sc scanner) (alertObject, error) {
	var o alertObject
	var fleet sql.NullString
	var body string
	var created, updated int64
	if err := sc.Scan(&o.ID, &fleet, &body, &o.Version, &created, &updated); err != nil {
		return o, err
	}
	o.Fleet, o.Body, o.CreatedAt, o.Updated = fleet.String, json.RawMessage(body), msTime(created), msTime(updated)
	return o, nil
}

const alertObjectCols = `id, fleet, body, version, created_at, updated_at`

// load reads an object the caller may see, or 404.
func (k alertKind) load(r *http.Request, q querier, p *principal, id string) (alertObject, error) {
	o, err := scanAlertObject(q.QueryRowContext(r.Context(), `SELECT `+alertObjectCols+` FROM alert_objects WHERE kind = $1 AND id = $2`, k.kind, id))
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(o.Fleet)) {
		return o, errNotFound(k.label, id)
	}
	if err != nil {
		return o, fmt.Errorf("read %s %s: %w", k.label, id, err)
	}
	return o, nil
}

// mayWrite says whether the caller may create or change an object of
// fleet: one of its fleets, or, for an object of every fleet, a key of
// every fleet.
func mayWrite(p *principal, fleet string) error {
	if fleet == "" && !p.all {
		return errForbidden("an object of every fleet (no fleet) needs a key of every fleet")
	}
	if fleet != "" && !p.sees(fleet) {
		return errNotFound("fleet", fleet)
	}
	return nil
}

// bumpConfig moves the alert configuration's version to v (a version this
// transaction took): the engine's long poll answers.
func bumpConfig(t *tx, v int64) error {
	if _, err := t.ExecContext(t.ctx, `UPDATE alert_config_state SET version = $1 WHERE id = 1`, v); err != nil {
		return fmt.Errorf("alert config version: %w", err)
	}
	return nil
}

func (s *Server) alertList(k alertKind) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		pg, err := parsePage(r)
		if err != nil {
			return err
		}
		qa := queryArgs{}
		qa.add("kind = ?", k.kind)
		if pg.cursor != "" {
			qa.add("id > ?", pg.cursor)
		}
		if fl := r.URL.Query().Get("fleet"); fl != "" {
			qa.add("fleet = ?", fl)
		}
		if fl := p.scopeFleets(); fl != nil {
			qa.in("fleet", fl)
		}
		rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT `+alertObjectCols+` FROM alert_objects`+qa.clause()+
			fmt.Sprintf(` ORDER BY id LIMIT %d`, pg.limit+1), qa.args...)
		if err != nil {
			return fmt.Errorf("list %s: %w", k.path, err)
		}
		defer rows.Close()
		var out []map[string]any
		for rows.Next() {
			o, err := scanAlertObject(rows)
			if err != nil {
				return fmt.Errorf("list %s: %w", k.path, err)
			}
			v, err := k.view(o)
			if err != nil {
				return err
			}
			out = append(out, v)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("list %s: %w", k.path, err)
		}
		writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(m map[string]any) string { return m["id"].(string) }))
		return nil
	}
}

func (s *Server) alertGet(k alertKind) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		o, err := k.load(r, s.db.rdb, p, r.PathValue("id"))
		if err != nil {
			return err
		}
		v, err := k.view(o)
		if err != nil {
			return err
		}
		return writeObject(w, http.StatusOK, o.Version, v)
	}
}

func (s *Server) alertCreate(k alertKind) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return errTooLarge(mbe.Limit)
			}
			return errBadRequest("body: %v", err)
		}
		obj, id, fleet, err := k.check(body)
		if err != nil {
			return err
		}
		if err := mayWrite(p, fleet); err != nil {
			return err
		}
		canon, _ := json.Marshal(obj)
		var o alertObject
		err = s.db.write(r.Context(), func(t *tx) error {
			o, err = s.insertAlertObject(t, k, id, fleet, canon, false)
			if err != nil {
				return err
			}
			return t.audit(actorOf(r, p), change{action: k.kind + ".create", objType: k.kind, objID: id, fleet: fleet,
				after: publicOf(k, obj), version: o.Version})
		})
		if err != nil {
			return err
		}
		v, err := k.view(o)
		if err != nil {
			return err
		}
		if k.kind == "webhook" {
			// The secret, once: receivers verify signatures with it.
			v["secret"] = obj.(*eval.Webhook).Secret
		}
		w.Header().Set("Location", "/v1/"+k.path+"/"+id)
		return writeObject(w, http.StatusCreated, o.Version, v)
	}
}

func publicOf(k alertKind, obj any) any {
	if k.public != nil {
		return k.public(obj)
	}
	return obj
}

// insertAlertObject writes a new object (or, with upsert, replaces one of
// the same id the caller may see), moving the configuration's version.
func (s *Server) insertAlertObject(t *tx, k alertKind, id, fleet string, body []byte, upsert bool) (alertObject, error) {
	o := alertObject{ID: id, Fleet: fleet, Body: body, Version: t.next(), CreatedAt: msTime(t.ms()), Updated: msTime(t.ms())}
	var err error
	if upsert {
		_, err = t.ExecContext(t.ctx, `
INSERT INTO alert_objects (kind, id, fleet, body, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)
ON CONFLICT (kind, id) DO UPDATE SET fleet = excluded.fleet, body = excluded.body, version = excluded.version, updated_at = excluded.updated_at`,
			k.kind, id, nullString(fleet), string(body), o.Version, t.ms())
	} else {
		_, err = t.ExecContext(t.ctx, `INSERT INTO alert_objects (kind, id, fleet, body, version, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)`,
			k.kind, id, nullString(fleet), string(body), o.Version, t.ms())
	}
	switch {
	case isUniqueViolation(err):
		return o, errConflict("%s %q already exists", k.label, id)
	case isForeignKeyViolation(err):
		return o, errInvalid("fleet", "fleet %q does not exist", fleet)
	case err != nil:
		return o, fmt.Errorf("write %s %s: %w", k.label, id, err)
	}
	return o, bumpConfig(t, o.Version)
}

func (s *Server) alertUpdate(k alertKind) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		var patch map[string]json.RawMessage
		if err := decodeJSON(r, &patch); err != nil {
			return err
		}
		id := r.PathValue("id")
		var after alertObject
		var obj any
		err := s.db.write(r.Context(), func(t *tx) error {
			before, err := k.load(r, t, p, id)
			if err != nil {
				return err
			}
			if err := checkIfMatch(r, before.Version); err != nil {
				return err
			}
			var cur map[string]json.RawMessage
			if err := json.Unmarshal(before.Body, &cur); err != nil {
				return fmt.Errorf("stored %s %s: %w", k.label, id, err)
			}
			for f, v := range patch {
				if (f == "id" || f == "fleet") && !bytes.Equal(bytes.TrimSpace(v), bytes.TrimSpace(cur[f])) {
					return errInvalid(f, "%s cannot change: delete the %s and create another", f, k.label)
				}
				if string(bytes.TrimSpace(v)) == "null" {
					delete(cur, f)
				} else {
					cur[f] = v
				}
			}
			merged, _ := json.Marshal(cur)
			var fleet string
			if obj, _, fleet, err = k.check(merged); err != nil {
				return err
			}
			if err := mayWrite(p, fleet); err != nil {
				return err
			}
			canon, _ := json.Marshal(obj)
			after = alertObject{ID: id, Fleet: fleet, Body: canon, Version: t.next(), CreatedAt: before.CreatedAt, Updated: msTime(t.ms())}
			if _, err := t.ExecContext(t.ctx, `UPDATE alert_objects SET body = $1, version = $2, updated_at = $3 WHERE kind = $4 AND id = $5`,
				string(canon), after.Version, t.ms(), k.kind, id); err != nil {
				return fmt.Errorf("update %s %s: %w", k.label, id, err)
			}
			if err := bumpConfig(t, after.Version); err != nil {
				return err
			}
			prev, _, _, _ := k.check(before.Body)
			return t.audit(actorOf(r, p), change{action: k.kind + ".update", objType: k.kind, objID: id, fleet: fleet,
				before: publicOf(k, prev), after: publicOf(k, obj), version: after.Version})
		})
		if err != nil {
			return err
		}
		v, err := k.view(after)
		if err != nil {
			return err
		}
		return writeObject(w, http.StatusOK, after.Version, v)
	}
}

func (s *Server) alertDelete(k alertKind) func(http.ResponseWriter, *http.Request, *principal) error {
	return func(w http.ResponseWriter, r *http.Request, p *principal) error {
		id := r.PathValue("id")
		err := s.db.write(r.Context(), func(t *tx) error {
			before, err := k.load(r, t, p, id)
			if err != nil {
				return err
			}
			if err := checkIfMatch(r, before.Version); err != nil {
				return err
			}
			if err := mayWrite(p, before.Fleet); err != nil {
				return err
			}
			if _, err := t.ExecContext(t.ctx, `DELETE FROM alert_objects WHERE kind = $1 AND id = $2`, k.kind, id); err != nil {
				return fmt.Errorf("delete %s %s: %w", k.label, id, err)
			}
			v := t.next()
			if err := bumpConfig(t, v); err != nil {
				return err
			}
			prev, _, _, _ := k.check(before.Body)
			return t.audit(actorOf(r, p), change{action: k.kind + ".delete", objType: k.kind, objID: id,
				fleetBefore: before.Fleet, before: publicOf(k, prev), version: v})
		})
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

// alertConfig answers the engine's GET /v1/alerts/config[?since=V&wait=25s]:
// the whole configuration (rules, geofences, webhooks with their secrets)
// when its version is past since, at once or as soon as it moves within
// wait; 304 when it did not.
func (s *Server) alertConfig(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q := r.URL.Query()
	since := int64(-1)
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return errBadRequest("since: %q, want the version of the last configuration you have", v)
		}
		since = n
	}
	var wait time.Duration
	if ws := q.Get("wait"); ws != "" {
		d, err := time.ParseDuration(ws)
		if err != nil || d < 0 {
			return errBadRequest("wait: %q, want a duration such as 25s", ws)
		}
		wait = min(d, s.cfg.FeedMaxWait)
	}
	ctx := r.Context()
	read := func() (int64, error) {
		var v int64
		err := s.db.rdb.QueryRowContext(ctx, `SELECT version FROM alert_config_state WHERE id = 1`).Scan(&v)
		return v, err
	}
	cur, err := read()
	if err != nil {
		return fmt.Errorf("alert config version: %w", err)
	}
	deadline := time.Now().Add(wait)
	for cur <= since && time.Now().Before(deadline) {
		timer := time.NewTimer(time.Until(deadline))
		select {
		case <-s.db.wait(s.db.knownVersion()):
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		if ctx.Err() != nil {
			return nil
		}
		if cur, err = read(); err != nil {
			return fmt.Errorf("alert config version: %w", err)
		}
	}
	if cur <= since {
		w.WriteHeader(http.StatusNotModified)
		return nil
	}
	rs := eval.RuleSet{Version: cur, Rules: []eval.Rule{}, Geofences: []eval.Fence{}, Webhooks: []eval.Webhook{}}
	rows, err := s.db.rdb.QueryContext(ctx, `SELECT kind, body FROM alert_objects ORDER BY kind, id`)
	if err != nil {
		return fmt.Errorf("alert config: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var kind, body string
		if err := rows.Scan(&kind, &body); err != nil {
			return fmt.Errorf("alert config: %w", err)
		}
		var err error
		switch kind {
		case "rule":
			var x eval.Rule
			err = json.Unmarshal([]byte(body), &x)
			rs.Rules = append(rs.Rules, x)
		case "geofence":
			var x eval.Fence
			err = json.Unmarshal([]byte(body), &x)
			rs.Geofences = append(rs.Geofences, x)
		case "webhook":
			var x eval.Webhook
			err = json.Unmarshal([]byte(body), &x)
			rs.Webhooks = append(rs.Webhooks, x)
		}
		if err != nil {
			return fmt.Errorf("alert config: stored %s: %w", kind, err)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("alert config: %w", err)
	}
	w.Header().Set("ETag", etag(cur))
	writeJSON(w, http.StatusOK, rs)
	return nil
}
