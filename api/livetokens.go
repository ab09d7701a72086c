package api

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
	"time"
)

// LiveToken is a live-client token: what a dispatch screen or an app
// presents to the livefeed. It sees the vehicles of its fleets, narrowed
// to a set of devices and to a map area when those are given, until it
// expires or is revoked.
type LiveToken struct {
	ID        string     `json:"id"`
	Name      string     `json:"name"`
	Fleets    []string   `json:"fleets"`
	Devices   []string   `json:"devices"`
	Area      *Area      `json:"area"`
	ExpiresAt time.Time  `json:"expires_at"`
	RevokedAt *time.Time `json:"revoked_at"`
	CreatedBy string     `json:"created_by"`
	CreatedAt time.Time  `json:"created_at"`
	Version   int64      `json:"version"`
	// Token is present once: in the answer that created it.
	Token string `json:"token,omitempty"`
}

// Area is a map rectangle in degrees (WGS 84).
type Area struct {
	MinLat float64 `json:"min_lat"`
	MinLon float64 `json:"min_lon"`
	MaxLat float64 `json:"max_lat"`
	MaxLon float64 `json:"max_lon"`
}

func (a *Area) validate() error {
	if a == nil {
		return nil
	}
	ok := func(v, lim float64) bool { return !math.IsNaN(v) && v >= -lim && v <= lim }
	if !ok(a.MinLat, 90) || !ok(a.MaxLat, 90) || !ok(a.MinLon, 180) || !ok(a.MaxLon, 180) || a.MinLat > a.MaxLat || a.MinLon > a.MaxLon {
		return errInvalid("area", "area: want -90 <= min_lat <= max_lat <= 90 and -180 <= min_lon <= max_lon <= 180")
	}
	return nil
}

const (
	maxLiveTokenDevices  = 1000
	maxLiveTokenLifetime = 366 * 24 * time.Hour
	defaultLiveTokenLife = 30 * 24 * time.Hour
)

const liveTokenCols = `id, name, fleets, devices, area, expires_at, revoked_at, created_by, created_at, version`

func scanLiveToken(sc scanner) (LiveToken, error) {
	var lt LiveToken
	var fleetsJSON, devicesJSON string
	var area sql.NullString
	var expires, created int64
	var revoked sql.NullInt64
	if err := sc.Scan(&lt.ID, &lt.Name, &fleetsJSON, &devicesJSON, &area, &expires, &revoked, &lt.CreatedBy, &created, &lt.Version); err != nil {
		return lt, err
	}
	if err := json.Unmarshal([]byte(fleetsJSON), &lt.Fleets); err != nil {
		return lt, fmt.Errorf("live token %s: fleets: %w", lt.ID, err)
	}
	if err := json.Unmarshal([]byte(devicesJSON), &lt.Devices); err != nil {
		return lt, fmt.Errorf("live token %s: devices: %w", lt.ID, err)
	}
	if lt.Devices == nil {
		lt.Devices = []string{}
	}
	if area.Valid {
		lt.Area = &Area{}
		if err := json.Unmarshal([]byte(area.String), lt.Area); err != nil {
			return lt, fmt.Errorf("live token %s: area: %w", lt.ID, err)
		}
	}
	lt.ExpiresAt, lt.CreatedAt, lt.RevokedAt = msTime(expires), msTime(created), optTime(revoked)
	return lt, nil
}

func loadLiveToken(ctx context.Context, q querier, p *principal, id string) (LiveToken, error) {
	lt, err := scanLiveToken(q.QueryRowContext(ctx, `SELECT `+liveTokenCols+` FROM live_tokens WHERE id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !p.covers(lt.Fleets)) {
		return lt, errNotFound("live token", id)
	}
	if err != nil {
		return lt, fmt.Errorf("read live token %s: %w", id, err)
	}
	return lt, nil
}

// listLiveTokens answers GET /v1/live-tokens: the tokens whose fleets are
// all within the caller's. Revoked and expired tokens are listed too
// (?active=true leaves them out).
func (s *Server) listLiveTokens(w http.ResponseWriter, r *http.Request, p *principal) error {
	pg, err := parsePage(r)
	if err != nil {
		return err
	}
	activeOnly := r.URL.Query().Get("active") == "true"
	var qa queryArgs
	if pg.cursor != "" {
		qa.add("id > ?", pg.cursor)
	}
	if activeOnly {
		qa.add("revoked_at IS NULL AND expires_at > ?", time.Now().UnixMilli())
	}
	rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT `+liveTokenCols+` FROM live_tokens`+qa.clause()+` ORDER BY id`, qa.args...)
	if err != nil {
		return fmt.Errorf("list live tokens: %w", err)
	}
	defer rows.Close()
	var out []LiveToken
	for rows.Next() && len(out) <= pg.limit {
		lt, err := scanLiveToken(rows)
		if err != nil {
			return fmt.Errorf("list live tokens: %w", err)
		}
		if p.covers(lt.Fleets) {
			out = append(out, lt)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list live tokens: %w", err)
	}
	writeJSON(w, http.StatusOK, pageOf(out, pg.limit, func(lt LiveToken) string { return lt.ID }))
	return nil
}

func (s *Server) getLiveToken(w http.ResponseWriter, r *http.Request, p *principal) error {
	lt, err := loadLiveToken(r.Context(), s.db.rdb, p, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeObject(w, http.StatusOK, lt.Version, lt)
}

// createLiveToken answers POST /v1/live-tokens; the token is in the
// answer, once.
func (s *Server) createLiveToken(w http.ResponseWriter, r *http.Request, p *principal) error {
	var in struct {
		Name             string   `json:"name"`
		Fleets           []string `json:"fleets"`
		Devices          []string `json:"devices"`
		Area             *Area    `json:"area"`
		ExpiresInSeconds int64    `json:"expires_in_seconds"`
	}
	if err := decodeJSON(r, &in); err != nil {
		return err
	}
	if in.Name == "" {
		return errInvalid("name", "name: required (it names the client in logs and metrics)")
	}
	if err := validateName("name", in.Name); err != nil {
		return err
	}
	if len(in.Fleets) == 0 {
		return errInvalid("fleets", `fleets: at least one, or ["*"] for every fleet`)
	}
	if slices.Contains(in.Fleets, allFleets) && len(in.Fleets) > 1 {
		return errInvalid("fleets", `fleets: "*" stands alone`)
	}
	if !p.covers(in.Fleets) {
		return errInvalid("fleets", "fleets: %v reach beyond your own %v", in.Fleets, p.fleetList())
	}
	if len(in.Devices) > maxLiveTokenDevices {
		return errInvalid("devices", "devices: %d, at most %d", len(in.Devices), maxLiveTokenDevices)
	}
	if err := in.Area.validate(); err != nil {
		return err
	}
	life := defaultLiveTokenLife
	if in.ExpiresInSeconds != 0 {
		life = time.Duration(in.ExpiresInSeconds) * time.Second
		if in.ExpiresInSeconds < 0 || life > maxLiveTokenLifetime {
			return errInvalid("expires_in_seconds", "expires_in_seconds: %d, want 1 to %d", in.ExpiresInSeconds, int64(maxLiveTokenLifetime/time.Second))
		}
	}
	slices.Sort(in.Fleets)
	in.Devices = slices.Compact(slices.Sorted(slices.Values(in.Devices)))
	if in.Devices == nil {
		in.Devices = []string{}
	}
	var lt LiveToken
	err := s.db.write(r.Context(), func(t *tx) error {
		tp := newPrincipal("", "", "", "", in.Fleets)
		for _, f := range in.Fleets {
			if f == allFleets {
				continue
			}
			var one int
			if err := t.QueryRowContext(t.ctx, `SELECT 1 FROM fleets WHERE id = $1`, f).Scan(&one); errors.Is(err, sql.ErrNoRows) {
				return errInvalid("fleets", "unknown fleet %q", f)
			} else if err != nil {
				return fmt.Errorf("check fleet: %w", err)
			}
		}
		for _, id := range in.Devices {
			d, err := loadDevice(t.ctx, t, p, id)
			if err != nil || !tp.sees(d.Fleet) {
				if err != nil && asAPIError(err).Status != http.StatusNotFound {
					return err
				}
				return errInvalid("devices", "device %q: unknown, or not in the token's fleets", id)
			}
		}
		token := newSecret()
		lt = LiveToken{ID: newID("lt_"), Name: in.Name, Fleets: in.Fleets, Devices: in.Devices, Area: in.Area,
			ExpiresAt: msTime(t.now.Add(life).UnixMilli()), CreatedBy: p.actor(), CreatedAt: msTime(t.ms()), Version: t.next()}
		fl, _ := json.Marshal(lt.Fleets)
		dv, _ := json.Marshal(lt.Devices)
		var area any
		if lt.Area != nil {
			b, _ := json.Marshal(lt.Area)
			area = string(b)
		}
		if _, err := t.ExecContext(t.ctx, `INSERT INTO live_tokens (id, name, fleets, devices, area, token_hash, expires_at, created_by, version, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`, lt.ID, lt.Name, string(fl), string(dv), area, hashSecret(token),
			lt.ExpiresAt.UnixMilli(), lt.CreatedBy, lt.Version, t.ms()); err != nil {
			return fmt.Errorf("create live token: %w", err)
		}
		if err := t.audit(actorOf(r, p), change{action: "live_token.create", objType: "live_token", objID: lt.ID,
			fleet: singleFleet(lt.Fleets), after: lt, version: lt.Version}); err != nil {
			return err
		}
		lt.Token = token
		return nil
	})
	if err != nil {
		return err
	}
	w.Header().Set("Location", "/v1/live-tokens/"+lt.ID)
	return writeObject(w, http.StatusCreated, lt.Version, lt)
}

// singleFleet is the fleet an audit entry of an object with these fleets
// is filed under: the fleet when there is one, else none (all-fleet keys
// only).
func singleFleet(fl []string) string {
	if len(fl) == 1 && fl[0] != allFleets {
		return fl[0]
	}
	return ""
}

// revokeLiveToken answers DELETE /v1/live-tokens/{id}.
func (s *Server) revokeLiveToken(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	err := s.db.write(r.Context(), func(t *tx) error {
		before, err := loadLiveToken(t.ctx, t, p, id)
		if err != nil {
			return err
		}
		if before.RevokedAt != nil {
			return nil
		}
		after := before
		now := msTime(t.ms())
		after.RevokedAt, after.Version = &now, t.next()
		if _, err := t.ExecContext(t.ctx, `UPDATE live_tokens SET revoked_at = $1, version = $2 WHERE id = $3`, t.ms(), after.Version, id); err != nil {
			return fmt.Errorf("revoke live token %s: %w", id, err)
		}
		return t.audit(actorOf(r, p), change{action: "live_token.revoke", objType: "live_token", objID: id,
			fleet: singleFleet(after.Fleets), before: before, after: after, version: after.Version})
	})
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
