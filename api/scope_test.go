package api

import (
	"net/http"
	"strings"
	"testing"
)

// The tenant boundary, proved for every endpoint: a key of fleet A — an
// admin, an operator or a viewer of A — can neither see nor change
// anything of fleet B. The table below has one case per route of
// routeTable; a route without a case fails the test, so a new endpoint
// cannot ship without its scope check.

// fixture is two tenants and everything each has.
type fixture struct {
	e                          *env
	adminA, operatorA, viewerA string // keys
	follower                   string
	opB, keyB, ltB, ltA        string // ids
	cmdB                       string // a queued command of bravo-dev-1
	fw                         string // a firmware image (fleet-wide: readers see it, scoped admins cannot change it)
	camp                       string // a paused campaign over both fleets' devices
	alertB                     string // an alert of fleet B
}

// bravo markers: strings that belong to fleet B only. None may reach a key
// of fleet A, unless the request itself carried it (an id echoed in a 404).
var bravoMarkers = []string{"fleet-bravo", "bravo-dev-1", "bravo-secret-name", "bravo-live", "bravo-admin"}

func newFixture(t *testing.T, b backend) *fixture {
	e := startEnv(t, b)
	f := &fixture{e: e}
	e.makeFleet("fleet-alpha")
	e.makeFleet("fleet-bravo")
	e.must(201, req{method: "POST", path: "/v1/classes", key: e.adminKey, body: map[string]string{"id": "van"}}, nil)
	e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{
		"id": "alpha-dev-1", "name": "alpha truck", "fleet": "fleet-alpha", "issue_token": true}}, nil)
	e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{
		"id": "bravo-dev-1", "name": "bravo-secret-name", "fleet": "fleet-bravo", "class": "van", "issue_token": true}}, nil)
	e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{
		"id": "bravo-dev-2", "name": "bravo-secret-name", "fleet": "fleet-bravo", "state": "suspended"}}, nil)
	e.must(200, req{method: "POST", path: "/v1/devices/bravo-dev-2/state", key: e.adminKey, body: map[string]any{"state": "decommissioned"}}, nil)
	_, f.adminA = e.makeOperator("alpha-admin", RoleAdmin, "fleet-alpha")
	_, f.operatorA = e.makeOperator("alpha-operator", RoleOperator, "fleet-alpha")
	_, f.viewerA = e.makeOperator("alpha-viewer", RoleViewer, "fleet-alpha")
	_, f.follower = e.makeOperator("frontends", RoleFollower, "*")
	var opB Operator
	e.must(201, req{method: "POST", path: "/v1/operators", key: e.adminKey,
		body: map[string]any{"name": "bravo-admin", "role": RoleAdmin, "fleets": []string{"fleet-bravo"}}}, &opB)
	f.opB = opB.ID
	var kB APIKey
	e.must(201, req{method: "POST", path: "/v1/operators/" + opB.ID + "/keys", key: e.adminKey, body: map[string]any{"name": "k"}}, &kB)
	f.keyB = kB.ID
	var lt LiveToken
	e.must(201, req{method: "POST", path: "/v1/live-tokens", key: e.adminKey, body: map[string]any{"name": "bravo-live", "fleets": []string{"fleet-bravo"}}}, &lt)
	f.ltB = lt.ID
	e.must(201, req{method: "POST", path: "/v1/live-tokens", key: e.adminKey, body: map[string]any{"name": "alpha-live", "fleets": []string{"fleet-alpha"}}}, &lt)
	f.ltA = lt.ID
	var cmd Command
	e.must(201, req{method: "POST", path: "/v1/devices/bravo-dev-1/commands", key: e.adminKey, body: map[string]any{"name": "bravo-secret-name"}}, &cmd)
	f.cmdB = cmd.ID
	var fw Firmware
	e.must(201, req{method: "POST", path: "/v1/firmware?version=1.0", key: e.adminKey, body: []byte("image"), contentType: "application/octet-stream"}, &fw)
	f.fw = fw.ID
	var camp Campaign
	e.must(201, req{method: "POST", path: "/v1/firmware-campaigns", key: e.adminKey, body: map[string]any{"firmware": fw.ID,
		"devices": []string{"alpha-dev-1", "bravo-dev-1"}}}, &camp)
	e.must(200, req{method: "POST", path: "/v1/firmware-campaigns/" + camp.ID + "/pause", key: e.adminKey}, nil)
	f.camp = camp.ID
	// Fleet B's alert configuration, and an alert of its device.
	e.must(201, req{method: "POST", path: "/v1/alert-rules", key: e.adminKey, body: map[string]any{
		"id": "bravo-secret-name-rule", "kind": "overspeed", "fleet": "fleet-bravo", "settings": map[string]any{"limit_kmh": 77}}}, nil)
	e.must(201, req{method: "POST", path: "/v1/geofences", key: e.adminKey, body: map[string]any{
		"id": "bravo-secret-name-depot", "name": "bravo-secret-name", "fleet": "fleet-bravo", "geometry": testSquare(28.0, -26.0, 0.01)}}, nil)
	e.must(201, req{method: "POST", path: "/v1/alert-webhooks", key: e.adminKey, body: map[string]any{
		"id": "bravo-secret-name-hook", "fleet": "fleet-bravo", "url": "https://bravo-secret-name.example.com/hook"}}, nil)
	f.alertB = "al_bravo0000000000000000"
	e.must(200, req{method: "POST", path: "/v1/alerts/events", key: f.follower, body: map[string]any{"events": []map[string]any{{
		"event": "raised", "at_ms": 1, "detected_ms": 1, "alert": map[string]any{"id": f.alertB, "type": "overspeed", "device": "bravo-dev-1",
			"fleet": "fleet-bravo", "severity": "major", "state": "active", "start_ms": 1, "message": "bravo-dev-1: speed"}}}}}, nil)
	return f
}

// testSquare is a GeoJSON polygon: a square of side d degrees at lon, lat.
func testSquare(lon, lat, d float64) map[string]any {
	return map[string]any{"type": "Polygon", "coordinates": [][][]float64{{{lon, lat}, {lon + d, lat}, {lon + d, lat + d}, {lon, lat + d}, {lon, lat}}}}
}

// bravoState is fleet B as an all-fleet admin sees it: what must not
// change whatever a key of A does.
func (f *fixture) bravoState(t *testing.T) string {
	e := f.e
	var parts []string
	for _, p := range []string{
		"/v1/devices?fleet=fleet-bravo", "/v1/fleets/fleet-bravo", "/v1/operators/" + f.opB, "/v1/operators/" + f.opB + "/keys",
		"/v1/live-tokens/" + f.ltB, "/v1/classes/van", "/v1/devices/bravo-dev-1/commands", "/v1/firmware",
		"/v1/alert-rules?fleet=fleet-bravo", "/v1/geofences?fleet=fleet-bravo", "/v1/alert-webhooks?fleet=fleet-bravo",
		"/v1/alerts?fleet=fleet-bravo",
	} {
		parts = append(parts, string(e.must(200, req{method: "GET", path: p, key: e.adminKey}, nil).body))
	}
	return strings.Join(parts, "\n")
}

// scopeCase is how a route is attacked from fleet A: the requests to send.
type scopeCase func(f *fixture) []req

func one(method, path string, body any) scopeCase {
	return func(*fixture) []req { return []req{{method: method, path: path, body: body}} }
}

var scopeCases = map[string]scopeCase{
	"GET /v1/openapi.json": one("GET", "/v1/openapi.json", nil),
	"GET /v1/me":           one("GET", "/v1/me", nil),
	"GET /v1/devices": func(*fixture) []req {
		return []req{{method: "GET", path: "/v1/devices"}, {method: "GET", path: "/v1/devices?fleet=fleet-bravo"},
			{method: "GET", path: "/v1/devices?q=bravo"}, {method: "GET", path: "/v1/devices?class=van"}}
	},
	"POST /v1/devices": func(*fixture) []req {
		return []req{{method: "POST", path: "/v1/devices", body: map[string]any{"id": "new-in-bravo", "fleet": "fleet-bravo"}},
			{method: "POST", path: "/v1/devices", body: map[string]any{"id": "no-fleet"}}}
	},
	"GET /v1/devices/{id}": one("GET", "/v1/devices/bravo-dev-1", nil),
	"PATCH /v1/devices/{id}": func(*fixture) []req {
		return []req{{method: "PATCH", path: "/v1/devices/bravo-dev-1", body: map[string]any{"name": "pwned"}},
			// Moving one's own device into B is refused too.
			{method: "PATCH", path: "/v1/devices/alpha-dev-1", body: map[string]any{"fleet": "fleet-bravo"}}}
	},
	"DELETE /v1/devices/{id}":            one("DELETE", "/v1/devices/bravo-dev-2", nil),
	"POST /v1/devices/{id}/state":        one("POST", "/v1/devices/bravo-dev-1/state", map[string]any{"state": "suspended"}),
	"POST /v1/devices/{id}/token":        one("POST", "/v1/devices/bravo-dev-2/token", nil),
	"POST /v1/devices/{id}/token/rotate": one("POST", "/v1/devices/bravo-dev-1/token/rotate", map[string]any{"overlap_seconds": 0}),
	"DELETE /v1/devices/{id}/token":      one("DELETE", "/v1/devices/bravo-dev-1/token", nil),
	"POST /v1/imports/devices": func(*fixture) []req {
		return []req{
			{method: "POST", path: "/v1/imports/devices", body: map[string]any{"devices": []map[string]any{{"id": "new-in-bravo", "fleet": "fleet-bravo"}}}},
			{method: "POST", path: "/v1/imports/devices?mode=upsert", body: map[string]any{"devices": []map[string]any{{"id": "bravo-dev-1", "fleet": "fleet-alpha"}}}},
			{method: "POST", path: "/v1/imports/devices?create_missing=true", body: map[string]any{"devices": []map[string]any{{"id": "x9", "fleet": "fleet-charlie"}}}},
		}
	},
	"GET /v1/exports/registry": one("GET", "/v1/exports/registry", nil),

	"GET /v1/fleets":           one("GET", "/v1/fleets", nil),
	"POST /v1/fleets":          one("POST", "/v1/fleets", map[string]any{"id": "fleet-charlie"}),
	"GET /v1/fleets/{id}":      one("GET", "/v1/fleets/fleet-bravo", nil),
	"PATCH /v1/fleets/{id}":    one("PATCH", "/v1/fleets/fleet-bravo", map[string]any{"name": "pwned"}),
	"DELETE /v1/fleets/{id}":   one("DELETE", "/v1/fleets/fleet-bravo", nil),
	"GET /v1/classes":          one("GET", "/v1/classes", nil),
	"POST /v1/classes":         one("POST", "/v1/classes", map[string]any{"id": "tank"}),
	"GET /v1/classes/{id}":     one("GET", "/v1/classes/van", nil),
	"PATCH /v1/classes/{id}":   one("PATCH", "/v1/classes/van", map[string]any{"name": "pwned"}),
	"DELETE /v1/classes/{id}":  one("DELETE", "/v1/classes/van", nil),
	"GET /v1/regions":          one("GET", "/v1/regions", nil),
	"POST /v1/regions":         one("POST", "/v1/regions", map[string]any{"id": "mars"}),
	"GET /v1/regions/{id}":     one("GET", "/v1/regions/mars", nil),
	"PATCH /v1/regions/{id}":   one("PATCH", "/v1/regions/mars", map[string]any{"name": "x"}),
	"DELETE /v1/regions/{id}":  one("DELETE", "/v1/regions/mars", nil),
	"GET /v1/live-tokens":      one("GET", "/v1/live-tokens", nil),
	"GET /v1/live-tokens/{id}": func(f *fixture) []req { return []req{{method: "GET", path: "/v1/live-tokens/" + f.ltB}} },
	"POST /v1/live-tokens": func(*fixture) []req {
		return []req{{method: "POST", path: "/v1/live-tokens", body: map[string]any{"name": "x", "fleets": []string{"fleet-bravo"}}},
			{method: "POST", path: "/v1/live-tokens", body: map[string]any{"name": "x", "fleets": []string{"*"}}},
			{method: "POST", path: "/v1/live-tokens", body: map[string]any{"name": "x", "fleets": []string{"fleet-alpha"}, "devices": []string{"bravo-dev-1"}}}}
	},
	"DELETE /v1/live-tokens/{id}": func(f *fixture) []req { return []req{{method: "DELETE", path: "/v1/live-tokens/" + f.ltB}} },

	"GET /v1/operators": one("GET", "/v1/operators", nil),
	"POST /v1/operators": func(*fixture) []req {
		return []req{{method: "POST", path: "/v1/operators", body: map[string]any{"name": "mole", "role": "admin", "fleets": []string{"fleet-bravo"}}},
			{method: "POST", path: "/v1/operators", body: map[string]any{"name": "mole", "role": "admin", "fleets": []string{"*"}}},
			{method: "POST", path: "/v1/operators", body: map[string]any{"name": "mole", "role": "follower", "fleets": []string{"*"}}}}
	},
	"GET /v1/operators/{id}": func(f *fixture) []req { return []req{{method: "GET", path: "/v1/operators/" + f.opB}} },
	"PATCH /v1/operators/{id}": func(f *fixture) []req {
		return []req{{method: "PATCH", path: "/v1/operators/" + f.opB, body: map[string]any{"disabled": true}}}
	},
	"DELETE /v1/operators/{id}": func(f *fixture) []req { return []req{{method: "DELETE", path: "/v1/operators/" + f.opB}} },
	"GET /v1/operators/{id}/keys": func(f *fixture) []req {
		return []req{{method: "GET", path: "/v1/operators/" + f.opB + "/keys"}}
	},
	"POST /v1/operators/{id}/keys": func(f *fixture) []req {
		return []req{{method: "POST", path: "/v1/operators/" + f.opB + "/keys", body: map[string]any{"name": "backdoor"}}}
	},
	"DELETE /v1/operators/{id}/keys/{key}": func(f *fixture) []req {
		return []req{{method: "DELETE", path: "/v1/operators/" + f.opB + "/keys/" + f.keyB}}
	},
	"GET /v1/audit": func(*fixture) []req {
		return []req{{method: "GET", path: "/v1/audit"}, {method: "GET", path: "/v1/audit?object_type=device&object_id=bravo-dev-1"},
			{method: "GET", path: "/v1/audit?object_type=fleet"}}
	},
	"GET /v1/devices/{id}/commands": func(*fixture) []req {
		return []req{{method: "GET", path: "/v1/devices/bravo-dev-1/commands"}, {method: "GET", path: "/v1/devices/bravo-dev-1/commands?state=queued"}}
	},
	"POST /v1/devices/{id}/commands": one("POST", "/v1/devices/bravo-dev-1/commands", map[string]any{"name": "immobilise"}),
	"GET /v1/devices/{id}/commands/{cmd}": func(f *fixture) []req {
		return []req{{method: "GET", path: "/v1/devices/bravo-dev-1/commands/" + f.cmdB},
			// A command of B reached through a device of A.
			{method: "GET", path: "/v1/devices/alpha-dev-1/commands/" + f.cmdB + "?wait=1s"}}
	},
	"POST /v1/devices/{id}/commands/{cmd}/cancel": func(f *fixture) []req {
		return []req{{method: "POST", path: "/v1/devices/bravo-dev-1/commands/" + f.cmdB + "/cancel"},
			{method: "POST", path: "/v1/devices/alpha-dev-1/commands/" + f.cmdB + "/cancel"}}
	},
	"GET /v1/frontends/{id}/commands": one("GET", "/v1/frontends/fe-1/commands?wait=0s", nil),
	"GET /v1/commands/events": func(f *fixture) []req {
		return []req{{method: "GET", path: "/v1/commands/events?device=bravo-dev-1&duration=10ms"},
			{method: "GET", path: "/v1/commands/events?duration=10ms"}}
	},
	"POST /v1/frontends/{id}/command-reports": func(f *fixture) []req {
		return []req{{method: "POST", path: "/v1/frontends/fe-1/command-reports", body: map[string]any{"reports": []map[string]any{
			{"id": f.cmdB, "device_id": "bravo-dev-1", "outcome": "failed", "at": 1}}}}}
	},
	"GET /v1/firmware": one("GET", "/v1/firmware", nil),
	"POST /v1/firmware": func(*fixture) []req {
		return []req{{method: "POST", path: "/v1/firmware?version=9.9", body: []byte("image"), contentType: "application/octet-stream"}}
	},
	"GET /v1/firmware/{id}":           func(f *fixture) []req { return []req{{method: "GET", path: "/v1/firmware/" + f.fw}} },
	"DELETE /v1/firmware/{id}":        func(f *fixture) []req { return []req{{method: "DELETE", path: "/v1/firmware/" + f.fw}} },
	"GET /v1/firmware/{id}/content":   func(f *fixture) []req { return []req{{method: "GET", path: "/v1/firmware/" + f.fw + "/content"}} },
	"POST /v1/firmware-campaigns":     one("POST", "/v1/firmware-campaigns", map[string]any{"firmware": "x", "fleet": "fleet-bravo"}),
	"GET /v1/firmware-campaigns/{id}": func(f *fixture) []req { return []req{{method: "GET", path: "/v1/firmware-campaigns/" + f.camp}} },
	"GET /v1/firmware-campaigns/{id}/devices": func(f *fixture) []req {
		return []req{{method: "GET", path: "/v1/firmware-campaigns/" + f.camp + "/devices"}}
	},
	"POST /v1/firmware-campaigns/{id}/{action}": func(f *fixture) []req {
		return []req{{method: "POST", path: "/v1/firmware-campaigns/" + f.camp + "/abort"}}
	},
	"GET /v1/alerts": func(*fixture) []req {
		return []req{{method: "GET", path: "/v1/alerts"}, {method: "GET", path: "/v1/alerts?fleet=fleet-bravo"},
			{method: "GET", path: "/v1/alerts?device=bravo-dev-1"}}
	},
	"GET /v1/alerts/{id}":        func(f *fixture) []req { return []req{{method: "GET", path: "/v1/alerts/" + f.alertB}} },
	"POST /v1/alerts/{id}/ack":   func(f *fixture) []req { return []req{{method: "POST", path: "/v1/alerts/" + f.alertB + "/ack"}} },
	"POST /v1/alerts/{id}/clear": func(f *fixture) []req { return []req{{method: "POST", path: "/v1/alerts/" + f.alertB + "/clear"}} },
	"POST /v1/alerts/events": one("POST", "/v1/alerts/events", map[string]any{"events": []map[string]any{{"event": "cleared",
		"alert": map[string]any{"id": "al_bravo0000000000000000", "type": "overspeed", "device": "bravo-dev-1", "fleet": "fleet-bravo",
			"severity": "major", "state": "cleared", "start_ms": 1}}}}),
	"GET /v1/alerts/config": one("GET", "/v1/alerts/config", nil),
	"GET /v1/alert-rules": func(*fixture) []req {
		return []req{{method: "GET", path: "/v1/alert-rules"}, {method: "GET", path: "/v1/alert-rules?fleet=fleet-bravo"}}
	},
	"POST /v1/alert-rules": func(*fixture) []req {
		return []req{{method: "POST", path: "/v1/alert-rules", body: map[string]any{"id": "x", "kind": "idling", "fleet": "fleet-bravo"}},
			{method: "POST", path: "/v1/alert-rules", body: map[string]any{"id": "x", "kind": "idling"}}}
	},
	"GET /v1/alert-rules/{id}":    one("GET", "/v1/alert-rules/bravo-secret-name-rule", nil),
	"PATCH /v1/alert-rules/{id}":  one("PATCH", "/v1/alert-rules/bravo-secret-name-rule", map[string]any{"severity": "info"}),
	"DELETE /v1/alert-rules/{id}": one("DELETE", "/v1/alert-rules/bravo-secret-name-rule", nil),
	"GET /v1/geofences": func(*fixture) []req {
		return []req{{method: "GET", path: "/v1/geofences"}, {method: "GET", path: "/v1/geofences?fleet=fleet-bravo"}}
	},
	"POST /v1/geofences": func(*fixture) []req {
		return []req{{method: "POST", path: "/v1/geofences", body: map[string]any{"id": "x", "fleet": "fleet-bravo", "geometry": testSquare(28, -26, 0.01)}},
			{method: "POST", path: "/v1/geofences", body: map[string]any{"id": "x", "geometry": testSquare(28, -26, 0.01)}}}
	},
	"GET /v1/geofences/{id}":    one("GET", "/v1/geofences/bravo-secret-name-depot", nil),
	"PATCH /v1/geofences/{id}":  one("PATCH", "/v1/geofences/bravo-secret-name-depot", map[string]any{"name": "pwned"}),
	"DELETE /v1/geofences/{id}": one("DELETE", "/v1/geofences/bravo-secret-name-depot", nil),
	"POST /v1/imports/geofences": func(*fixture) []req {
		feat := func(id, fleet string) map[string]any {
			return map[string]any{"type": "Feature", "id": id, "geometry": testSquare(28, -26, 0.01), "properties": map[string]any{"fleet": fleet}}
		}
		return []req{
			{method: "POST", path: "/v1/imports/geofences", body: map[string]any{"type": "FeatureCollection", "features": []any{feat("x", "fleet-bravo")}}},
			{method: "POST", path: "/v1/imports/geofences?mode=upsert", body: map[string]any{"type": "FeatureCollection",
				"features": []any{feat("bravo-secret-name-depot", "fleet-alpha")}}},
		}
	},
	"GET /v1/exports/geofences": func(*fixture) []req {
		return []req{{method: "GET", path: "/v1/exports/geofences"}, {method: "GET", path: "/v1/exports/geofences?fleet=fleet-bravo"}}
	},
	"GET /v1/alert-webhooks": func(*fixture) []req {
		return []req{{method: "GET", path: "/v1/alert-webhooks"}, {method: "GET", path: "/v1/alert-webhooks?fleet=fleet-bravo"}}
	},
	"POST /v1/alert-webhooks": func(*fixture) []req {
		return []req{{method: "POST", path: "/v1/alert-webhooks", body: map[string]any{"id": "x", "fleet": "fleet-bravo", "url": "https://evil.example.com/"}},
			{method: "POST", path: "/v1/alert-webhooks", body: map[string]any{"id": "x", "url": "https://evil.example.com/"}}}
	},
	"GET /v1/alert-webhooks/{id}":    one("GET", "/v1/alert-webhooks/bravo-secret-name-hook", nil),
	"PATCH /v1/alert-webhooks/{id}":  one("PATCH", "/v1/alert-webhooks/bravo-secret-name-hook", map[string]any{"url": "https://evil.example.com/"}),
	"DELETE /v1/alert-webhooks/{id}": one("DELETE", "/v1/alert-webhooks/bravo-secret-name-hook", nil),

	"GET /v1/feed/snapshot":    one("GET", "/v1/feed/snapshot", nil),
	"GET /v1/feed/changes":     one("GET", "/v1/feed/changes?since=0", nil),
	"GET /v1/feed/live-tokens": one("GET", "/v1/feed/live-tokens?since=0", nil),
	"POST /v1/feed/presence":   one("POST", "/v1/feed/presence", map[string]any{"frontend": "fe", "reports": []map[string]any{{"id": "bravo-dev-1", "seen_at": "2025-01-01T00:00:00Z"}}}),
}

func TestScopeEveryEndpoint(t *testing.T) {
	s := &Server{}
	for _, rt := range s.routeTable() {
		if scopeCases[rt.method+" "+rt.pattern] == nil {
			t.Errorf("route %s %s has no case in scopeCases: add how a key of another fleet attacks it", rt.method, rt.pattern)
		}
	}
	if t.Failed() {
		return
	}
	forEachBackend(t, func(t *testing.T, b backend) {
		f := newFixture(t, b)
		before := f.bravoState(t)
		for _, rt := range s.routeTable() {
			name := rt.method + " " + rt.pattern
			for _, who := range []struct{ role, key string }{{"admin", f.adminA}, {"operator", f.operatorA}, {"viewer", f.viewerA}} {
				for _, r := range scopeCases[name](f) {
					r.key = who.key
					res := f.e.do(r)
					sent := r.path + jsonString(r.body)
					for _, m := range bravoMarkers {
						if strings.Contains(string(res.body), m) && !strings.Contains(sent, m) {
							t.Errorf("%s as %s of A: %s %s leaks %q: %d %.500s", name, who.role, r.method, r.path, m, res.status, res.body)
						}
					}
					if res.status >= 200 && res.status < 300 && r.method != "GET" {
						t.Errorf("%s as %s of A: %s %s succeeded (%d): %.300s", name, who.role, r.method, r.path, res.status, res.body)
					}
					if res.status >= 500 {
						t.Errorf("%s as %s of A: %s %s: %d %s", name, who.role, r.method, r.path, res.status, res.body)
					}
				}
			}
		}
		if after := f.bravoState(t); after != before {
			t.Errorf("fleet B changed under keys of fleet A:\nbefore %s\nafter  %s", before, after)
		}
		// Nothing was created in B's name either.
		if r := f.e.do(req{method: "GET", path: "/v1/devices/new-in-bravo", key: f.e.adminKey}); r.status != 404 {
			t.Errorf("a device was created in fleet B: %d", r.status)
		}
	})
}

// TestRoles: what each role may call, spelled out (403 for the rest,
// whatever the object).
func TestRoles(t *testing.T) {
	reads := func(route string) bool {
		return strings.HasPrefix(route, "GET ") && !strings.Contains(route, "/operators") && !strings.Contains(route, "/feed/") &&
			!strings.Contains(route, "/frontends/") &&
			route != "GET /v1/exports/registry" && route != "GET /v1/alerts/config" && !strings.Contains(route, "/alert-webhooks")
	}
	allowed := map[string]func(route string) bool{
		"viewer": reads,
		"operator": func(route string) bool {
			if reads(route) || route == "GET /v1/exports/registry" {
				return true
			}
			return strings.HasPrefix(route, "POST /v1/devices") || strings.HasPrefix(route, "PATCH /v1/devices") ||
				route == "DELETE /v1/devices/{id}/token" || route == "POST /v1/imports/devices" ||
				route == "POST /v1/live-tokens" || route == "DELETE /v1/live-tokens/{id}" ||
				route == "POST /v1/alerts/{id}/ack" || route == "POST /v1/alerts/{id}/clear" ||
				strings.Contains(route, "/v1/alert-rules") || strings.Contains(route, "/v1/geofences") ||
				route == "POST /v1/imports/geofences"
		},
		"follower": func(route string) bool {
			return strings.Contains(route, "/v1/feed/") || strings.Contains(route, "/v1/frontends/") ||
				route == "GET /v1/firmware/{id}/content" ||
				route == "GET /v1/me" || route == "GET /v1/openapi.json" ||
				route == "GET /v1/alerts/config" || route == "POST /v1/alerts/events"
		},
	}
	e := startEnv(t, backends[0])
	e.makeFleet("f1")
	keys := map[string]string{}
	_, keys["viewer"] = e.makeOperator("v", RoleViewer, "f1")
	_, keys["operator"] = e.makeOperator("o", RoleOperator, "f1")
	_, keys["follower"] = e.makeOperator("fo", RoleFollower, "*")
	s := &Server{}
	for role, ok := range allowed {
		for _, rt := range s.routeTable() {
			name := rt.method + " " + rt.pattern
			path := strings.NewReplacer("{id}", "nope", "{key}", "nope", "{cmd}", "nope", "{action}", "pause").Replace(rt.pattern)
			if rt.pattern == "/v1/commands/events" {
				path += "?duration=10ms" // a stream: end it
			}
			res := e.do(req{method: rt.method, path: path, key: keys[role], body: map[string]any{}, invalid: true})
			if ok(name) && res.status == http.StatusForbidden {
				t.Errorf("%s may call %s, got 403: %s", role, name, res.body)
			}
			if !ok(name) && res.status != http.StatusForbidden {
				t.Errorf("%s may not call %s, got %d: %.200s", role, name, res.status, res.body)
			}
		}
	}
}
