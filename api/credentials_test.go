package api

import (
	"testing"
	"time"
)

// TestCredentials: issue, rotate with and without overlap, revoke, and the
// refusals in between; the feed carries what a frontend needs for each.
func TestCredentials(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		_, fkey := e.makeOperator("fe", RoleFollower, "*")
		feed := func(id string) FeedDevice {
			f := &follower{e: e, key: fkey}
			f.snapshot(t)
			return f.devices[id]
		}
		e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{"id": "c1"}}, nil)
		if r := e.do(req{method: "POST", path: "/v1/devices/c1/token/rotate", key: e.adminKey}); r.status != 409 {
			t.Errorf("rotate without a token: %d", r.status)
		}
		if r := e.do(req{method: "DELETE", path: "/v1/devices/c1/token", key: e.adminKey}); r.status != 409 {
			t.Errorf("revoke without a token: %d", r.status)
		}
		var d1 Device
		e.must(201, req{method: "POST", path: "/v1/devices/c1/token", key: e.adminKey}, &d1)
		if r := e.do(req{method: "POST", path: "/v1/devices/c1/token", key: e.adminKey}); r.status != 409 {
			t.Errorf("issue over a token: %d", r.status)
		}
		// Default overlap: an hour.
		var d2 Device
		e.must(201, req{method: "POST", path: "/v1/devices/c1/token/rotate", key: e.adminKey}, &d2)
		if d2.Token == d1.Token || d2.Credential.PreviousValidUntil == nil ||
			d2.Credential.PreviousValidUntil.Sub(time.Now()) < 59*time.Minute {
			t.Errorf("after rotate: %+v", d2.Credential)
		}
		if f := feed("c1"); f.H != hashSecret(d2.Token) || f.PH != hashSecret(d1.Token) {
			t.Errorf("feed after rotate: %+v", f)
		}
		// overlap 0: the previous token ends now.
		var d3 Device
		e.must(201, req{method: "POST", path: "/v1/devices/c1/token/rotate", key: e.adminKey, body: map[string]any{"overlap_seconds": 0}}, &d3)
		if d3.Credential.PreviousValidUntil != nil {
			t.Errorf("overlap 0 kept a previous token: %+v", d3.Credential)
		}
		if f := feed("c1"); f.H != hashSecret(d3.Token) || f.PH != "" {
			t.Errorf("feed after rotate without overlap: %+v", f)
		}
		if r := e.do(req{method: "POST", path: "/v1/devices/c1/token/rotate", key: e.adminKey, body: map[string]any{"overlap_seconds": -1}, invalid: true}); r.status != 422 {
			t.Errorf("negative overlap: %d", r.status)
		}
		e.must(204, req{method: "DELETE", path: "/v1/devices/c1/token", key: e.adminKey}, nil)
		var d4 Device
		e.must(200, req{method: "GET", path: "/v1/devices/c1", key: e.adminKey}, &d4)
		if d4.Credential.HasToken || d4.Credential.IssuedAt != nil {
			t.Errorf("after revoke: %+v", d4.Credential)
		}
		// No token value is ever in the audit log.
		body := string(e.must(200, req{method: "GET", path: "/v1/audit?object_id=c1", key: e.adminKey}, nil).body)
		for _, tok := range []string{d1.Token, d2.Token, d3.Token, hashSecret(d1.Token)} {
			if contains(body, tok) {
				t.Errorf("the audit log holds a token or its hash")
			}
		}
	})
}

func contains(s, sub string) bool {
	return len(sub) > 0 && len(s) >= len(sub) && (func() bool {
		for i := 0; i+len(sub) <= len(s); i++ {
			if s[i:i+len(sub)] == sub {
				return true
			}
		}
		return false
	})()
}

// TestLiveTokensAndOperators: live-client tokens are issued, listed and
// revoked within the caller's fleets; a scoped admin manages operators of
// its fleets and cannot lock itself out.
func TestLiveTokensAndOperators(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("a")
		e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{"id": "v1", "fleet": "a"}}, nil)
		adminA, keyA := e.makeOperator("a-admin", RoleAdmin, "a")
		var lt LiveToken
		e.must(201, req{method: "POST", path: "/v1/live-tokens", key: keyA, body: map[string]any{
			"name": "dispatch", "fleets": []string{"a"}, "devices": []string{"v1"}, "expires_in_seconds": 3600,
			"area": map[string]float64{"min_lat": -27, "min_lon": 27, "max_lat": -25, "max_lon": 29}}}, &lt)
		if lt.Token == "" || lt.Area == nil || lt.ExpiresAt.Sub(time.Now()) < 59*time.Minute {
			t.Errorf("live token: %+v", lt)
		}
		if r := e.do(req{method: "POST", path: "/v1/live-tokens", key: keyA, body: map[string]any{"name": "x", "fleets": []string{"a"},
			"area": map[string]float64{"min_lat": 10, "min_lon": 0, "max_lat": -10, "max_lon": 1}}}); r.status != 422 {
			t.Errorf("inverted area: %d", r.status)
		}
		var list listResponse[LiveToken]
		e.must(200, req{method: "GET", path: "/v1/live-tokens?active=true", key: keyA}, &list)
		if len(list.Items) != 1 || list.Items[0].Token != "" {
			t.Errorf("list: %+v", list.Items)
		}
		e.must(204, req{method: "DELETE", path: "/v1/live-tokens/" + lt.ID, key: keyA}, nil)
		e.must(200, req{method: "GET", path: "/v1/live-tokens?active=true", key: keyA}, &list)
		if len(list.Items) != 0 {
			t.Errorf("a revoked token is active: %+v", list.Items)
		}

		// A scoped admin creates a viewer of its fleet, not of every fleet,
		// and cannot demote or delete itself.
		var v Operator
		e.must(201, req{method: "POST", path: "/v1/operators", key: keyA, body: map[string]any{"name": "v", "role": "viewer", "fleets": []string{"a"}}}, &v)
		if r := e.do(req{method: "POST", path: "/v1/operators", key: keyA, body: map[string]any{"name": "w", "role": "viewer", "fleets": []string{"*"}}}); r.status != 422 {
			t.Errorf("scoped admin grants every fleet: %d", r.status)
		}
		if r := e.do(req{method: "PATCH", path: "/v1/operators/" + adminA, key: keyA, body: map[string]any{"role": "viewer"}}); r.status != 409 {
			t.Errorf("self demotion: %d", r.status)
		}
		if r := e.do(req{method: "DELETE", path: "/v1/operators/" + adminA, key: keyA}); r.status != 409 {
			t.Errorf("self deletion: %d", r.status)
		}
		var k APIKey
		e.must(201, req{method: "POST", path: "/v1/operators/" + v.ID + "/keys", key: keyA, body: map[string]any{"name": "laptop"}}, &k)
		e.must(200, req{method: "GET", path: "/v1/me", key: k.Key}, nil)
		e.must(204, req{method: "DELETE", path: "/v1/operators/" + v.ID, key: keyA}, nil)
		if r := e.do(req{method: "GET", path: "/v1/me", key: k.Key}); r.status != 401 {
			t.Errorf("key of a deleted operator: %d", r.status)
		}
		// The fleet cannot be deleted while devices are in it.
		if r := e.do(req{method: "DELETE", path: "/v1/fleets/a", key: e.adminKey}); r.status != 409 {
			t.Errorf("delete of a fleet with devices: %d", r.status)
		}
	})
}
