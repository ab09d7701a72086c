package api

import (
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
)

// AlertRecord is an alert as operators see it: what the engine found (the
// alert's fields, its latest state) and what operators did with it.
type AlertRecord struct {
	eval.Alert
	// LastEvent is the last event the engine reported: raised, cleared,
	// instant.
	LastEvent    string     `json:"last_event"`
	Acknowledged bool       `json:"acknowledged"`
	AckedAt      *time.Time `json:"acked_at,omitempty"`
	AckedBy      string     `json:"acked_by,omitempty"`
	ClearedAt    *time.Time `json:"cleared_at,omitempty"`
	// ClearedBy is the operator who cleared it by hand, or "engine" when
	// the condition ended.
	ClearedBy string    `json:"cleared_by,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

const alertCols = `id, data, state, last_event, acked_at, acked_by, cleared_at, cleared_by, created_at, updated_at, fleet`

// scanAlert reads a row of alertCols: the alert and its fleet.
func scanAlert(sc scanner) (AlertRecord, string, error) {
	var a AlertRecord
	var id, data, state string
	var ackedAt, clearedAt sql.NullInt64
	var ackedBy, clearedBy, fleet sql.NullString
	var created, updated int64
	if err := sc.Scan(&id, &data, &state, &a.LastEvent, &ackedAt, &ackedBy, &clearedAt, &clearedBy, &created, &updated, &fleet); err != nil {
		return a, "", err
	}
	if err := json.Unmarshal([]byte(data), &a.Alert); err != nil {
		return a, "", fmt.Errorf("stored alert %s: %w", id, err)
	}
	a.State = state
	if ackedAt.Valid {
		t := msTime(ackedAt.Int64)
		a.Acknowledged, a.AckedAt, a.AckedBy = true, &t, ackedBy.String
	}
	if clearedAt.Valid {
		t := msTime(clearedAt.Int64)
		a.ClearedAt, a.ClearedBy = &t, clearedBy.String
	}
	a.CreatedAt, a.UpdatedAt = msTime(created), msTime(updated)
	return a, fleet.String, nil
}

// loadAlert reads an alert the caller may see, or 404.
func loadAlert(r *http.Request, q querier, p *principal, id string) (AlertRecord, string, error) {
	a, fleet, err := scanAlert(q.QueryRowContext(r.Context(), `SELECT `+alertCols+` FROM alerts WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(fleet)) {
		return a, "", errNotFound("alert", id)
	}
	if err != nil {
		return a, "", fmt.Errorf("read alert %s: %w", id, err)
	}
	return a, fleet, nil
}

// listAlerts answers GET /v1/alerts: newest first (by start), filtered by
// fleet, device, type, severity, state, acknowledged, late, and a start
// time range.
func (s *Server) listAlerts(w http.ResponseWriter, r *http.Request, p *principal) error {
	pg, err := parsePage(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var qa queryArgs
	if pg.cursor != "" {
		ms, id, ok := strings.Cut(pg.cursor, "/")
		n, err := strconv.ParseInt(ms, 10, 64)
		if !ok || err != nil {
			return errBadRequest("cursor: not one this API returned")
		}
		qa.add("(start_ms < ? OR (start_ms = ? AND id < ?))", n, n, id)
	}
	for _, f := range []string{"fleet", "device", "type", "severity", "state", "fence"} {
		if v := q.Get(f); v != "" {
			qa.add(f+" = ?", v)
		}
	}
	for name, col := range map[string]string{"acknowledged": "acked_at", "late": "late"} {
		switch v := q.Get(name); v {
		case "":
		case "true":
			if col == "late" {
				qa.add("late = ?", 1)
			} else {
				qa.add(col + " IS NOT NULL")
			}
		case "false":
			if col == "late" {
				qa.add("late = ?", 0)
			} else {
				qa.add(col + " IS NULL")
			}
		default:
			return errBadRequest("%s: %q, want true or false", name, v)
		}
	}
	for name, op := range map[string]string{"since": ">=", "until": "<"} {
		if v := q.Get(name); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return errBadRequest("%s: %q, want an RFC 3339 time", name, v)
			}
			qa.add("start_ms "+op+" ?", t.UnixMilli())
		}
	}
	if fl := p.scopeFleets(); fl != nil {
		qa.in("fleet", fl)
	}
	rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT `+alertCols+` FROM alerts`+qa.clause()+
		fmt.Sprintf(` ORDER BY start_ms DESC, id DESC LIMIT %d`, pg.limit+1), qa.args...)
	if err != nil {
		return fmt.Errorf("list alerts: %w", err)
	}
	defer rows.Close()
	var out []AlertRecord
	for rows.Next() {
		a, _, err := scanAlert(rows)
		if err != nil {
			return err
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list alerts: %w", err)
	}
	resp := pageOf(out, pg.limit, func(a AlertRecord) string { return fmt.Sprintf("%d/%s", a.StartMs, a.ID) })
	if resp.NextCursor != "" {
		last := resp.Items[len(resp.Items)-1]
		resp.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(fmt.Sprintf("%d/%s", last.StartMs, last.ID)))
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

func (s *Server) getAlert(w http.ResponseWriter, r *http.Request, p *principal) error {
	a, _, err := loadAlert(r, s.db.rdb, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, a)
	return nil
}

// alertAction is the body of ack and clear: an optional note, audited.
type alertAction struct {
	Note string `json:"note"`
}

// ackAlert and clearAlert record what an operator did, audited with the
// operator: acknowledging says someone is on it; clearing says it is over
// (an alert still under way that an operator clears stays cleared: the
// engine's later events update its details, not its state).
func (s *Server) ackAlert(w http.ResponseWriter, r *http.Request, p *principal) error {
	return s.alertOperatorAction(w, r, p, "ack")
}

func (s *Server) clearAlert(w http.ResponseWriter, r *http.Request, p *principal) error {
	return s.alertOperatorAction(w, r, p, "clear")
}

func (s *Server) alertOperatorAction(w http.ResponseWriter, r *http.Request, p *principal, action string) error {
	var in alertAction
	if err := decodeOptionalJSON(r, &in); err != nil {
		return err
	}
	if len(in.Note) > 1024 {
		return errInvalid("note", "note: over 1024 bytes")
	}
	id := r.PathValue("id")
	var after AlertRecord
	err := s.db.write(r.Context(), func(t *tx) error {
		before, fleet, err := loadAlert(r, t, p, id)
		if err != nil {
			return err
		}
		who := p.OperatorName
		if who == "" {
			who = p.OperatorID
		}
		switch action {
		case "ack":
			if before.Acknowledged {
				return errConflict("alert %s is already acknowledged (by %s)", id, before.AckedBy)
			}
			_, err = t.ExecContext(t.ctx, `UPDATE alerts SET acked_at = $1, acked_by = $2, updated_at = $1 WHERE id = $3`, t.ms(), who, id)
		case "clear":
			if before.State == eval.StateCleared {
				return errConflict("alert %s is already cleared (by %s)", id, before.ClearedBy)
			}
			_, err = t.ExecContext(t.ctx, `UPDATE alerts SET state = $1, cleared_at = $2, cleared_by = $3, updated_at = $2 WHERE id = $4`,
				eval.StateCleared, t.ms(), who, id)
		}
		if err != nil {
			return fmt.Errorf("%s alert %s: %w", action, id, err)
		}
		if after, _, err = loadAlert(r, t, p, id); err != nil {
			return err
		}
		return t.audit(actorOf(r, p), change{action: "alert." + action, objType: "alert", objID: id, fleet: fleet,
			before: map[string]any{"state": before.State, "acknowledged": before.Acknowledged},
			after:  map[string]any{"state": after.State, "acknowledged": after.Acknowledged, "note": in.Note}})
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, after)
	return nil
}

// maxAlertEvents bounds one report of the engine.
const maxAlertEvents = 5000

// alertEvents takes the engine's events (POST /v1/alerts/events), in
// order: each creates or updates its alert. An event is applied only if it
// is not behind what the alert has (a raised event delivered again after
// its cleared one changes nothing), so the engine may send an event twice.
func (s *Server) alertEvents(w http.ResponseWriter, r *http.Request, _ *principal) error {
	var in struct {
		Events []eval.Event `json:"events"`
	}
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	if len(in.Events) > maxAlertEvents {
		return errInvalid("events", "%d events, at most %d per report", len(in.Events), maxAlertEvents)
	}
	for i, ev := range in.Events {
		a := &ev.Alert
		if a.ID == "" || a.Device == "" || a.Type == "" || !a.Severity.Valid() ||
			(ev.Kind != eval.EventRaised && ev.Kind != eval.EventCleared && ev.Kind != eval.EventInstant) {
			return errInvalid("events", "event %d: needs an alert id, device, type, severity and a kind (raised, cleared, instant)", i)
		}
	}
	err := s.db.write(r.Context(), func(t *tx) error {
		for _, ev := range in.Events {
			if err := applyAlertEvent(t, ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	s.metrics.alertEvents.Add(float64(len(in.Events)))
	writeJSON(w, http.StatusOK, map[string]int{"applied": len(in.Events)})
	return nil
}

// eventRank orders an alert's events: a later one is never undone by an
// earlier one delivered again.
func eventRank(kind string) int {
	if kind == eval.EventRaised {
		return 1
	}
	return 2
}

func applyAlertEvent(t *tx, ev eval.Event) error {
	a := &ev.Alert
	data, err := json.Marshal(a)
	if err != nil {
		return err
	}
	var last, state string
	var clearedBy sql.NullString
	err = t.QueryRowContext(t.ctx, `SELECT last_event, state, cleared_by FROM alerts WHERE id = $1`, a.ID).Scan(&last, &state, &clearedBy)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		var clearedAt any
		var by any
		if a.State == eval.StateCleared {
			clearedAt, by = t.ms(), "engine"
		}
		_, err = t.ExecContext(t.ctx, `
INSERT INTO alerts (id, device, fleet, type, fence, severity, state, late, start_ms, end_ms, last_event, data, cleared_at, cleared_by, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)`,
			a.ID, a.Device, nullString(a.Fleet), a.Type, nullString(a.Fence), string(a.Severity), a.State, boolInt(a.Late),
			a.StartMs, nullInt(a.EndMs), ev.Kind, string(data), clearedAt, by, t.ms())
		if err != nil {
			return fmt.Errorf("insert alert %s: %w", a.ID, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("read alert %s: %w", a.ID, err)
	}
	if eventRank(ev.Kind) < eventRank(last) {
		return nil // already past it
	}
	// A hand-cleared alert stays cleared; the engine's clear is recorded
	// as the engine's only if nobody cleared it first.
	newState, by := a.State, clearedBy.String
	if state == eval.StateCleared {
		newState = eval.StateCleared
	}
	var clearedAt any = nil
	if newState == eval.StateCleared && by == "" {
		by, clearedAt = "engine", t.ms()
	}
	if clearedAt != nil {
		_, err = t.ExecContext(t.ctx, `UPDATE alerts SET state = $1, late = $2, end_ms = $3, last_event = $4, data = $5, cleared_at = $6,
cleared_by = $7, updated_at = $8 WHERE id = $9`, newState, boolInt(a.Late), nullInt(a.EndMs), ev.Kind, string(data), clearedAt, by, t.ms(), a.ID)
	} else {
		_, err = t.ExecContext(t.ctx, `UPDATE alerts SET state = $1, late = $2, end_ms = $3, last_event = $4, data = $5, updated_at = $6 WHERE id = $7`,
			newState, boolInt(a.Late), nullInt(a.EndMs), ev.Kind, string(data), t.ms(), a.ID)
	}
	if err != nil {
		return fmt.Errorf("update alert %s: %w", a.ID, err)
	}
	return nil
}
