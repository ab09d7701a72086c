package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"time"

	"github.com/drover-telemetry/drover/telemetry"
)

// Device lifecycle states.
const (
	StateActive         = "active"
	StateSuspended      = "suspended"
	StateDecommissioned = "decommissioned"
)

// Device is a device as the API shows it. Token hashes are never shown.
type Device struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Fleet          string            `json:"fleet"`
	Class          string            `json:"class"`
	Region         string            `json:"region"`
	Labels         map[string]string `json:"labels"`
	State          string            `json:"state"`
	StateChangedAt time.Time         `json:"state_changed_at"`
	StateChangedBy string            `json:"state_changed_by"`
	StateReason    string            `json:"state_reason"`
	Credential     Credential        `json:"credential"`
	Presence       *Presence         `json:"presence"`
	Version        int64             `json:"version"`
	CreatedAt      time.Time         `json:"created_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	// Token is present once: in the answer of the request that issued it.
	Token string `json:"token,omitempty"`
}

// Credential says what tokens a device has, never the tokens.
type Credential struct {
	HasToken bool       `json:"has_token"`
	IssuedAt *time.Time `json:"issued_at"`
	// PreviousValidUntil is the end of a rotation's overlap window: until
	// then the token before the current one still works.
	PreviousValidUntil *time.Time `json:"previous_valid_until"`
}

// Presence is what frontends last reported of a device.
type Presence struct {
	LastSeenAt time.Time `json:"last_seen_at"`
	Frontend   string    `json:"frontend"`
	RemoteAddr string    `json:"remote_addr"`
	Connected  bool      `json:"connected"`
	// FirmwareVersion is the version the device said it runs when it last
	// connected naming one ("" when it never did).
	FirmwareVersion string `json:"firmware_version"`
}

// deviceRow is a devices row, with the hashes the API never shows.
type deviceRow struct {
	Device
	tokenHash, prevHash string
	prevExpires         int64 // unix ms; 0: none
}

// auditView is what the audit log records of a device: the API's view
// without presence (not a registry change).
func (d deviceRow) auditView() Device {
	v := d.Device
	v.Presence, v.Token = nil, ""
	return v
}

const deviceCols = `d.id, d.name, d.fleet, d.class, d.region, d.labels, d.state, d.state_changed_at, d.state_changed_by,
 d.state_reason, d.token_hash, d.token_issued_at, d.prev_token_hash, d.prev_token_expires_at, d.version, d.created_at,
 d.updated_at, p.last_seen_at, p.frontend, p.remote_addr, p.connected, p.firmware`

const deviceFrom = ` FROM devices d LEFT JOIN device_presence p ON p.device_id = d.id`

type scanner interface{ Scan(...any) error }

func scanDevice(sc scanner) (deviceRow, error) {
	var d deviceRow
	var fleet, class, region, tokenHash, prevHash, pFrontend, pRemote, pFirmware sql.NullString
	var issued, prevExp, pSeen, pConn sql.NullInt64
	var labels string
	var changedAt, created, updated int64
	err := sc.Scan(&d.ID, &d.Name, &fleet, &class, &region, &labels, &d.State, &changedAt, &d.StateChangedBy,
		&d.StateReason, &tokenHash, &issued, &prevHash, &prevExp, &d.Version, &created, &updated,
		&pSeen, &pFrontend, &pRemote, &pConn, &pFirmware)
	if err != nil {
		return d, err
	}
	d.Fleet, d.Class, d.Region = fleet.String, class.String, region.String
	d.tokenHash, d.prevHash, d.prevExpires = tokenHash.String, prevHash.String, prevExp.Int64
	if err := json.Unmarshal([]byte(labels), &d.Labels); err != nil || d.Labels == nil {
		d.Labels = map[string]string{}
	}
	d.StateChangedAt, d.CreatedAt, d.UpdatedAt = msTime(changedAt), msTime(created), msTime(updated)
	d.Credential.HasToken = d.tokenHash != ""
	if issued.Valid && d.tokenHash != "" {
		t := msTime(issued.Int64)
		d.Credential.IssuedAt = &t
	}
	if d.prevHash != "" && prevExp.Valid {
		t := msTime(prevExp.Int64)
		d.Credential.PreviousValidUntil = &t
	}
	if pSeen.Valid {
		d.Presence = &Presence{LastSeenAt: msTime(pSeen.Int64), Frontend: pFrontend.String, RemoteAddr: pRemote.String,
			Connected: pConn.Int64 != 0, FirmwareVersion: pFirmware.String}
	}
	return d, nil
}

func msTime(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// loadDevice reads a device the caller may see, or answers 404 (also for
// a device of a fleet out of the caller's scope: the two are
// indistinguishable).
func loadDevice(ctx context.Context, q querier, p *principal, id string) (deviceRow, error) {
	d, err := scanDevice(q.QueryRowContext(ctx, `SELECT `+deviceCols+deviceFrom+` WHERE d.id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.sees(d.Fleet)) {
		return d, errNotFound("device", id)
	}
	if err != nil {
		return d, fmt.Errorf("read device %s: %w", id, err)
	}
	return d, nil
}

var (
	labelKeyRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	refIDRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
)

const (
	maxNameLen   = 256
	maxLabels    = 32
	maxLabelVal  = 256
	maxReasonLen = 512
)

func validateName(field, name string) error {
	if len(name) > maxNameLen {
		return errInvalid(field, "%s: %d bytes, at most %d", field, len(name), maxNameLen)
	}
	return nil
}

func validateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return errInvalid("labels", "labels: %d, at most %d", len(labels), maxLabels)
	}
	for k, v := range labels {
		if !labelKeyRE.MatchString(k) {
			return errInvalid("labels", "label key %q: want 1-63 of A-Z a-z 0-9 . _ -, starting with a letter or digit", k)
		}
		if len(v) > maxLabelVal {
			return errInvalid("labels", "label %q: value over %d bytes", k, maxLabelVal)
		}
	}
	return nil
}

func validateDeviceID(id string) error {
	if err := telemetry.ValidateDeviceID(id); err != nil {
		return errInvalid("id", "%v", err)
	}
	return nil
}

// refs are a device's references to the catalogs.
type refs struct{ fleet, class, region string }

// checkRefs answers 422 when a referenced fleet, class or region does not
// exist, or (fleet) is not the caller's to use: both read "unknown fleet".
// A scoped caller must name one of its fleets.
func checkRefs(ctx context.Context, q querier, p *principal, r refs) error {
	if r.fleet == "" && !p.all {
		return errInvalid("fleet", "fleet: required (your key is scoped to %v)", p.fleetList())
	}
	for _, c := range []struct {
		field, table, id string
	}{{"fleet", "fleets", r.fleet}, {"class", "classes", r.class}, {"region", "regions", r.region}} {
		if c.id == "" {
			continue
		}
		if c.field == "fleet" && !p.sees(c.id) {
			return errInvalid("fleet", "unknown fleet %q", c.id)
		}
		var one int
		err := q.QueryRowContext(ctx, `SELECT 1 FROM `+c.table+` WHERE id = $1`, c.id).Scan(&one)
		if errors.Is(err, sql.ErrNoRows) {
			return errInvalid(c.field, "unknown %s %q", c.field, c.id)
		}
		if err != nil {
			return fmt.Errorf("check %s: %w", c.field, err)
		}
	}
	return nil
}

// listDevices answers GET /v1/devices.
func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, p *principal) error {
	pg, err := parsePage(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	var qa queryArgs
	if pg.cursor != "" {
		qa.add("d.id > ?", pg.cursor)
	}
	for _, f := range []string{"fleet", "class", "region"} {
		if v := q.Get(f); v != "" {
			qa.add("d."+f+" = ?", v)
		}
	}
	if v := q.Get("state"); v != "" {
		if v != StateActive && v != StateSuspended && v != StateDecommissioned {
			return errBadRequest("state: %q, want active, suspended or decommissioned", v)
		}
		qa.add("d.state = ?", v)
	}
	if v := q.Get("q"); v != "" {
		n := qa.next()
		qa.args = append(qa.args, likePattern(v))
		qa.where = append(qa.where, fmt.Sprintf(`(lower(d.id) LIKE $%d ESCAPE '\' OR lower(d.name) LIKE $%d ESCAPE '\')`, n, n))
	}
	if fl := p.scopeFleets(); fl != nil {
		qa.in("d.fleet", fl)
	}
	rows, err := s.db.rdb.QueryContext(r.Context(),
		`SELECT `+deviceCols+deviceFrom+qa.clause()+fmt.Sprintf(` ORDER BY d.id LIMIT %d`, pg.limit+1), qa.args...)
	if err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return fmt.Errorf("list devices: %w", err)
		}
		out = append(out, d.Device)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list devices: %w", err)
	}
	writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(d Device) string { return d.ID }))
	return nil
}

// getDevice answers GET /v1/devices/{id}.
func (s *Server) getDevice(w http.ResponseWriter, r *http.Request, p *principal) error {
	d, err := loadDevice(r.Context(), s.db.rdb, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeObject(w, http.StatusOK, d.Version, d.Device)
}

// DeviceInput is the body of POST /v1/devices.
type DeviceInput struct {
	ID     string            `json:"id"`
	Name   string            `json:"name"`
	Fleet  string            `json:"fleet"`
	Class  string            `json:"class"`
	Region string            `json:"region"`
	Labels map[string]string `json:"labels"`
	// State is the initial state: active (default) or suspended.
	State string `json:"state"`
	// IssueToken issues the device's first token, shown in the answer.
	IssueToken bool `json:"issue_token"`
}

func (in *DeviceInput) validate() error {
	if err := validateDeviceID(in.ID); err != nil {
		return err
	}
	if err := validateName("name", in.Name); err != nil {
		return err
	}
	if err := validateLabels(in.Labels); err != nil {
		return err
	}
	switch in.State {
	case "":
		in.State = StateActive
	case StateActive, StateSuspended:
	default:
		return errInvalid("state", "state: %q, a new device is active or suspended", in.State)
	}
	return nil
}

// createDevice answers POST /v1/devices.
func (s *Server) createDevice(w http.ResponseWriter, r *http.Request, p *principal) error {
	var in DeviceInput
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	if err := in.validate(); err != nil {
		return err
	}
	var d deviceRow
	err := s.db.write(r.Context(), func(t *tx) error {
		if err := checkRefs(t.ctx, t, p, refs{in.Fleet, in.Class, in.Region}); err != nil {
			return err
		}
		token := ""
		if in.IssueToken {
			token = newSecret()
		}
		v := t.next()
		if err := insertDevice(t, in, token, p.actor(), v); err != nil {
			if isUniqueViolation(err) {
				return errConflict("device %q already exists", in.ID)
			}
			return err
		}
		var err error
		if d, err = loadDevice(t.ctx, t, p, in.ID); err != nil {
			return err
		}
		d.Token = token
		return t.audit(actorOf(r, p), change{action: "device.create", objType: "device", objID: in.ID, fleet: in.Fleet,
			after: d.auditView()})
	})
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/devices/"+d.ID)
	return writeObject(w, http.StatusCreated, d.Version, d.Device)
}

// insertDevice inserts one device at version v, with a token hash when
// token is not empty.
func insertDevice(t *tx, in DeviceInput, token, actor string, v int64) error {
	labels, err := json.Marshal(nonNilLabels(in.Labels))
	if err != nil {
		return err
	}
	var hash, issued any
	if token != "" {
		hash, issued = hashSecret(token), t.ms()
	}
	_, err = t.ExecContext(t.ctx, `
INSERT INTO devices (id, name, fleet, class, region, labels, state, state_changed_at, state_changed_by, state_reason,
 token_hash, token_issued_at, version, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, '', $10, $11, $12, $8, $8)`,
		in.ID, in.Name, nullString(in.Fleet), nullString(in.Class), nullString(in.Region), string(labels), in.State,
		t.ms(), actor, hash, issued, v)
	if err != nil {
		return fmt.Errorf("insert device %s: %w", in.ID, err)
	}
	return nil
}

func nonNilLabels(l map[string]string) map[string]string {
	if l == nil {
		return map[string]string{}
	}
	return l
}

// updateDevice answers PATCH /v1/devices/{id}: the fields given replace
// the device's (name, fleet, class, region, labels); "" clears a
// reference and labels replace the whole set.
func (s *Server) updateDevice(w http.ResponseWriter, r *http.Request, p *principal) error {
	var patch struct {
		Name   *string            `json:"name"`
		Fleet  *string            `json:"fleet"`
		Class  *string            `json:"class"`
		Region *string            `json:"region"`
		Labels *map[string]string `json:"labels"`
	}
	if err := decodeJSON(r, &patch); err != nil {
		return err
	}
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
		after := before
		if patch.Name != nil {
			after.Name = *patch.Name
		}
		if patch.Fleet != nil {
			after.Fleet = *patch.Fleet
		}
		if patch.Class != nil {
			after.Class = *patch.Class
		}
		if patch.Region != nil {
			after.Region = *patch.Region
		}
		if patch.Labels != nil {
			after.Labels = nonNilLabels(*patch.Labels)
		}
		if err := validateName("name", after.Name); err != nil {
			return err
		}
		if err := validateLabels(after.Labels); err != nil {
			return err
		}
		if err := checkRefs(t.ctx, t, p, refs{after.Fleet, after.Class, after.Region}); err != nil {
			return err
		}
		labels, _ := json.Marshal(after.Labels)
		v := t.next()
		if _, err := t.ExecContext(t.ctx, `
UPDATE devices SET name = $1, fleet = $2, class = $3, region = $4, labels = $5, version = $6, updated_at = $7 WHERE id = $8`,
			after.Name, nullString(after.Fleet), nullString(after.Class), nullString(after.Region), string(labels), v, t.ms(), id); err != nil {
			return fmt.Errorf("update device %s: %w", id, err)
		}
		if d, err = loadDevice(t.ctx, t, p, id); err != nil {
			return err
		}
		return t.audit(actorOf(r, p), change{action: "device.update", objType: "device", objID: id, fleet: d.Fleet,
			fleetBefore: before.Fleet, before: before.auditView(), after: d.auditView()})
	})
	if err != nil {
		return err
	}
	return writeObject(w, http.StatusOK, d.Version, d.Device)
}

// setDeviceState answers POST /v1/devices/{id}/state. active and suspended
// go both ways; decommissioned is final. Asking for the state a device is
// already in changes nothing.
func (s *Server) setDeviceState(w http.ResponseWriter, r *http.Request, p *principal) error {
	var in struct {
		State  string `json:"state"`
		Reason string `json:"reason"`
	}
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	switch in.State {
	case StateActive, StateSuspended, StateDecommissioned:
	default:
		return errInvalid("state", "state: %q, want active, suspended or decommissioned", in.State)
	}
	if len(in.Reason) > maxReasonLen {
		return errInvalid("reason", "reason: over %d bytes", maxReasonLen)
	}
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
		d = before
		if before.State == in.State {
			return nil
		}
		if before.State == StateDecommissioned {
			return errConflict("device %q is decommissioned: that is final", id)
		}
		v := t.next()
		if _, err := t.ExecContext(t.ctx, `
UPDATE devices SET state = $1, state_changed_at = $2, state_changed_by = $3, state_reason = $4, version = $5, updated_at = $2
WHERE id = $6`, in.State, t.ms(), p.actor(), in.Reason, v, id); err != nil {
			return fmt.Errorf("set device state %s: %w", id, err)
		}
		if d, err = loadDevice(t.ctx, t, p, id); err != nil {
			return err
		}
		return t.audit(actorOf(r, p), change{action: "device.state", objType: "device", objID: id, fleet: d.Fleet,
			before: before.auditView(), after: d.auditView()})
	})
	if err != nil {
		return err
	}
	return writeObject(w, http.StatusOK, d.Version, d.Device)
}

// deleteDevice answers DELETE /v1/devices/{id}: only a decommissioned
// device can be deleted (its data stays in the sinks); followers see a
// tombstone.
func (s *Server) deleteDevice(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	err := s.db.write(r.Context(), func(t *tx) error {
		before, err := loadDevice(t.ctx, t, p, id)
		if err != nil {
			return err
		}
		if err := checkIfMatch(r, before.Version); err != nil {
			return err
		}
		if before.State != StateDecommissioned {
			return errConflict("device %q is %s: decommission it first", id, before.State)
		}
		if _, err := t.ExecContext(t.ctx, `DELETE FROM devices WHERE id = $1`, id); err != nil {
			return fmt.Errorf("delete device %s: %w", id, err)
		}
		v := t.next()
		if _, err := t.ExecContext(t.ctx, `INSERT INTO feed_tombstones (version, kind, id, at) VALUES ($1, 'device', $2, $3)`,
			v, id, t.ms()); err != nil {
			return fmt.Errorf("delete device %s: tombstone: %w", id, err)
		}
		return t.audit(actorOf(r, p), change{action: "device.delete", objType: "device", objID: id, fleetBefore: before.Fleet,
			before: before.auditView()})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
