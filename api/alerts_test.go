package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
)

func alertEvent(kind, id, device, fleet, state string, start int64) map[string]any {
	return map[string]any{"event": kind, "at_ms": start, "detected_ms": start, "alert": map[string]any{
		"id": id, "type": "overspeed", "device": device, "fleet": fleet, "severity": "major", "state": state,
		"start_ms": start, "peak": 131.5, "message": device + ": speeding"}}
}

// TestAlertConfigFollowedByTheEngine: rules, geofences and webhooks are
// one configuration whose version moves at each change; the engine's long
// poll answers as soon as it moves (well within the 2 s the issue asks),
// 304 when it does not, and carries webhook secrets only to followers.
func TestAlertConfigFollowedByTheEngine(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("acme")
		_, follower := e.makeOperator("alerts-engine", RoleFollower, "*")
		var rs eval.RuleSet
		e.must(200, req{method: "GET", path: "/v1/alerts/config", key: follower}, &rs)
		if rs.Version != 0 || len(rs.Rules)+len(rs.Geofences)+len(rs.Webhooks) != 0 {
			t.Fatalf("empty configuration: %+v", rs)
		}
		e.must(304, req{method: "GET", path: "/v1/alerts/config?since=0&wait=200ms", key: follower}, nil)

		got := make(chan eval.RuleSet, 1)
		start := time.Now()
		go func() {
			var rs eval.RuleSet
			res := e.do(req{method: "GET", path: "/v1/alerts/config?since=0&wait=20s", key: follower})
			if res.status == 200 {
				_ = json.Unmarshal(res.body, &rs)
			}
			got <- rs
		}()
		time.Sleep(100 * time.Millisecond)
		e.must(201, req{method: "POST", path: "/v1/alert-rules", key: e.adminKey, body: map[string]any{
			"id": "acme-speed", "kind": "overspeed", "fleet": "acme", "severity": "critical", "settings": map[string]any{"limit_kmh": 90}}}, nil)
		rs = <-got
		if took := time.Since(start); took > 2*time.Second || len(rs.Rules) != 1 || rs.Version == 0 {
			t.Fatalf("long poll: %+v after %v, want the new rule at once", rs, took)
		}
		var hook map[string]any
		e.must(201, req{method: "POST", path: "/v1/alert-webhooks", key: e.adminKey, body: map[string]any{
			"id": "ops", "fleet": "acme", "url": "https://ops.example.com/drover"}}, &hook)
		secret, _ := hook["secret"].(string)
		if len(secret) < 32 {
			t.Fatalf("webhook created without its secret shown: %v", hook)
		}
		var again map[string]any
		e.must(200, req{method: "GET", path: "/v1/alert-webhooks/ops", key: e.adminKey}, &again)
		if _, ok := again["secret"]; ok {
			t.Errorf("GET shows the webhook's secret: %v", again)
		}
		e.must(200, req{method: "GET", path: fmt.Sprintf("/v1/alerts/config?since=%d", rs.Version), key: follower}, &rs)
		if len(rs.Webhooks) != 1 || rs.Webhooks[0].Secret != secret {
			t.Errorf("the engine's configuration lacks the webhook's secret: %+v", rs.Webhooks)
		}
		// Invalid settings are refused with the reason.
		res := e.do(req{method: "POST", path: "/v1/alert-rules", key: e.adminKey, body: map[string]any{
			"id": "bad", "kind": "overspeed", "settings": map[string]any{"limit": 90}}})
		if res.status != 422 || !strings.Contains(string(res.body), `unknown field \"limit\"`) {
			t.Errorf("a rule with an unknown setting: %d %s", res.status, res.body)
		}
		// A change and its audit.
		e.must(200, req{method: "PATCH", path: "/v1/alert-rules/acme-speed", key: e.adminKey, body: map[string]any{"settings": map[string]any{"limit_kmh": 80}}}, nil)
		var audit struct{ Items []AuditEntry }
		e.must(200, req{method: "GET", path: "/v1/audit?object_type=rule&object_id=acme-speed", key: e.adminKey}, &audit)
		if len(audit.Items) != 2 {
			t.Errorf("audit of the rule: %d entries, want create and update", len(audit.Items))
		}
	})
}

// TestGeofenceImport: a GeoJSON FeatureCollection becomes fences, its
// properties their settings; a collection with a bad feature imports
// nothing and says which feature and why; the export imports back.
func TestGeofenceImport(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("acme")
		fc := map[string]any{"type": "FeatureCollection", "features": []any{
			map[string]any{"type": "Feature", "id": "depot-1", "geometry": testSquare(28.0, -26.0, 0.01),
				"properties": map[string]any{"name": "Depot 1", "events": []string{"enter", "exit", "dwell"}, "dwell": "20m", "kind": "depot", "color": "#00ff00"}},
			map[string]any{"type": "Feature", "geometry": map[string]any{"type": "Point", "coordinates": []float64{28.1, -26.1}},
				"properties": map[string]any{"id": "yard", "radius_m": 150}},
			map[string]any{"type": "Feature", "geometry": map[string]any{"type": "LineString", "coordinates": [][]float64{{28, -26}, {28.5, -26.2}}},
				"properties": map[string]any{"id": "n1", "width_m": 200, "devices": []string{"truck-1"}}},
		}}
		var res GeofenceImportResult
		e.must(200, req{method: "POST", path: "/v1/imports/geofences?fleet=acme", key: e.adminKey, body: fc}, &res)
		if res.Created != 3 {
			t.Fatalf("import: %+v, want 3 created", res)
		}
		var f map[string]any
		e.must(200, req{method: "GET", path: "/v1/geofences/depot-1", key: e.adminKey}, &f)
		if f["name"] != "Depot 1" || f["dwell"] != "20m0s" || f["fleet"] != "acme" {
			t.Errorf("imported fence: %v", f)
		}
		// One bad feature: nothing imported, the report says which.
		bad := map[string]any{"type": "FeatureCollection", "features": []any{
			map[string]any{"type": "Feature", "id": "ok-1", "geometry": testSquare(29.0, -26.0, 0.01)},
			map[string]any{"type": "Feature", "id": "open", "geometry": map[string]any{"type": "Polygon",
				"coordinates": [][][]float64{{{28, -26}, {28.1, -26}, {28.1, -26.1}, {28, -26.2}}}}},
		}}
		r := e.do(req{method: "POST", path: "/v1/imports/geofences?fleet=acme", key: e.adminKey, body: bad})
		if r.status != 422 || !strings.Contains(string(r.body), `"index":1`) || !strings.Contains(string(r.body), "not closed") {
			t.Errorf("bad import: %d %s", r.status, r.body)
		}
		if r := e.do(req{method: "GET", path: "/v1/geofences/ok-1", key: e.adminKey}); r.status != 404 {
			t.Errorf("a refused import wrote a fence: %d", r.status)
		}
		// Create twice is a conflict; upsert replaces.
		if r := e.do(req{method: "POST", path: "/v1/imports/geofences?fleet=acme", key: e.adminKey, body: fc}); r.status != 409 {
			t.Errorf("importing the same ids again: %d, want 409", r.status)
		}
		e.must(200, req{method: "POST", path: "/v1/imports/geofences?fleet=acme&mode=upsert", key: e.adminKey, body: fc}, &res)
		if res.Updated != 3 {
			t.Errorf("upsert: %+v", res)
		}
		// The export imports back, and says what kind each fence is.
		exp := e.must(200, req{method: "GET", path: "/v1/exports/geofences", key: e.adminKey}, nil)
		var coll struct {
			Features []struct {
				ID         string         `json:"id"`
				Properties map[string]any `json:"properties"`
			} `json:"features"`
		}
		if err := json.Unmarshal(exp.body, &coll); err != nil || len(coll.Features) != 3 {
			t.Fatalf("export: %v %s", err, exp.body)
		}
		kinds := map[string]any{}
		for _, f := range coll.Features {
			kinds[f.ID] = f.Properties["kind"]
		}
		if kinds["depot-1"] != "depot" || kinds["n1"] != "corridor" {
			t.Errorf("kinds: %v", kinds)
		}
		e.must(200, req{method: "POST", path: "/v1/imports/geofences?mode=upsert", key: e.adminKey, body: exp.body}, &res)
	})
}

// TestAlertList: the engine's events make alerts operators list, filter,
// acknowledge and clear (audited, with the operator); an event delivered
// twice or late changes nothing it should not, and a hand-cleared alert
// stays cleared.
func TestAlertList(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("acme")
		_, follower := e.makeOperator("alerts-engine", RoleFollower, "*")
		_, operator := e.makeOperator("Olga", RoleOperator, "acme")
		events := []any{
			alertEvent("raised", "al_1", "truck-1", "acme", "active", 1000),
			alertEvent("raised", "al_2", "truck-2", "acme", "active", 2000),
			alertEvent("cleared", "al_1", "truck-1", "acme", "cleared", 1000),
			alertEvent("raised", "al_3", "truck-1", "acme", "active", 3000),
		}
		e.must(200, req{method: "POST", path: "/v1/alerts/events", key: follower, body: map[string]any{"events": events}}, nil)
		// The same events again (a redelivery): nothing moves back.
		e.must(200, req{method: "POST", path: "/v1/alerts/events", key: follower, body: map[string]any{"events": events[:2]}}, nil)

		var page struct {
			Items      []AlertRecord `json:"items"`
			NextCursor string        `json:"next_cursor"`
		}
		e.must(200, req{method: "GET", path: "/v1/alerts?state=active", key: operator}, &page)
		if len(page.Items) != 2 || page.Items[0].ID != "al_3" || page.Items[1].ID != "al_2" {
			t.Fatalf("active alerts, newest first: %+v", page.Items)
		}
		var one AlertRecord
		e.must(200, req{method: "GET", path: "/v1/alerts/al_1", key: operator}, &one)
		if one.State != eval.StateCleared || one.ClearedBy != "engine" || one.LastEvent != "cleared" {
			t.Errorf("al_1 after its cleared event and a stale raised one: %+v", one)
		}
		e.must(200, req{method: "GET", path: "/v1/alerts?device=truck-1&limit=1", key: operator}, &page)
		if len(page.Items) != 1 || page.NextCursor == "" {
			t.Fatalf("page of 1: %+v", page)
		}
		e.must(200, req{method: "GET", path: "/v1/alerts?device=truck-1&limit=1&cursor=" + page.NextCursor, key: operator}, &page)
		if len(page.Items) != 1 || page.Items[0].ID != "al_1" {
			t.Errorf("second page: %+v", page.Items)
		}

		e.must(200, req{method: "POST", path: "/v1/alerts/al_2/ack", key: operator, body: map[string]any{"note": "calling the driver"}}, &one)
		if !one.Acknowledged || one.AckedBy != "Olga" || one.AckedAt == nil {
			t.Errorf("acknowledged: %+v", one)
		}
		if r := e.do(req{method: "POST", path: "/v1/alerts/al_2/ack", key: operator}); r.status != 409 {
			t.Errorf("acknowledging twice: %d", r.status)
		}
		e.must(200, req{method: "POST", path: "/v1/alerts/al_3/clear", key: operator}, &one)
		if one.State != eval.StateCleared || one.ClearedBy != "Olga" {
			t.Errorf("cleared by hand: %+v", one)
		}
		// The engine goes on reporting al_3: its details move, its state
		// does not.
		e.must(200, req{method: "POST", path: "/v1/alerts/events", key: follower, body: map[string]any{"events": []any{
			alertEvent("raised", "al_3", "truck-1", "acme", "active", 3000)}}}, nil)
		e.must(200, req{method: "GET", path: "/v1/alerts/al_3", key: operator}, &one)
		if one.State != eval.StateCleared || one.ClearedBy != "Olga" {
			t.Errorf("a hand-cleared alert reopened: %+v", one)
		}
		e.must(200, req{method: "GET", path: "/v1/alerts?acknowledged=true", key: operator}, &page)
		if len(page.Items) != 1 || page.Items[0].ID != "al_2" {
			t.Errorf("acknowledged filter: %+v", page.Items)
		}
		var audit struct{ Items []AuditEntry }
		e.must(200, req{method: "GET", path: "/v1/audit?object_type=alert", key: e.adminKey}, &audit)
		if len(audit.Items) != 2 {
			t.Errorf("audit: %d entries for alerts, want the ack and the clear", len(audit.Items))
		}
		// A viewer lists but does not act; an engine key is not an
		// operator.
		_, viewer := e.makeOperator("v", RoleViewer, "acme")
		e.must(200, req{method: "GET", path: "/v1/alerts", key: viewer}, nil)
		if r := e.do(req{method: "POST", path: "/v1/alerts/al_2/clear", key: viewer}); r.status != 403 {
			t.Errorf("viewer clears: %d", r.status)
		}
	})
}
