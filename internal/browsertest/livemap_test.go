package browsertest

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/drover-telemetry/drover/livefeed"
	"github.com/drover-telemetry/drover/telemetry"
)

// mapVehicle is one vehicle of window.droverMap.state().
type mapVehicle struct {
	ID        string  `json:"id"`
	Fleet     string  `json:"fleet"`
	Lat       float64 `json:"lat"`
	Lon       float64 `json:"lon"`
	X         float64 `json:"x"`
	Y         float64 `json:"y"`
	Visible   bool    `json:"visible"`
	Clustered bool    `json:"clustered"`
	Alert     string  `json:"alert"`
}

// mapState is what window.droverMap.state() returns.
type mapState struct {
	Connected bool         `json:"connected"`
	Vehicles  []mapVehicle `json:"vehicles"`
	Clusters  []struct {
		X     float64 `json:"x"`
		Y     float64 `json:"y"`
		Count int     `json:"count"`
		Fleet string  `json:"fleet"`
		Alert string  `json:"alert"`
	} `json:"clusters"`
	Drawn         int      `json:"drawn"`
	UpdatesPerSec float64  `json:"updatesPerSec"`
	Selected      string   `json:"selected"`
	Following     bool     `json:"following"`
	Devices       []string `json:"devices"`
	ActiveFleets  []string `json:"activeFleets"`
	Subscription  struct {
		Devices []string       `json:"devices"`
		Fleets  []string       `json:"fleets"`
		BBox    *livefeed.BBox `json:"bbox"`
	} `json:"subscription"`
	Tiles       string `json:"tiles"`
	TilesLoaded int    `json:"tilesLoaded"`
	TileErrors  int    `json:"tileErrors"`
	View        struct {
		Lat  float64       `json:"lat"`
		Lon  float64       `json:"lon"`
		Zoom float64       `json:"zoom"`
		BBox livefeed.BBox `json:"bbox"`
	} `json:"view"`
	Basemap struct {
		Loaded   bool     `json:"loaded"`
		Error    string   `json:"error"`
		Polygons int      `json:"polygons"`
		Borders  int      `json:"borders"`
		Labels   []string `json:"labels"`
	} `json:"basemap"`
	Geofences struct {
		URL      string `json:"url"`
		Loaded   bool   `json:"loaded"`
		Loads    int    `json:"loads"`
		Error    string `json:"error"`
		Polygon  int    `json:"polygon"`
		Circle   int    `json:"circle"`
		Corridor int    `json:"corridor"`
		Skipped  []struct {
			Index int    `json:"index"`
			ID    string `json:"id"`
			Why   string `json:"why"`
		} `json:"skipped"`
	} `json:"geofences"`
	FenceEditor fenceEditorState `json:"fenceEditor"`
	Alerts      struct {
		Received int `json:"received"`
		Invalid  int `json:"invalid"`
		Active   []struct {
			ID       string `json:"id"`
			Device   string `json:"device"`
			Severity string `json:"severity"`
			Late     bool   `json:"late"`
		} `json:"active"`
		Toasts []struct {
			ID       string `json:"id"`
			Device   string `json:"device"`
			Severity string `json:"severity"`
			Title    string `json:"title"`
			Cleared  bool   `json:"cleared"`
		} `json:"toasts"`
	} `json:"alerts"`
}

// vehicle returns the vehicle id of s.
func (s mapState) vehicle(id string) (mapVehicle, bool) {
	for _, v := range s.Vehicles {
		if v.ID == id {
			return v, true
		}
	}
	return mapVehicle{}, false
}

// fleetSim moves simulated vehicles around Johannesburg and publishes them.
type fleetSim struct {
	pub      *publisher
	vehicles []simVehicle
	seq      uint64
}

type simVehicle struct {
	id, fleet, class string
	lat, lon         float64
	heading, speed   float64
}

func newFleetSim(pub *publisher) *fleetSim {
	s := &fleetSim{pub: pub}
	fleets := []struct{ name, class string }{{"acme-freight", "truck"}, {"metro-bus", "bus"}, {"fresh-foods", "van"}}
	for i := range 36 {
		fl := fleets[i%len(fleets)]
		a := float64(i) * 2.39996 // golden angle: spread without clumps
		r := 0.04 + 0.22*math.Sqrt(float64(i)/36)
		s.vehicles = append(s.vehicles, simVehicle{
			id:    fmt.Sprintf("%s-%02d", strings.SplitN(fl.name, "-", 2)[0], i/len(fleets)+1),
			fleet: fl.name, class: fl.class,
			lat: -26.15 + r*math.Sin(a), lon: 28.05 + r*1.1*math.Cos(a),
			heading: math.Mod(float64(i)*47, 360), speed: 30 + float64(i%5)*12,
		})
	}
	return s
}

// step moves every vehicle by dt of driving and publishes them all.
func (s *fleetSim) step(dt time.Duration) {
	s.seq++
	now := time.Now().UnixMilli()
	recs := make([]*telemetry.EnrichedRecord, 0, len(s.vehicles))
	for i := range s.vehicles {
		v := &s.vehicles[i]
		if i%7 == 3 { // some stand still with the engine off
			v.speed = 0
		}
		km := v.speed * dt.Hours() * 40 // fast-forward, so that movement shows
		v.lat += km / 111 * math.Cos(v.heading*math.Pi/180)
		v.lon += km / 111 / math.Cos(v.lat*math.Pi/180) * math.Sin(v.heading*math.Pi/180)
		v.heading = math.Mod(v.heading+float64(i%3-1)*4+360, 360)
		r := &telemetry.Reading{Seq: s.seq, TimeMs: now}
		r.SetPosition(v.lat, v.lon)
		h, sp := float32(v.heading), float32(v.speed)
		temp, rpm, batt, fuel := float32(82+i%9), float32(900+v.speed*25), float32(27.4), float32(20+i*2%75)
		ign := v.speed > 0
		odo := 120000 + float64(i)*3571.5
		r.HeadingDeg, r.SpeedKmh, r.EngineTempC, r.EngineRpm, r.BatteryVoltageV, r.FuelLevelPct, r.Ignition, r.OdometerKm =
			&h, &sp, &temp, &rpm, &batt, &fuel, &ign, &odo
		recs = append(recs, &telemetry.EnrichedRecord{
			Record:     &telemetry.Record{DeviceId: v.id, ReceivedMs: now, Reading: r},
			Enrichment: &telemetry.Enrichment{Fleet: v.fleet, VehicleClass: v.class, Region: "gauteng"},
		})
	}
	s.pub.publish(recs...)
}

// run steps the fleet every interval until the test ends.
func (s *fleetSim) run(t testing.TB, interval time.Duration) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				s.step(interval)
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait() })
}

// TestBrowserLiveMap loads the live map in headless Chromium from a livefeed
// fed by a moving fleet around Johannesburg, and checks through the page's
// own state and through screenshots what an operator relies on: the page
// loads nothing from outside the livefeed (it works with no network); the
// vehicles appear and move; clicking one shows its values; the fleet and
// device filters narrow the subscription; a followed vehicle stays centred;
// zoomed out to Southern Africa, the offline basemap shows land, sea and
// country names and the vehicles gather into clusters that open on a click;
// across the antimeridian both sides are drawn. It saves a screenshot in
// $DROVER_ARTIFACTS (or a temporary directory), and to
// docs/img/live-map.png with DROVER_UPDATE_DOCS=1.
func TestBrowserLiveMap(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, pub)
	sim := newFleetSim(pub)
	sim.step(0)
	rf.waitVehicles(t, len(sim.vehicles))
	sim.run(t, 250*time.Millisecond)

	b := newBrowser(t, 120*time.Second, 1280, 800)
	b.open(rf.url("http") + "/?token=" + devToken)

	// Every vehicle appears, on screen (the map fits the fleet on its first
	// snapshot).
	n := len(sim.vehicles)
	first := b.waitState("every vehicle drawn", func(s mapState) bool { return s.Connected && s.Drawn == n && len(s.Vehicles) == n })
	before := map[string][2]float64{}
	for _, v := range first.Vehicles {
		before[v.ID] = [2]float64{v.Lat, v.Lon}
	}
	// They move as readings arrive.
	b.waitState("vehicles to move", func(s mapState) bool {
		moved := 0
		for _, v := range s.Vehicles {
			if p, ok := before[v.ID]; ok && (p[0] != v.Lat || p[1] != v.Lon) {
				moved++
			}
		}
		return moved >= n/2 && s.UpdatesPerSec > 0
	})
	if s := b.mapState(); s.View.Zoom < 8 {
		t.Errorf("zoom %v after fitting a fleet 50 km across, want a city view", s.View.Zoom)
	}

	// The fleet filter: only metro-bus, then all again.
	clickChip(t, b.ctx, `button.chip[data-fleet="metro-bus"]`)
	b.waitState("only metro-bus", func(s mapState) bool {
		if len(s.Vehicles) == 0 || len(s.ActiveFleets) != 1 || !slices.Equal(s.Subscription.Fleets, []string{"metro-bus"}) {
			return false
		}
		for _, v := range s.Vehicles {
			if v.Fleet != "metro-bus" {
				return false
			}
		}
		return true
	})
	clickChip(t, b.ctx, `button.chip:first-child`)
	s := b.waitState("every fleet back", func(s mapState) bool { return len(s.Vehicles) == n && s.Drawn == n })

	// Click a vehicle that stands alone: its panel opens.
	clickVehicle(t, b, s)
	if title := b.text("ptitle"); title != b.mapState().Selected {
		t.Errorf("panel shows %q, selected %q", title, b.mapState().Selected)
	}
	values := b.text("pvalues")
	for _, want := range []string{"Speed", "km/h", "Heading", "Fuel", "Battery"} {
		if !strings.Contains(values, want) {
			t.Errorf("panel values %q lack %q", values, want)
		}
	}
	// The status line follows within a second (it is redrawn at most every 250 ms on news, and
	// every second).
	var status string
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		status = b.text("statustext")
		ok := strings.Contains(status, "Connected") && strings.Contains(status, fmt.Sprintf("%d vehicles shown", n))
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("status line %q, want connected with %d vehicles shown", status, n)
			break
		}
	}
	time.Sleep(700 * time.Millisecond) // markers settle, for the picture
	_, png := b.screenshot()
	saveScreenshot(t, "live-map.png", png)

	// Follow: the map keeps the selected vehicle in the middle as it moves
	// (acme-01 never stops; at zoom 14 it crosses ~40 px a second, so
	// without following it leaves the middle within a second or two).
	const sel = "acme-01"
	if v, ok := b.mapState().vehicle(sel); ok {
		// Away from it first, so that only following brings it back.
		b.eval(fmt.Sprintf(`window.droverMap.setView(%v, %v, 14)`, v.Lat+0.01, v.Lon+0.015))
		b.waitState("the view away from "+sel, func(s mapState) bool {
			v, _ := s.vehicle(sel)
			return s.View.Zoom == 14 && math.Abs(v.X-640) > 150
		})
	}
	b.eval(`window.droverMap.select('` + sel + `'); window.droverMap.follow(true)`)
	var start mapVehicle
	b.waitState("the followed vehicle kept in the middle while it drives 1 km", func(s mapState) bool {
		v, ok := s.vehicle(sel)
		if !ok || !s.Following || math.Abs(v.X-640) > 40 || math.Abs(v.Y-376) > 40 {
			start = mapVehicle{}
			return false
		}
		if start.ID == "" {
			start = v
		}
		return math.Hypot(v.Lat-start.Lat, (v.Lon-start.Lon)*math.Cos(v.Lat*math.Pi/180))*111.2 > 1
	})
	b.eval(`window.droverMap.follow(false); window.droverMap.select(null)`)

	// The device filter: two vehicles, wherever they are; then the view again.
	b.eval(`document.getElementById('devices').value = 'acme-01, metro-02'; document.getElementById('find').requestSubmit()`)
	b.waitState("only the two vehicles asked for", func(s mapState) bool {
		ids := []string{}
		for _, v := range s.Vehicles {
			ids = append(ids, v.ID)
		}
		slices.Sort(ids)
		return slices.Equal(ids, []string{"acme-01", "metro-02"}) && s.Subscription.BBox == nil &&
			slices.Equal(s.Subscription.Devices, []string{"acme-01", "metro-02"})
	})
	b.eval(`document.getElementById('devices').value = ''; document.getElementById('find').requestSubmit()`)
	b.waitState("the view's area subscribed again", func(s mapState) bool {
		return len(s.Vehicles) >= 2 && s.Subscription.BBox != nil && len(s.Subscription.Devices) == 0
	})
	b.eval(`window.droverMap.setView(-26.15, 28.05, 9)`)
	b.waitState("every vehicle in view again", func(s mapState) bool { return len(s.Vehicles) == n })

	// Southern Africa, zoomed out: the offline basemap draws land, sea,
	// borders and country names, and the fleet is clustered.
	b.eval(`window.droverMap.setView(-26, 25, 5)`)
	// The clusters follow the subscription's new vehicles within a frame or
	// two of the index being rebuilt (at most a few times a second).
	s = b.waitState("the basemap and clusters at zoom 5", func(s mapState) bool {
		clustered, inClusters := 0, 0
		for _, v := range s.Vehicles {
			if v.Clustered {
				clustered++
			}
		}
		for _, c := range s.Clusters {
			inClusters += c.Count
		}
		return s.Basemap.Loaded && slices.Contains(s.Basemap.Labels, "South Africa") && len(s.Clusters) > 0 &&
			s.Drawn == n && clustered == inClusters
	})
	if s.Basemap.Polygons < 1000 || s.Basemap.Borders < 100 || s.Tiles != "off" {
		t.Errorf("basemap %+v, tiles %q: want Natural Earth's land and borders, and no tiles", s.Basemap, s.Tiles)
	}
	for _, want := range []string{"Botswana", "Namibia", "Zimbabwe", "Mozambique"} {
		if !slices.Contains(s.Basemap.Labels, want) {
			t.Errorf("country names %v lack %s", s.Basemap.Labels, want)
		}
	}
	clustered, alone := 0, 0
	for _, v := range s.Vehicles {
		switch {
		case v.Clustered:
			clustered++
		case v.Visible:
			alone++
		}
	}
	inClusters := 0
	for _, c := range s.Clusters {
		inClusters += c.Count
	}
	if clustered < n/2 || inClusters != clustered || clustered+alone != n {
		t.Errorf("at zoom 5: %d vehicles clustered, %d alone, clusters hold %d: want most of %d clustered, and the counts to agree",
			clustered, alone, inClusters, n)
	}
	checkBasemapPixels(t, b)

	// A click on a cluster zooms in to where it falls apart.
	c := s.Clusters[0]
	if err := chromedp.Do(b.ctx, chromedp.MouseClickXY(c.X, c.Y+barHeight)); err != nil {
		t.Fatal(err)
	}
	b.waitState("the map to zoom into the cluster", func(s mapState) bool { return s.View.Zoom > 5 })

	// Across the antimeridian: two vehicles either side of 180° near Fiji,
	// and a view centred on 180°. The page subscribes with west > east and
	// draws both, side by side.
	pub.publish(rec("fiji-east", "acme-freight", 1, time.Now().UnixMilli(), -17.5, 179.6),
		rec("fiji-west", "acme-freight", 1, time.Now().UnixMilli(), -17.4, -179.7))
	b.eval(`window.droverMap.setView(-17.5, 180, 7)`)
	s = b.waitState("both Fiji vehicles drawn", func(s mapState) bool {
		vis := 0
		for _, v := range s.Vehicles {
			if strings.HasPrefix(v.ID, "fiji-") && v.Visible {
				vis++
			}
		}
		return vis == 2 && s.Drawn == 2
	})
	if bb := s.View.BBox; !(bb.West > bb.East) || bb.West < 170 || bb.East > -170 {
		t.Errorf("bbox across the antimeridian %+v, want west in (170, 180], east in [-180, -170)", bb)
	}
	east, _ := s.vehicle("fiji-east")
	west, _ := s.vehicle("fiji-west")
	if !(east.X < west.X) || west.X-east.X > 200 {
		t.Errorf("fiji-east drawn at x=%v, fiji-west at x=%v: want east of 180° on the left, close together", east.X, west.X)
	}

	// Nothing came from anywhere but the livefeed: the page, its code, its
	// basemap and the vehicles work with no network.
	b.checkOnlyOrigin(rf.url("http"))
	b.checkNoJSErrors()
}

// clickVehicle clicks a vehicle of s that is drawn alone, as a user would,
// again where it is now if it moved away before the click landed, and
// waits until the page selects it.
func clickVehicle(t *testing.T, b *browser, s mapState) {
	t.Helper()
	var target mapVehicle
	for _, v := range s.Vehicles {
		if v.Visible && !v.Clustered && v.X > 100 && v.X < 900 && v.Y > 100 {
			target = v
			break
		}
	}
	if target.ID == "" {
		t.Fatalf("no vehicle drawn alone in the middle of the map: %+v", s.Vehicles)
	}
	for attempt := 1; ; attempt++ {
		if err := chromedp.Do(b.ctx, chromedp.MouseClickXY(target.X, target.Y+barHeight)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for s = b.mapState(); s.Selected == "" && time.Now().Before(deadline); s = b.mapState() {
			time.Sleep(50 * time.Millisecond)
		}
		if s.Selected != "" {
			return
		}
		if attempt == 5 {
			t.Fatalf("no vehicle selected after %d clicks on %s", attempt, target.ID)
		}
		was := target
		target, _ = s.vehicle(target.ID)
		t.Logf("click %d on %s at (%.0f, %.0f) selected nothing; it is now at (%.0f, %.0f)", attempt, target.ID, was.X, was.Y, target.X, target.Y)
	}
}

// checkBasemapPixels checks the screenshot of a view of Southern Africa at
// zoom 5: land where there is land, sea where there is sea, and a picture,
// not a blank.
func checkBasemapPixels(t *testing.T, b *browser) {
	t.Helper()
	land := [][2]float64{{-30.5, 22.5}, {-20.5, 21.5}, {-16, 30}, {-25, 17}} // Northern Cape, Botswana, Zambia, Namibia
	sea := [][2]float64{{-35, 40}, {-30, 5}, {-38, 20}, {-20, 50}}           // Indian Ocean, Atlantic, off the Cape, off Madagascar
	// Leaflet draws on the next frames: look until it is there, or say what
	// is not.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		img, _ := b.screenshot()
		var failures []string
		failures = nil
		for _, p := range land {
			if c := b.pageColour(img, p[0], p[1]); !near(c, landColour, 2) {
				failures = append(failures, fmt.Sprintf("land at %v is %v, want %v", p, c, landColour))
			}
		}
		for _, p := range sea {
			if c := b.pageColour(img, p[0], p[1]); !near(c, seaColour, 2) {
				failures = append(failures, fmt.Sprintf("sea at %v is %v, want %v", p, c, seaColour))
			}
		}
		if d := distinctColours(img, 50); d < 50 {
			failures = append(failures, fmt.Sprintf("only %d colours in the screenshot", d))
		}
		if len(failures) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Error(strings.Join(failures, "\n"))
			return
		}
	}
}

// clickChip clicks the element sel selects, looked up and clicked in one
// step in the page. The chip bar is rebuilt as fleets come and go, so a node
// found by one DevTools call may be gone by the next (chromedp.Click: "Could
// not find node with given id"); a user's click always lands on what is
// there. Polls until the element exists.
func clickChip(t *testing.T, ctx context.Context, sel string) {
	t.Helper()
	js := fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e) return false; e.click(); return true; })()`, sel)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err != nil {
			t.Fatalf("click %s: %v", sel, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("click %s: no such element within 10s", sel)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
