package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"

	"github.com/drover-telemetry/drover/alerts/eval"
)

// geoFeature is one GeoJSON Feature as an import reads it.
type geoFeature struct {
	Type       string                     `json:"type"`
	ID         any                        `json:"id"`
	Geometry   json.RawMessage            `json:"geometry"`
	Properties map[string]json.RawMessage `json:"properties"`
}

// fenceProps are the feature properties that are fence settings (the
// fields of eval.Fence); other properties (a map's kind or colour, a
// description of the source) are kept out of the fence.
var fenceProps = []string{"id", "name", "fleet", "classes", "devices", "radius_m", "width_m", "events", "dwell",
	"speed_limit_kmh", "severity", "hysteresis", "description"}

// GeofenceImportError is one feature an import refused.
type GeofenceImportError struct {
	Index int    `json:"index"`
	ID    string `json:"id,omitempty"`
	Error string `json:"error"`
}

// GeofenceImportResult is what an import did.
type GeofenceImportResult struct {
	Created int `json:"created"`
	Updated int `json:"updated"`
}

// importGeofences takes a GeoJSON FeatureCollection (POST
// /v1/imports/geofences[?fleet=F][&mode=create|upsert]): each feature is
// a fence, its geometry the fence's, its properties the fence's settings
// (docs/alerts.md, "GeoJSON import"). All or nothing, in one transaction,
// with a report of every feature refused.
func (s *Server) importGeofences(w http.ResponseWriter, r *http.Request, p *principal) error {
	q := r.URL.Query()
	mode := q.Get("mode")
	if mode == "" {
		mode = "create"
	}
	if mode != "create" && mode != "upsert" {
		return errBadRequest("mode: %q, want create or upsert", mode)
	}
	defaultFleet := q.Get("fleet")
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errTooLarge(mbe.Limit)
		}
		return errBadRequest("body: %v", err)
	}
	var fc struct {
		Type     string       `json:"type"`
		Features []geoFeature `json:"features"`
	}
	if err := json.Unmarshal(body, &fc); err != nil {
		return errBadRequest("body: %v", err)
	}
	if fc.Type != "FeatureCollection" {
		return errInvalid("type", "type: %q, want a GeoJSON FeatureCollection", fc.Type)
	}
	if len(fc.Features) == 0 {
		return errInvalid("features", "no features")
	}
	if len(fc.Features) > eval.MaxFences {
		return errInvalid("features", "%d features, at most %d", len(fc.Features), eval.MaxFences)
	}
	type item struct {
		id, fleet string
		body      []byte
		obj       any
	}
	var items []item
	var bad []GeofenceImportError
	seen := map[string]bool{}
	for i, f := range fc.Features {
		m := map[string]json.RawMessage{}
		for k, v := range f.Properties {
			if slices.Contains(fenceProps, k) {
				m[k] = v
			}
		}
		if _, ok := m["id"]; !ok && f.ID != nil {
			b, _ := json.Marshal(fmt.Sprint(f.ID))
			m["id"] = b
		}
		if _, ok := m["fleet"]; !ok && defaultFleet != "" {
			b, _ := json.Marshal(defaultFleet)
			m["fleet"] = b
		}
		m["geometry"] = f.Geometry
		b, _ := json.Marshal(m)
		obj, id, fleet, err := fenceKind.check(b)
		if err == nil && f.Type != "Feature" {
			err = fmt.Errorf("type %q, want Feature", f.Type)
		}
		if err == nil && seen[id] {
			err = errors.New("id used twice in the import")
		}
		if err == nil {
			err = mayWrite(p, fleet)
		}
		if err != nil {
			var ae *Error
			msg := err.Error()
			if errors.As(err, &ae) {
				msg = ae.Message
			}
			bad = append(bad, GeofenceImportError{Index: i, ID: id, Error: msg})
			continue
		}
		seen[id] = true
		canon, _ := json.Marshal(obj)
		items = append(items, item{id: id, fleet: fleet, body: canon, obj: obj})
	}
	if len(bad) > 0 {
		return &Error{Status: http.StatusUnprocessableEntity, Code: "invalid", Message: fmt.Sprintf("%d of %d features refused; nothing imported", len(bad), len(fc.Features)),
			Details: bad}
	}
	var res GeofenceImportResult
	err = s.db.write(r.Context(), func(t *tx) error {
		for _, it := range items {
			existing, lerr := fenceKind.load(r, t, p, it.id)
			exists := lerr == nil
			if lerr != nil && !isNotFound(lerr) {
				return lerr
			}
			if !exists {
				var n int
				if err := t.QueryRowContext(t.ctx, `SELECT COUNT(*) FROM alert_objects WHERE kind = 'geofence' AND id = $1`, it.id).Scan(&n); err != nil {
					return fmt.Errorf("import geofences: %w", err)
				}
				if n > 0 {
					return errConflict("geofence %q already exists", it.id)
				}
			}
			if exists && mode == "create" {
				return errConflict("geofence %q already exists (mode=upsert replaces)", it.id)
			}
			o, err := s.insertAlertObject(t, fenceKind, it.id, it.fleet, it.body, exists)
			if err != nil {
				return err
			}
			action, before := "geofence.create", any(nil)
			if exists {
				action = "geofence.update"
				prev, _, _, _ := fenceKind.check(existing.Body)
				before = prev
				res.Updated++
			} else {
				res.Created++
			}
			if err := t.audit(actorOf(r, p), change{action: action, objType: "geofence", objID: it.id, fleet: it.fleet,
				before: before, after: it.obj, version: o.Version}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func isNotFound(err error) bool {
	var ae *Error
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// exportGeofences answers GET /v1/exports/geofences[?fleet=F]: the fences
// the caller sees as a GeoJSON FeatureCollection, each feature's
// properties its settings plus a kind for maps (no-go, speed, corridor,
// depot, zone). It imports back as it is.
func (s *Server) exportGeofences(w http.ResponseWriter, r *http.Request, p *principal) error {
	var qa queryArgs
	qa.add("kind = ?", "geofence")
	if fl := r.URL.Query().Get("fleet"); fl != "" {
		qa.add("fleet = ?", fl)
	}
	if fl := p.scopeFleets(); fl != nil {
		qa.in("fleet", fl)
	}
	rows, err := s.db.rdb.QueryContext(r.Context(), `SELECT body FROM alert_objects`+qa.clause()+` ORDER BY id`, qa.args...)
	if err != nil {
		return fmt.Errorf("export geofences: %w", err)
	}
	defer rows.Close()
	var buf bytes.Buffer
	buf.WriteString(`{"type":"FeatureCollection","features":[`)
	n := 0
	for rows.Next() {
		var body string
		if err := rows.Scan(&body); err != nil {
			return fmt.Errorf("export geofences: %w", err)
		}
		var f eval.Fence
		if err := json.Unmarshal([]byte(body), &f); err != nil {
			return fmt.Errorf("export geofences: %w", err)
		}
		var props map[string]any
		_ = json.Unmarshal([]byte(body), &props)
		delete(props, "geometry")
		props["kind"] = mapKind(&f)
		feat, err := json.Marshal(map[string]any{"type": "Feature", "id": f.ID, "geometry": f.Geometry, "properties": props})
		if err != nil {
			return fmt.Errorf("export geofences: %w", err)
		}
		if n > 0 {
			buf.WriteByte(',')
		}
		buf.Write(feat)
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("export geofences: %w", err)
	}
	buf.WriteString(`]}`)
	w.Header().Set("Content-Type", "application/geo+json")
	_, _ = w.Write(buf.Bytes())
	return nil
}

// mapKind is how a map colours a fence (the live map's kinds).
func mapKind(f *eval.Fence) string {
	switch {
	case slices.Contains(f.Events, eval.FenceInside):
		return "no-go"
	case f.SpeedLimit > 0:
		return "speed"
	case f.WidthM > 0:
		return "corridor"
	case slices.Contains(f.Events, eval.FenceDwell):
		return "depot"
	}
	return "zone"
}
