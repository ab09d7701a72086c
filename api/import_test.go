package api

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/registry"
)

// TestImport100kAllOrNothing: 100,000 rows in one request (CSV) with three
// bad rows import nothing and report exactly those rows; the 100,000 good
// rows (JSON) are imported in one go.
func TestImport100kAllOrNothing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		// 100,000 rows through the test client's OpenAPI validator under
		// -race took over the helpers' 2 minutes on a loaded machine
		// (make test runs e2e beside this package): the time is not what
		// this test is about (api/bench_test.go measures imports).
		e.client.Timeout = 10 * time.Minute
		e.makeFleet("acme")
		const n = 100_000
		var csv strings.Builder
		csv.WriteString("id,name,fleet,labels\n")
		for i := range n {
			fmt.Fprintf(&csv, "veh-%06d,Vehicle %d,acme,depot=d%d\n", i, i, i%7)
		}
		good := csv.String()
		bad := strings.Replace(good, "veh-000010,", "veh 000010,", 1)                       // a space in the id
		bad = strings.Replace(bad, "veh-050000,Vehicle 50000,acme", "veh-050000,x,nope", 1) // unknown fleet
		bad = strings.Replace(bad, "veh-099999,", "veh-000000,", 1)                         // a duplicate of row 1
		r := e.do(req{method: "POST", path: "/v1/imports/devices", key: e.adminKey, body: bad, contentType: "text/csv"})
		if r.status != 422 || r.errCode() != "import_refused" {
			t.Fatalf("bad import: %d %.500s", r.status, r.body)
		}
		var refused struct {
			Details struct {
				ErrorCount int           `json:"error_count"`
				Errors     []ImportError `json:"errors"`
			}
		}
		r.json(t, &refused)
		got := map[int]string{}
		for _, ie := range refused.Details.Errors {
			got[ie.Row] = ie.Code
		}
		want := map[int]string{11: "invalid_id", 50001: "unknown_fleet", 100000: "duplicate"}
		if refused.Details.ErrorCount != 3 || jsonString(got) != jsonString(want) {
			t.Errorf("row errors %v (count %d), want %v", got, refused.Details.ErrorCount, want)
		}
		var page listResponse[Device]
		e.must(200, req{method: "GET", path: "/v1/devices?limit=1", key: e.adminKey}, &page)
		if len(page.Items) != 0 {
			t.Fatalf("a refused import left devices behind: %v", page.Items)
		}

		// The good rows, as JSON this time: both formats take 100,000 rows.
		rows := make([]ImportRow, n)
		for i := range rows {
			rows[i] = ImportRow{ID: fmt.Sprintf("veh-%06d", i), Name: fmt.Sprintf("Vehicle %d", i), Fleet: "acme",
				Labels: map[string]string{"depot": fmt.Sprintf("d%d", i%7)}}
		}
		start := time.Now()
		var res ImportResult
		e.must(200, req{method: "POST", path: "/v1/imports/devices", key: e.adminKey, body: map[string]any{"devices": rows}}, &res)
		t.Logf("%s: imported %d devices in %v", b.name, n, time.Since(start))
		if res.Created != n || res.Updated != 0 {
			t.Errorf("import result %+v", res)
		}
		var d Device
		e.must(200, req{method: "GET", path: "/v1/devices/veh-099999", key: e.adminKey}, &d)
		if d.Fleet != "acme" || d.Labels["depot"] != "d4" || d.Name != "Vehicle 99999" {
			t.Errorf("imported device: %+v", d)
		}
		var audit listResponse[AuditEntry]
		e.must(200, req{method: "GET", path: "/v1/audit?object_type=device&object_id=veh-012345", key: e.adminKey}, &audit)
		if len(audit.Items) != 1 || audit.Items[0].Action != "device.create" {
			t.Errorf("audit of an imported device: %+v", audit.Items)
		}
	})
}

// TestImportRegistryRoundTrip: a registry file (internal/registry's format)
// imports as it is, and the export gives the same file back for the
// devices a frontend would accept.
func TestImportRegistryRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		devs := []registry.Device{
			{ID: "truck-0001", TokenSHA256: registry.HashToken("s1"), Fleet: "acme", Class: "truck", Region: "gauteng"},
			{ID: "truck-0002", TokenSHA256: registry.HashToken("s2"), Fleet: "acme", Class: "truck", Region: "gauteng"},
			{ID: "bus-0001", TokenSHA256: registry.HashToken("s3"), Fleet: "metro", Class: "bus"},
		}
		file, _ := json.Marshal(registry.File{Devices: devs})
		// Unknown fleets, classes and regions are refused unless asked for.
		if r := e.do(req{method: "POST", path: "/v1/imports/devices", key: e.adminKey, body: file}); r.status != 422 {
			t.Fatalf("import with unknown fleets: %d %s", r.status, r.body)
		}
		e.must(200, req{method: "POST", path: "/v1/imports/devices?create_missing=true", key: e.adminKey, body: file}, nil)
		res := e.must(200, req{method: "GET", path: "/v1/exports/registry", key: e.adminKey}, nil)
		var back registry.File
		res.json(t, &back)
		if _, err := registry.New(back.Devices); err != nil {
			t.Errorf("the export is not a valid registry: %v", err)
		}
		want := []registry.Device{devs[2], devs[0], devs[1]} // by id
		if jsonString(back.Devices) != jsonString(want) {
			t.Errorf("export:\n%s\nwant %s", jsonString(back.Devices), jsonString(want))
		}
		// Upsert: a changed fleet and a new token hash; the state stays.
		e.must(200, req{method: "POST", path: "/v1/devices/truck-0002/state", key: e.adminKey, body: map[string]any{"state": "suspended"}}, nil)
		up := []map[string]any{{"id": "truck-0001", "fleet": "metro", "token_sha256": registry.HashToken("new")}, {"id": "truck-0002", "fleet": "metro"}}
		var ur ImportResult
		e.must(200, req{method: "POST", path: "/v1/imports/devices?mode=upsert", key: e.adminKey, body: map[string]any{"devices": up}}, &ur)
		if ur.Updated != 2 || ur.Created != 0 {
			t.Errorf("upsert: %+v", ur)
		}
		e.must(200, req{method: "GET", path: "/v1/exports/registry", key: e.adminKey}, nil).json(t, &back)
		if len(back.Devices) != 2 || back.Devices[1].ID != "truck-0001" || back.Devices[1].TokenSHA256 != registry.HashToken("new") ||
			back.Devices[1].Fleet != "metro" || back.Devices[1].Class != "truck" {
			t.Errorf("after upsert (truck-0002 suspended, so not exported): %+v", back.Devices)
		}
		// Without mode=upsert an existing id is an error.
		if r := e.do(req{method: "POST", path: "/v1/imports/devices", key: e.adminKey, body: map[string]any{"devices": up}}); r.status != 422 {
			t.Errorf("create of existing ids: %d %s", r.status, r.body)
		}
	})
}

// TestImportIssuesTokens: issue_tokens gives every new row a token, shown
// once in the answer, that the feed then carries as its hash.
func TestImportIssuesTokens(t *testing.T) {
	e := startEnv(t, backends[0])
	var res ImportResult
	e.must(200, req{method: "POST", path: "/v1/imports/devices?issue_tokens=true", key: e.adminKey,
		body: "id\nk1\nk2\n", contentType: "text/csv"}, &res)
	if len(res.Tokens) != 2 || res.Tokens[0].ID != "k1" || res.Tokens[0].Token == res.Tokens[1].Token {
		t.Fatalf("tokens %+v", res.Tokens)
	}
	_, fkey := e.makeOperator("fe", RoleFollower, "*")
	f := &follower{e: e, key: fkey}
	f.snapshot(t)
	if f.devices["k1"].H != hashSecret(res.Tokens[0].Token) {
		t.Errorf("feed hash of k1 %q is not the issued token's", f.devices["k1"].H)
	}
	for _, tc := range []struct {
		name, body, ct string
		status         int
	}{
		{"unknown column", "id,colour\nx,red\n", "text/csv", 400},
		{"no id column", "name\nx\n", "text/csv", 400},
		{"ragged csv", "id,name\nx\n", "text/csv", 400},
		{"xml", "<devices/>", "application/xml", 415},
		{"empty", "id\n", "text/csv", 422},
	} {
		r := e.do(req{method: "POST", path: "/v1/imports/devices", key: e.adminKey, body: tc.body, contentType: tc.ct, invalid: true})
		if r.status != tc.status {
			t.Errorf("%s: %d %s, want %d", tc.name, r.status, r.body, tc.status)
		}
	}
}

// TestBodyLimit: a body over -max-body-bytes is refused with 413.
func TestBodyLimit(t *testing.T) {
	e := startEnv(t, backends[0], func(c *Config) { c.MaxBodyBytes = 1000 })
	r := e.do(req{method: "POST", path: "/v1/imports/devices", key: e.adminKey, body: "id\n" + strings.Repeat("abcdefgh\n", 200), contentType: "text/csv"})
	if r.status != 413 || r.errCode() != "too_large" {
		t.Errorf("oversized import: %d %s", r.status, r.body)
	}
}
