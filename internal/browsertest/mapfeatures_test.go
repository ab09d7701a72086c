package browsertest

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/drover-telemetry/drover/livefeed"
)

// tileColour is the colour of every tile the test's tile server serves:
// nothing of the offline basemap has it.
var tileColour = color.RGBA{0xb4, 0x5a, 0xd2, 0xff}

// tileServer is a raster tile provider on loopback: every /tiles/z/x/y.png
// inside the world is a 256×256 tile of tileColour. It records what it was
// asked for.
type tileServer struct {
	*httptest.Server
	mu       sync.Mutex
	tiles    []string // "z/x/y"
	referers []string
	bad      int
}

func newTileServer(t *testing.T) *tileServer {
	img := image.NewRGBA(image.Rect(0, 0, 256, 256))
	for i := 0; i < len(img.Pix); i += 4 {
		img.Pix[i], img.Pix[i+1], img.Pix[i+2], img.Pix[i+3] = tileColour.R, tileColour.G, tileColour.B, 0xff
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	tilePNG := buf.Bytes()
	path := regexp.MustCompile(`^/tiles/(\d+)/(\d+)/(\d+)\.png$`)
	ts := &tileServer{}
	ts.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		ts.referers = append(ts.referers, r.Referer())
		m := path.FindStringSubmatch(r.URL.Path)
		if m == nil {
			ts.bad++
			http.NotFound(w, r)
			return
		}
		z, _ := strconv.Atoi(m[1])
		x, _ := strconv.Atoi(m[2])
		y, _ := strconv.Atoi(m[3])
		if z > 18 || x >= 1<<z || y >= 1<<z {
			ts.bad++
			http.NotFound(w, r)
			return
		}
		ts.tiles = append(ts.tiles, fmt.Sprintf("%d/%d/%d", z, x, y))
		w.Header().Set("Content-Type", "image/png")
		_, _ = w.Write(tilePNG)
	}))
	t.Cleanup(ts.Close)
	return ts
}

func (ts *tileServer) served() (tiles []string, referers []string, bad int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]string(nil), ts.tiles...), append([]string(nil), ts.referers...), ts.bad
}

// TestBrowserMapTiles: given -map-tiles, the page draws that provider's
// tiles over the offline basemap — the tile URL template is honoured (the
// provider is asked for the tiles of the view), the CSP lets the images in,
// the attribution is shown as text, and the page's token never reaches the
// provider — and ?tiles=off fetches none.
func TestBrowserMapTiles(t *testing.T) {
	noLeaks(t)
	tiles := newTileServer(t)
	pub := newPublisher(t, "r0")
	const attribution = "Test tiles <b>not bold</b>"
	rf := startFeedWith(t, func(c *livefeed.Config) {
		c.Map.Tiles = tiles.URL + "/tiles/{z}/{x}/{y}.png"
		c.Map.TilesAttribution = attribution
	}, pub)
	pub.publish(rec("truck-1", "acme", 1, time.Now().UnixMilli(), -26.2, 28.0))
	rf.waitVehicles(t, 1)

	b := newBrowser(t, 60*time.Second, 1280, 800)
	b.open(rf.url("http") + "/?token=" + devToken + "&lat=-26&lon=25&zoom=5")
	s := b.waitState("the provider's tiles loaded", func(s mapState) bool { return s.Tiles == "ok" && s.Basemap.Loaded && s.Connected })
	if len(s.Basemap.Labels) != 0 {
		t.Errorf("country names %v drawn over the provider's tiles, which have their own", s.Basemap.Labels)
	}
	// The tiles of the view at zoom 5: x 16..20, y 16..20 around (-26, 25).
	// "ok" comes with the first tile loaded; the others may still be on
	// their way (a loaded machine), so wait for the view's, then for the
	// requests to stop (none new for a second) before counting.
	wantTiles := []string{"5/18/18", "5/19/18", "5/18/17"}
	var got, referers []string
	var bad int
	deadline := time.Now().Add(15 * time.Second)
	for last, stableSince := -1, time.Now(); ; time.Sleep(100 * time.Millisecond) {
		got, referers, bad = tiles.served()
		if len(got) != last {
			last, stableSince = len(got), time.Now()
		}
		all := true
		for _, w := range wantTiles {
			all = all && slices.Contains(got, w)
		}
		if (all && time.Since(stableSince) >= time.Second) || time.Now().After(deadline) {
			break
		}
	}
	if bad > 0 || len(got) < 6 {
		t.Fatalf("tile server: %d tiles %v, %d bad requests", len(got), got, bad)
	}
	for _, want := range wantTiles {
		if !slices.Contains(got, want) {
			t.Errorf("tiles asked for %v lack %s (the view's)", got, want)
		}
	}
	for _, r := range referers {
		if strings.Contains(r, "token") || strings.Contains(r, devToken) {
			t.Errorf("a tile request carried the page's token in its Referer: %q", r)
		}
	}
	// Over the basemap: land and sea alike show the provider's tiles.
	waitFor(t, 10*time.Second, "the tiles on screen", func() bool {
		img, _ := b.screenshot()
		return near(b.pageColour(img, -35, 40), tileColour, 2) && near(b.pageColour(img, -30.5, 22.5), tileColour, 2)
	})
	attrib, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.querySelector('.leaflet-control-attribution').textContent`))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(attrib, attribution) || !strings.Contains(attrib, "Natural Earth") {
		t.Errorf("attribution %q: want the provider's text as text (%q) and Natural Earth's", attrib, attribution)
	}
	b.checkNoJSErrors()

	// ?tiles=off: the same page asks the provider for nothing.
	now, _, _ := tiles.served() // what the first page asked for, all of it by now
	before := len(now)
	b.open(rf.url("http") + "/?tiles=off&lat=-26&lon=25&zoom=5")
	s = b.waitState("the page without tiles", func(s mapState) bool { return s.Tiles == "off" && s.Basemap.Loaded && s.Connected })
	time.Sleep(time.Second) // a tile request would have gone out by now
	if got, _, _ := tiles.served(); len(got) != before {
		t.Errorf("with tiles=off the page fetched %d more tiles", len(got)-before)
	}
	if len(s.Basemap.Labels) == 0 {
		t.Error("no country names on the offline basemap")
	}
}

// fenceServer serves a GeoJSON FeatureCollection of geofences on loopback,
// from another origin than the page's (so CORS and the CSP are in play),
// and can be changed or broken while the page runs.
type fenceServer struct {
	*httptest.Server
	body   atomic.Pointer[string]
	broken atomic.Bool
	hits   atomic.Int32
}

func newFenceServer(t *testing.T, body string) *fenceServer {
	fs := &fenceServer{}
	fs.body.Store(&body)
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.hits.Add(1)
		w.Header().Set("Access-Control-Allow-Origin", "*")
		if fs.broken.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/geo+json")
		_, _ = w.Write([]byte(*fs.body.Load()))
	}))
	t.Cleanup(fs.Close)
	return fs
}

// The fences of TestBrowserMapGeofencesAndAlerts, east and west of the
// test's vehicles near Johannesburg.
const (
	depotFence = `{"type":"Feature","id":"depot-1","properties":{"name":"Depot Midrand","kind":"depot"},
	  "geometry":{"type":"Polygon","coordinates":[
	    [[28.50,-25.70],[28.70,-25.70],[28.70,-25.50],[28.50,-25.50],[28.50,-25.70]],
	    [[28.58,-25.62],[28.62,-25.62],[28.62,-25.58],[28.58,-25.58],[28.58,-25.62]]]}}`
	noGoFence = `{"type":"Feature","properties":{"id":"no-go-1","name":"Quarries","kind":"no-go"},
	  "geometry":{"type":"MultiPolygon","coordinates":[
	    [[[27.40,-26.60],[27.50,-26.60],[27.50,-26.50],[27.40,-26.50],[27.40,-26.60]]],
	    [[[27.60,-26.60],[27.70,-26.60],[27.70,-26.50],[27.60,-26.50],[27.60,-26.60]]]]}}`
	speedFence = `{"type":"Feature","id":"school","properties":{"name":"School zone","kind":"speed","radius_m":5000},
	  "geometry":{"type":"Point","coordinates":[28.90,-26.50]}}`
	corridorFence = `{"type":"Feature","id":"n14","properties":{"name":"N14 corridor","kind":"corridor","width_m":4000},
	  "geometry":{"type":"LineString","coordinates":[[27.30,-25.80],[27.90,-25.80]]}}`
	badCircle     = `{"type":"Feature","id":"bad-circle","properties":{"name":"no radius"},"geometry":{"type":"Point","coordinates":[28.0,-26.0]}}`
	badCollection = `{"type":"Feature","id":"bad-collection","properties":{},"geometry":{"type":"GeometryCollection","geometries":[]}}`
	extraFence    = `{"type":"Feature","id":"depot-2","properties":{"name":"Depot Soweto","kind":"depot"},
	  "geometry":{"type":"Polygon","coordinates":[[[27.80,-26.30],[27.85,-26.30],[27.85,-26.25],[27.80,-26.25],[27.80,-26.30]]]}}`
)

func featureCollection(features ...string) string {
	return `{"type":"FeatureCollection","features":[` + strings.Join(features, ",") + `]}`
}

// TestBrowserMapGeofencesAndAlerts: the page draws the geofences of
// -map-geofences read-only — polygons with holes, multipolygons, circles
// (a Point with radius_m) and corridors (a LineString with width_m, as wide
// on screen as in metres), refuses what it cannot draw and says why, picks
// up changes on its refresh, and keeps what it drew while the source is
// down. Alert messages (the `alert` type of the live API) become a
// marker state on the vehicle, a badge on its cluster and a toast that
// selects the vehicle; a cleared alert clears them, an acknowledged one
// drops its toast, a late one pops nothing up. Geofence editing is a stub
// that says so.
func TestBrowserMapGeofencesAndAlerts(t *testing.T) {
	noLeaks(t)
	fences := newFenceServer(t, featureCollection(depotFence, noGoFence, speedFence, corridorFence, badCircle, badCollection))
	pub := newPublisher(t, "r0")
	rf := startFeedWith(t, func(c *livefeed.Config) {
		c.Map.Geofences = fences.URL + "/v1/geofences.geojson"
		c.Map.GeofencesRefresh = 5 * time.Second
	}, pub)
	now := time.Now().UnixMilli()
	pub.publish(rec("truck-1", "acme", 1, now, -26.20, 28.00), rec("truck-2", "acme", 1, now, -26.30, 28.20),
		rec("truck-3", "acme", 1, now, -25.95, 27.95), rec("truck-4", "acme", 1, now, -26.10, 28.10),
		rec("truck-5", "acme", 1, now, -26.25, 28.05))
	rf.waitVehicles(t, 5)

	b := newBrowser(t, 90*time.Second, 1280, 800)
	b.open(rf.url("http") + "/?token=" + devToken + "&lat=-26.05&lon=28.1&zoom=9")
	s := b.waitState("the geofences drawn", func(s mapState) bool { return s.Geofences.Loaded && s.Connected && len(s.Vehicles) == 5 })
	g := s.Geofences
	if g.Polygon != 2 || g.Circle != 1 || g.Corridor != 1 || len(g.Skipped) != 2 {
		t.Errorf("geofences %+v: want 2 polygons, 1 circle, 1 corridor, 2 refused", g)
	}
	for _, sk := range g.Skipped {
		if sk.ID == "bad-circle" && !strings.Contains(sk.Why, "radius_m") || sk.ID == "bad-collection" && !strings.Contains(sk.Why, "GeometryCollection") {
			t.Errorf("refused %s because %q", sk.ID, sk.Why)
		}
	}

	// On screen: each fence tinted in its kind's colour over the land, the
	// depot's hole not, and the corridor as wide as its 4 km.
	land := landColour
	tint := func(hex uint32, a float64) color.RGBA {
		return blend(color.RGBA{uint8(hex >> 16), uint8(hex >> 8), uint8(hex), 0xff}, land, a)
	}
	samples := []struct {
		what     string
		lat, lon float64
		want     color.RGBA
	}{
		{"inside the depot", -25.66, 28.54, tint(0x139a7a, 0.12)},
		{"in the depot's hole", -25.60, 28.60, land},
		{"in a no-go area", -26.55, 27.65, tint(0xc0392b, 0.12)},
		{"between the no-go areas", -26.55, 27.55, land},
		{"in the school zone", -26.50, 28.90, tint(0xd97706, 0.12)},
		{"on the corridor", -25.80, 27.45, tint(0x2563c9, 0.22)},
		{"1.5 km off the corridor's centre", -25.80 + 1.5/111.2, 27.45, tint(0x2563c9, 0.22)},
		{"3 km off the corridor's centre", -25.80 + 3/111.2, 27.45, land},
	}
	var failures []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		img, _ := b.screenshot()
		failures = nil
		for _, sm := range samples {
			if c := b.pageColour(img, sm.lat, sm.lon); !near(c, sm.want, 3) {
				failures = append(failures, fmt.Sprintf("%s (%v, %v): %v, want %v", sm.what, sm.lat, sm.lon, c, sm.want))
			}
		}
		if len(failures) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(failures) > 0 {
		t.Error(strings.Join(failures, "\n"))
	}

	// Alerts. A major one on truck-1: a ring on its marker and a toast.
	b.eval(fmt.Sprintf(`window.droverMap.receive({type: 'alert', alerts: [{id: 'a1', rule: 'geofence.enter', title: 'Entered Depot Midrand',
		severity: 'major', state: 'active', device: 'truck-1', fleet: 'acme', start_ms: %d}]})`, now))
	s = b.waitState("truck-1 marked and a toast", func(s mapState) bool {
		v, _ := s.vehicle("truck-1")
		return v.Alert == "major" && len(s.Alerts.Toasts) == 1
	})
	if tt := s.Alerts.Toasts[0]; tt.ID != "a1" || tt.Device != "truck-1" || tt.Title != "Entered Depot Midrand" {
		t.Errorf("toast %+v", tt)
	}
	truck1, _ := s.vehicle("truck-1")
	img, _ := b.screenshot()
	// The ring: radius 12 px, 3 px wide, in the major colour (#e4572e).
	r, gg, bl, _ := img.At(int(truck1.X+0.5), int(truck1.Y+0.5)+barHeight-12).RGBA()
	if r>>8 < 190 || gg>>8 > 130 || bl>>8 > 110 {
		t.Errorf("above truck-1 the marker shows (%d, %d, %d), want the major alert's ring (228, 87, 46)", r>>8, gg>>8, bl>>8)
	}
	toast, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.querySelector('.toast[data-alert="a1"]').textContent`))
	if err != nil || !strings.Contains(toast, "Entered Depot Midrand") || !strings.Contains(toast, "truck-1") || !strings.Contains(toast, "major") {
		t.Errorf("toast text %q (%v)", toast, err)
	}
	// A click on the toast selects the vehicle; its panel lists the alert.
	b.eval(`document.querySelector('.toast[data-alert="a1"]').click()`)
	b.waitState("truck-1 selected from its toast", func(s mapState) bool { return s.Selected == "truck-1" })
	if p := b.text("palerts"); !strings.Contains(p, "major: Entered Depot Midrand") {
		t.Errorf("panel alerts %q", p)
	}

	// A late critical one on truck-2 (from a backfilled stretch): marked,
	// no toast. An invalid one is counted and ignored.
	b.eval(`window.droverMap.receive({type: 'alert', alerts: [
		{id: 'a2', rule: 'overheat', severity: 'critical', state: 'active', device: 'truck-2', late: true},
		{id: 'a9', rule: 'x', severity: 'loud', state: 'active', device: 'truck-2'}]})`)
	s = b.waitState("truck-2 marked critical", func(s mapState) bool { v, _ := s.vehicle("truck-2"); return v.Alert == "critical" })
	if len(s.Alerts.Toasts) != 1 || s.Alerts.Invalid != 1 {
		t.Errorf("after a late and an invalid alert: toasts %+v, invalid %d", s.Alerts.Toasts, s.Alerts.Invalid)
	}
	// Zoomed out, the vehicles gather in a cluster that carries the worst.
	b.eval(`window.droverMap.select(null); window.droverMap.setView(-26.1, 28.1, 5)`)
	b.waitState("a cluster with a critical badge", func(s mapState) bool {
		return len(s.Clusters) == 1 && s.Clusters[0].Count == 5 && s.Clusters[0].Alert == "critical"
	})

	// Cleared: truck-1's ring goes, its toast says so. Acknowledged: the
	// toast goes, the marker stays.
	b.eval(`window.droverMap.receive({type: 'alert', alerts: [
		{id: 'a1', rule: 'geofence.enter', severity: 'major', state: 'cleared', device: 'truck-1'},
		{id: 'a3', rule: 'idle', title: 'Idling 40 min', severity: 'minor', state: 'active', device: 'truck-3'}]})`)
	b.waitState("truck-1 cleared, truck-3 toasted", func(s mapState) bool {
		v1, _ := s.vehicle("truck-1")
		v3, _ := s.vehicle("truck-3")
		cleared := false
		for _, tt := range s.Alerts.Toasts {
			cleared = cleared || tt.ID == "a1" && tt.Cleared
		}
		return v1.Alert == "" && v3.Alert == "minor" && cleared && len(s.Alerts.Toasts) == 2
	})
	b.eval(`window.droverMap.receive({type: 'alert', alerts: [
		{id: 'a3', rule: 'idle', severity: 'minor', state: 'active', acknowledged: true, device: 'truck-3'}]})`)
	b.waitState("truck-3's toast gone, its marker kept", func(s mapState) bool {
		v3, _ := s.vehicle("truck-3")
		for _, tt := range s.Alerts.Toasts {
			if tt.ID == "a3" {
				return false
			}
		}
		return v3.Alert == "minor"
	})

	// Without -map-api the page offers no fence editing.
	if s.FenceEditor.Available || !strings.Contains(b.text("fenceedit"), "Edit fences") {
		t.Errorf("fence editor %+v without -map-api, or no Edit fences button in the page", s.FenceEditor)
	}
	if hidden, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`document.getElementById('fenceedit').hidden`)); err != nil || !hidden {
		t.Errorf("the Edit fences button shows without -map-api (hidden %v, %v)", hidden, err)
	}

	// A fence added at the source appears on the next refresh; the source
	// down, the fences drawn stay and the error is kept.
	body := featureCollection(depotFence, noGoFence, speedFence, corridorFence, extraFence)
	fences.body.Store(&body)
	s = b.waitState("the added fence", func(s mapState) bool { return s.Geofences.Polygon == 3 && len(s.Geofences.Skipped) == 0 })
	fences.broken.Store(true)
	s = b.waitState("the refresh to fail", func(s mapState) bool { return s.Geofences.Error != "" })
	if !strings.Contains(s.Geofences.Error, "503") || s.Geofences.Polygon != 3 {
		t.Errorf("with the source down: %+v, want a 503 and the 3 polygons kept", s.Geofences)
	}

	b.checkOnlyOrigin(rf.url("http"), fences.URL)
	b.checkNoJSErrors()
}
