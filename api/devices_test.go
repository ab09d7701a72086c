package api

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDeviceLifecycle walks one device through everything an operator does
// to it, on each backend: create with a token, read, list, update with
// If-Match, suspend, reactivate, decommission, delete.
func TestDeviceLifecycle(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("acme")
		e.must(201, req{method: "POST", path: "/v1/classes", key: e.adminKey, body: map[string]string{"id": "truck", "name": "Truck"}}, nil)
		e.must(201, req{method: "POST", path: "/v1/regions", key: e.adminKey, body: map[string]string{"id": "gauteng"}}, nil)
		opID, key := e.makeOperator("alice", RoleOperator, "acme")

		var d Device
		res := e.must(201, req{method: "POST", path: "/v1/devices", key: key, body: map[string]any{
			"id": "truck-0001", "name": "Truck 1", "fleet": "acme", "class": "truck", "region": "gauteng",
			"labels": map[string]string{"depot": "jhb"}, "issue_token": true}}, &d)
		if d.Token == "" || len(d.Token) < 40 {
			t.Fatalf("created with issue_token: token %q", d.Token)
		}
		if !d.Credential.HasToken || d.Credential.IssuedAt == nil || d.State != StateActive || d.StateChangedBy != opID {
			t.Errorf("created device: %+v", d)
		}
		if res.header.Get("ETag") != etag(d.Version) || res.header.Get("Location") != "/v1/devices/truck-0001" {
			t.Errorf("ETag %q Location %q", res.header.Get("ETag"), res.header.Get("Location"))
		}
		// The token is shown once: a read does not show it.
		var got Device
		e.must(200, req{method: "GET", path: "/v1/devices/truck-0001", key: key}, &got)
		if got.Token != "" || got.Labels["depot"] != "jhb" || got.Class != "truck" {
			t.Errorf("read back: %+v", got)
		}
		if strings.Contains(string(e.do(req{method: "GET", path: "/v1/devices/truck-0001", key: key}).body), d.Token) {
			t.Error("the token appears in a read")
		}
		// Same id again: 409.
		if r := e.do(req{method: "POST", path: "/v1/devices", key: key, body: map[string]any{"id": "truck-0001", "fleet": "acme"}}); r.status != 409 {
			t.Errorf("duplicate create: %d %s", r.status, r.body)
		}

		// Update with the right If-Match, then with the old one: 412.
		old := etag(got.Version)
		var upd Device
		e.must(200, req{method: "PATCH", path: "/v1/devices/truck-0001", key: key, header: map[string]string{"If-Match": old},
			body: map[string]any{"name": "Truck One", "region": ""}}, &upd)
		if upd.Name != "Truck One" || upd.Region != "" || upd.Version <= got.Version || upd.Class != "truck" {
			t.Errorf("after patch: %+v", upd)
		}
		r := e.do(req{method: "PATCH", path: "/v1/devices/truck-0001", key: key, header: map[string]string{"If-Match": old},
			body: map[string]any{"name": "lost update"}})
		if r.status != http.StatusPreconditionFailed || r.errCode() != "precondition_failed" {
			t.Errorf("stale If-Match: %d %s", r.status, r.body)
		}

		// Lifecycle: suspend (time and actor recorded), the same again is a
		// no-op, active again, decommission (final).
		before := time.Now().Add(-time.Second)
		var s Device
		e.must(200, req{method: "POST", path: "/v1/devices/truck-0001/state", key: key,
			body: map[string]string{"state": "suspended", "reason": "stolen"}}, &s)
		if s.State != StateSuspended || s.StateReason != "stolen" || s.StateChangedBy != opID || s.StateChangedAt.Before(before) {
			t.Errorf("suspended: %+v", s)
		}
		var again Device
		e.must(200, req{method: "POST", path: "/v1/devices/truck-0001/state", key: key, body: map[string]string{"state": "suspended"}}, &again)
		if again.Version != s.Version {
			t.Errorf("suspending a suspended device moved its version %d -> %d", s.Version, again.Version)
		}
		e.must(200, req{method: "POST", path: "/v1/devices/truck-0001/state", key: key, body: map[string]string{"state": "active"}}, nil)
		if r := e.do(req{method: "DELETE", path: "/v1/devices/truck-0001", key: e.adminKey}); r.status != 409 {
			t.Errorf("delete of an active device: %d %s", r.status, r.body)
		}
		e.must(200, req{method: "POST", path: "/v1/devices/truck-0001/state", key: key, body: map[string]string{"state": "decommissioned"}}, nil)
		if r := e.do(req{method: "POST", path: "/v1/devices/truck-0001/state", key: key, body: map[string]string{"state": "active"}}); r.status != 409 {
			t.Errorf("reactivating a decommissioned device: %d %s", r.status, r.body)
		}
		// An operator may not delete (admins only); an admin may.
		if r := e.do(req{method: "DELETE", path: "/v1/devices/truck-0001", key: key}); r.status != 403 {
			t.Errorf("operator delete: %d %s", r.status, r.body)
		}
		e.must(204, req{method: "DELETE", path: "/v1/devices/truck-0001", key: e.adminKey}, nil)
		if r := e.do(req{method: "GET", path: "/v1/devices/truck-0001", key: key}); r.status != 404 || r.errCode() != "not_found" {
			t.Errorf("after delete: %d %s", r.status, r.body)
		}

		// The audit log has every step, with before and after.
		var audit listResponse[AuditEntry]
		e.must(200, req{method: "GET", path: "/v1/audit?object_type=device&object_id=truck-0001", key: key}, &audit)
		var actions []string
		for _, a := range audit.Items {
			actions = append(actions, a.Action)
		}
		want := "device.delete device.state device.state device.state device.update device.create"
		if strings.Join(actions, " ") != want {
			t.Errorf("audit actions (newest first) = %v, want %s", actions, want)
		}
		upd0 := audit.Items[4]
		if upd0.Actor != opID || !strings.Contains(string(upd0.Before), `"name":"Truck 1"`) || !strings.Contains(string(upd0.After), `"name":"Truck One"`) {
			t.Errorf("update entry: %+v", upd0)
		}
	})
}

// TestDeviceValidation: every refusal is the documented status and code.
func TestDeviceValidation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("acme")
		for _, tc := range []struct {
			name   string
			r      req
			status int
			code   string
		}{
			{"bad id", req{body: map[string]any{"id": "tail\\", "fleet": "acme"}}, 422, "invalid"},
			{"id with space", req{body: map[string]any{"id": "a b", "fleet": "acme"}}, 422, "invalid"},
			{"unknown fleet", req{body: map[string]any{"id": "x1", "fleet": "nope"}}, 422, "invalid"},
			{"unknown class", req{body: map[string]any{"id": "x1", "fleet": "acme", "class": "nope"}}, 422, "invalid"},
			{"bad label", req{body: map[string]any{"id": "x1", "fleet": "acme", "labels": map[string]string{"a b": "c"}}}, 422, "invalid"},
			{"unknown field", req{body: map[string]any{"id": "x1", "fleet": "acme", "colour": "red"}, invalid: true}, 400, "bad_request"},
			{"not json", req{body: "{", invalid: true}, 400, "bad_request"},
			{"initial decommissioned", req{body: map[string]any{"id": "x1", "fleet": "acme", "state": "decommissioned"}, invalid: true}, 422, "invalid"},
		} {
			tc.r.method, tc.r.path, tc.r.key = "POST", "/v1/devices", e.adminKey
			r := e.do(tc.r)
			if r.status != tc.status || r.errCode() != tc.code {
				t.Errorf("%s: %d %s, want %d %s", tc.name, r.status, r.body, tc.status, tc.code)
			}
		}
		if r := e.do(req{method: "GET", path: "/v1/devices?limit=0", key: e.adminKey, invalid: true}); r.status != 400 {
			t.Errorf("limit=0: %d", r.status)
		}
		if r := e.do(req{method: "GET", path: "/v1/devices?cursor=!!", key: e.adminKey}); r.status != 400 {
			t.Errorf("bad cursor: %d", r.status)
		}
		if r := e.do(req{method: "POST", path: "/v1/devices/none/state", key: e.adminKey, body: map[string]string{"state": "active"}}); r.status != 404 {
			t.Errorf("state of a missing device: %d", r.status)
		}
	})
}

// TestDeviceListFiltersAndPages: filters combine, pages follow the cursor
// to the end without repeats.
func TestDeviceListFiltersAndPages(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("acme")
		e.makeFleet("zulu")
		e.must(201, req{method: "POST", path: "/v1/classes", key: e.adminKey, body: map[string]string{"id": "bus"}}, nil)
		var rows []map[string]any
		for i := range 25 {
			fleet, class := "acme", ""
			if i%2 == 1 {
				fleet = "zulu"
			}
			if i%5 == 0 {
				class = "bus"
			}
			rows = append(rows, map[string]any{"id": "dev-" + pad(i), "name": "Vehicle " + pad(i), "fleet": fleet, "class": class})
		}
		rows[7]["name"] = "Blue 50% Van_x"
		e.must(200, req{method: "POST", path: "/v1/imports/devices", key: e.adminKey, body: map[string]any{"devices": rows}}, nil)
		e.must(200, req{method: "POST", path: "/v1/devices/dev-03/state", key: e.adminKey, body: map[string]string{"state": "suspended"}}, nil)

		list := func(q string) []string {
			var ids []string
			cursor := ""
			for range 100 {
				path := "/v1/devices?limit=4&" + q
				if cursor != "" {
					path += "&cursor=" + cursor
				}
				var page listResponse[Device]
				e.must(200, req{method: "GET", path: path, key: e.adminKey}, &page)
				for _, d := range page.Items {
					ids = append(ids, d.ID)
				}
				if page.NextCursor == "" {
					return ids
				}
				cursor = page.NextCursor
			}
			t.Fatal("pages never end")
			return nil
		}
		if got := list(""); len(got) != 25 || got[0] != "dev-00" || got[24] != "dev-24" {
			t.Errorf("all: %v", got)
		}
		if got := list("fleet=zulu&class=bus"); strings.Join(got, ",") != "dev-05,dev-15" {
			t.Errorf("zulu buses: %v", got)
		}
		if got := list("state=suspended"); strings.Join(got, ",") != "dev-03" {
			t.Errorf("suspended: %v", got)
		}
		if got := list("q=50%25"); strings.Join(got, ",") != "dev-07" {
			t.Errorf("q=50%%: %v (a %% in the text must not be a wildcard)", got)
		}
		if got := list("q=DEV-1"); len(got) != 10 {
			t.Errorf("q=DEV-1 (case-insensitive id search): %v", got)
		}
	})
}

func pad(i int) string {
	s := "0" + itoa(i)
	return s[len(s)-2:]
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
