package browsertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/livefeed"
)

// fenceEditorState is window.droverMap.state().fenceEditor (fenceedit.js).
type fenceEditorState struct {
	Available bool   `json:"available"`
	Open      bool   `json:"open"`
	Connected bool   `json:"connected"`
	Busy      bool   `json:"busy"`
	Saves     int    `json:"saves"`
	Message   string `json:"message"`
	Error     string `json:"error"`
	HasKey    bool   `json:"hasKey"`
	Fences    []struct {
		ID    string `json:"id"`
		Dirty bool   `json:"dirty"`
		New   bool   `json:"new"`
	} `json:"fences"`
}

// controlPlane is a real api server (SQLite) on loopback, with CORS for
// origin, and its bootstrap admin key.
type controlPlane struct {
	url, admin string
}

func startControlPlane(t *testing.T, addr, origin string) *controlPlane {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Listen = addr
	cfg.DataDir = t.TempDir()
	cfg.CORSOrigins = []string{origin}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(cfg, nil, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Errorf("api Run did not return within 15 s of the stop")
		}
	})
	waitFor(t, 20*time.Second, "the api to be ready", func() bool { return srv.Ready() == nil })
	key, err := os.ReadFile(filepath.Join(cfg.DataDir, "api-admin-key"))
	if err != nil {
		t.Fatal(err)
	}
	return &controlPlane{url: "http://" + addr, admin: strings.TrimSpace(string(key))}
}

// do calls the API with key and decodes the answer into out, failing the
// test unless the status is want.
func (cp *controlPlane) do(t *testing.T, method, path, key string, body any, want int, out any) {
	t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, _ := http.NewRequest(method, cp.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	_ = json.NewDecoder(resp.Body).Decode(&raw)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, raw, want)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatal(err)
		}
	}
}

// keyOf creates an operator of role in fleets and returns a key of theirs.
func (cp *controlPlane) keyOf(t *testing.T, name, role string, fleets ...string) string {
	t.Helper()
	var op struct{ ID string }
	cp.do(t, "POST", "/v1/operators", cp.admin, map[string]any{"name": name, "role": role, "fleets": fleets}, 201, &op)
	var k struct{ Key string }
	cp.do(t, "POST", "/v1/operators/"+op.ID+"/keys", cp.admin, map[string]any{"name": "map"}, 201, &k)
	return k.Key
}

type storedFence struct {
	ID       string  `json:"id"`
	Fleet    string  `json:"fleet"`
	Name     string  `json:"name"`
	RadiusM  float64 `json:"radius_m"`
	Geometry struct {
		Type        string          `json:"type"`
		Coordinates json.RawMessage `json:"coordinates"`
	} `json:"geometry"`
}

// TestBrowserMapDrawsGeofences: with -map-api, an operator opens "Edit
// fences", gives their key (through the page's form), draws a polygon and a
// circle and saves: the control plane then holds them with the drawn
// geometry. Moving a vertex and saving patches the stored polygon; deleting
// a fence deletes it in the API. The
// page's CORS requests go to a real api, which allows the livefeed's
// origin. A ring that crosses itself is refused (422), a fence of another
// fleet too (404), and a viewer's key
// cannot save: the page shows the API's refusal and keeps the fence unsaved.
// The key never appears in a URL the page requested.
func TestBrowserMapDrawsGeofences(t *testing.T) {
	noLeaks(t)
	apiAddr := freeAddr(t)
	pub := newPublisher(t, "r0")
	rf := startFeedWith(t, func(c *livefeed.Config) { c.Map.API = "http://" + apiAddr + "/" }, pub)
	cp := startControlPlane(t, apiAddr, rf.url("http"))
	for _, f := range []string{"acme", "other"} {
		cp.do(t, "POST", "/v1/fleets", cp.admin, map[string]string{"id": f}, 201, nil)
	}
	operator := cp.keyOf(t, "ops", "operator", "acme")
	viewer := cp.keyOf(t, "watcher", "viewer", "acme")

	b := newBrowser(t, 90*time.Second, 1280, 800)
	b.open(rf.url("http") + "/?token=" + devToken + "&lat=-26.2&lon=28.05&zoom=11")
	b.waitState("the edit mode offered", func(s mapState) bool { return s.Connected && s.FenceEditor.Available })

	// The operator opens the mode and types their key into the form.
	useKey := func(key string) {
		t.Helper()
		b.eval(`document.getElementById('fenceedit').click()`)
		b.waitState("the edit panel open", func(s mapState) bool { return s.FenceEditor.Open })
		b.eval(fmt.Sprintf(`document.getElementById('fencekey').value = %q; document.getElementById('fenceconnect').click()`, key))
	}
	useKey(operator)
	b.waitState("the editor connected", func(s mapState) bool { return s.FenceEditor.Connected })
	setField := func(id, v string) {
		t.Helper()
		b.eval(fmt.Sprintf(`document.getElementById(%q).value = %q`, id, v))
	}
	save := func() {
		t.Helper()
		b.eval(`document.getElementById('fencesave').click()`)
	}

	// A polygon and a circle, drawn as Geoman's tools draw them, saved.
	setField("fenceid", "depot-north")
	setField("fencefleet", "acme")
	setField("fencename", "North depot")
	b.eval(`window.droverMap.fenceEditor.draw('Polygon', [[-26.10, 28.00], [-26.10, 28.10], [-26.20, 28.10], [-26.20, 28.00]])`)
	setField("fenceid", "yard")
	setField("fencename", "")
	b.eval(`window.droverMap.fenceEditor.draw('Circle', {center: [-26.30, 28.05], radius: 800})`)
	save()
	s := b.waitState("both fences saved", func(s mapState) bool { return s.FenceEditor.Saves == 2 && !s.FenceEditor.Busy })
	if s.FenceEditor.Error != "" || !strings.Contains(b.text("fencemsg"), "saved 2 fences") {
		t.Errorf("after the save: error %q, message %q", s.FenceEditor.Error, b.text("fencemsg"))
	}
	var depot, yard storedFence
	cp.do(t, "GET", "/v1/geofences/depot-north", operator, nil, 200, &depot)
	cp.do(t, "GET", "/v1/geofences/yard", operator, nil, 200, &yard)
	wantRing := `[[[28,-26.1],[28.1,-26.1],[28.1,-26.2],[28,-26.2],[28,-26.1]]]`
	if depot.Fleet != "acme" || depot.Name != "North depot" || depot.Geometry.Type != "Polygon" || compact(depot.Geometry.Coordinates) != wantRing {
		t.Errorf("stored depot-north %+v %s, want acme's polygon %s", depot, depot.Geometry.Coordinates, wantRing)
	}
	if yard.Fleet != "acme" || yard.Geometry.Type != "Point" || compact(yard.Geometry.Coordinates) != `[28.05,-26.3]` || yard.RadiusM != 800 {
		t.Errorf("stored yard %+v %s, want a circle of 800 m at (-26.3, 28.05)", yard, yard.Geometry.Coordinates)
	}

	// An edit moves a vertex: saved as a PATCH of the geometry.
	b.eval(`window.droverMap.fenceEditor.moveVertex('depot-north', 2, [-26.25, 28.15])`)
	save()
	b.waitState("the edit saved", func(s mapState) bool { return s.FenceEditor.Saves == 3 && !s.FenceEditor.Busy })
	cp.do(t, "GET", "/v1/geofences/depot-north", operator, nil, 200, &depot)
	wantRing = `[[[28,-26.1],[28.1,-26.1],[28.15,-26.25],[28,-26.2],[28,-26.1]]]`
	if compact(depot.Geometry.Coordinates) != wantRing || depot.Name != "North depot" {
		t.Errorf("stored depot-north after the edit %+v %s, want %s", depot, depot.Geometry.Coordinates, wantRing)
	}

	// Deleting a saved fence: selected, Delete selected, gone from the API.
	removeFence := func(id string) {
		t.Helper()
		b.eval(fmt.Sprintf(`(() => { const m = window.droverMap.fenceEditor; m.select(m.group.getLayers().find((l) => l.fence.id === %q));
			document.getElementById('fencedelete').click(); })()`, id))
	}
	removeFence("yard")
	b.waitState("yard deleted", func(s mapState) bool { return strings.Contains(s.FenceEditor.Message, "yard deleted") })
	cp.do(t, "GET", "/v1/geofences/yard", cp.admin, nil, 404, nil)

	// A ring that crosses itself (a bow tie): 422, shown, not stored.
	setField("fenceid", "bowtie")
	b.eval(`window.droverMap.fenceEditor.draw('Polygon', [[-26.50, 28.00], [-26.60, 28.10], [-26.50, 28.10], [-26.60, 28.00]])`)
	save()
	s = b.waitState("the bow tie refused", func(s mapState) bool { return s.FenceEditor.Error != "" && !s.FenceEditor.Busy })
	if !strings.Contains(b.text("fencemsg"), "bowtie: 422") {
		t.Errorf("shown %q: want the API's 422 for the bow tie", b.text("fencemsg"))
	}
	cp.do(t, "GET", "/v1/geofences/bowtie", cp.admin, nil, 404, nil)
	removeFence("bowtie")
	b.waitState("the bow tie discarded", func(s mapState) bool { return len(s.FenceEditor.Fences) == 1 })

	// A fence of another fleet: the API refuses it, the page says so and
	// keeps it unsaved.
	setField("fenceid", "theirs")
	setField("fencefleet", "other")
	b.eval(`window.droverMap.fenceEditor.draw('Circle', {center: [-26.15, 28.2], radius: 300})`)
	save()
	s = b.waitState("another fleet's fence refused", func(s mapState) bool { return s.FenceEditor.Error != "" && !s.FenceEditor.Busy })
	// The API answers 404 for a fleet outside the key's scope (it does not
	// tell which fleets exist).
	if !strings.Contains(b.text("fencemsg"), `theirs: 404 not_found: fleet "other" not found`) {
		t.Errorf("error %q, shown %q: want the API's refusal of theirs", s.FenceEditor.Error, b.text("fencemsg"))
	}
	if st := b.mapState().FenceEditor; len(st.Fences) != 2 || !st.Fences[1].Dirty {
		t.Errorf("fences %+v: want the refused one kept, unsaved", st.Fences)
	}
	cp.do(t, "GET", "/v1/geofences/theirs", cp.admin, nil, 404, nil)

	// A viewer's key cannot save: refused, shown.
	b.eval(`window.droverMap.fenceEditor.close()`)
	b.eval(`sessionStorage.removeItem('drover.api.key')`)
	useKey(viewer)
	b.waitState("the viewer's editor connected", func(s mapState) bool {
		return s.FenceEditor.Connected && strings.Contains(s.FenceEditor.Message, "1 fence editable")
	})
	setField("fenceid", "viewers")
	setField("fencefleet", "acme")
	b.eval(`window.droverMap.fenceEditor.draw('Polygon', [[-26.40, 28.00], [-26.40, 28.05], [-26.45, 28.05]])`)
	save()
	s = b.waitState("the viewer's save refused", func(s mapState) bool { return s.FenceEditor.Error != "" && !s.FenceEditor.Busy })
	if !strings.Contains(b.text("fencemsg"), "viewers: 403") {
		t.Errorf("shown %q: want the API's 403 for the viewer's fence", b.text("fencemsg"))
	}
	cp.do(t, "GET", "/v1/geofences/viewers", cp.admin, nil, 404, nil)

	for _, u := range b.requested() {
		if strings.Contains(u, operator) || strings.Contains(u, viewer) {
			t.Errorf("an API key in a requested URL: %s", u)
		}
	}
	b.checkNoJSErrors()
}

func compact(raw json.RawMessage) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return string(raw)
	}
	return buf.String()
}
