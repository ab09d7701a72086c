package browsertest

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/livefeed"
	"github.com/drover-telemetry/drover/telemetry"
)

// mapState is what window.droverMap.state() returns.
type mapState struct {
	Connected bool `json:"connected"`
	Vehicles  []struct {
		ID        string  `json:"id"`
		Fleet     string  `json:"fleet"`
		Lat       float64 `json:"lat"`
		Lon       float64 `json:"lon"`
		X         float64 `json:"x"`
		Y         float64 `json:"y"`
		Visible   bool    `json:"visible"`
		Clustered bool    `json:"clustered"`
	} `json:"vehicles"`
	Drawn         int      `json:"drawn"`
	UpdatesPerSec float64  `json:"updatesPerSec"`
	Selected      string   `json:"selected"`
	ActiveFleets  []string `json:"activeFleets"`
	Tiles         string   `json:"tiles"`
	View          struct {
		Zoom float64       `json:"zoom"`
		BBox livefeed.BBox `json:"bbox"`
	} `json:"view"`
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

// TestBrowserLiveMap loads the live map in headless Chromium from a livefeed
// fed by a moving fleet, and checks through the page's own state that the
// vehicles appear and move, that clicking one shows its values and that the
// fleet filter narrows the subscription. It saves a screenshot in
// $DROVER_ARTIFACTS (or a temporary directory), and to docs/img/live-map.png
// with DROVER_UPDATE_DOCS=1.
func TestBrowserLiveMap(t *testing.T) {
	chromium := testenv.Chromium(t)
	noLeaks(t)
	pub := newPublisher(t, "r0")
	rf := startFeed(t, pub)
	sim := newFleetSim(pub)
	sim.step(0)
	rf.waitVehicles(t, len(sim.vehicles))

	stopSim := make(chan struct{})
	var simWG sync.WaitGroup
	simWG.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSim:
				return
			case <-tick.C:
				sim.step(250 * time.Millisecond)
			}
		}
	})
	defer func() { close(stopSim); simWG.Wait() }()

	opts := chromedpOptions(chromium, t.TempDir(), 1280, 800)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()

	var jsErrs []string
	var jsMu sync.Mutex
	err := chromedp.Listen(bctx, func(ev any) {
		if e, ok := ev.(*runtime.EventExceptionThrown); ok && e.ExceptionDetails != nil {
			d := e.ExceptionDetails
			msg := fmt.Sprintf("%s:%d:%d %s", d.URL, d.LineNumber+1, d.ColumnNumber+1, d.Text)
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			jsMu.Lock()
			jsErrs = append(jsErrs, msg)
			jsMu.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(1280, 800), chromedp.Navigate(rf.url("http")+"/?token="+devToken)); err != nil {
		t.Fatalf("open the map: %v", err)
	}
	state := func() mapState {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Evaluate[mapState](`window.droverMap ? window.droverMap.state() : {}`))
		if err != nil {
			t.Fatalf("read the map's state: %v", err)
		}
		return s
	}
	waitState := func(what string, cond func(mapState) bool) mapState {
		t.Helper()
		var s mapState
		waitFor(t, 20*time.Second, what, func() bool { s = state(); return cond(s) })
		return s
	}

	// Every vehicle appears, on screen (the map fits the fleet on its first
	// snapshot).
	n := len(sim.vehicles)
	first := waitState("every vehicle drawn", func(s mapState) bool { return s.Connected && s.Drawn == n && len(s.Vehicles) == n })
	before := map[string][2]float64{}
	for _, v := range first.Vehicles {
		before[v.ID] = [2]float64{v.Lat, v.Lon}
	}
	// They move as readings arrive.
	waitState("vehicles to move", func(s mapState) bool {
		moved := 0
		for _, v := range s.Vehicles {
			if p, ok := before[v.ID]; ok && (p[0] != v.Lat || p[1] != v.Lon) {
				moved++
			}
		}
		return moved >= n/2 && s.UpdatesPerSec > 0
	})
	if testDocState := state(); testDocState.View.Zoom < 8 {
		t.Errorf("zoom %v after fitting a fleet 50 km across, want a city view", testDocState.View.Zoom)
	}

	// The fleet filter: only metro-bus, then all again.
	clickChip(t, bctx, `button.chip[data-fleet="metro-bus"]`)
	waitState("only metro-bus", func(s mapState) bool {
		if len(s.Vehicles) == 0 || len(s.ActiveFleets) != 1 {
			return false
		}
		for _, v := range s.Vehicles {
			if v.Fleet != "metro-bus" {
				return false
			}
		}
		return true
	})
	clickChip(t, bctx, `button.chip:first-child`)
	s := waitState("every fleet back", func(s mapState) bool { return len(s.Vehicles) == n && s.Drawn == n })

	// Click a moving vehicle near the middle: its panel opens. The canvas
	// sits below the 48 px bar.
	target := s.Vehicles[0]
	for _, v := range s.Vehicles {
		if v.ID == "acme-03" || (target.Clustered && !v.Clustered) {
			target = v
		}
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[any](fmt.Sprintf(`window.droverMap.select(%q)`, target.ID))); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond) // markers settle, for the picture
	s = state()
	for _, v := range s.Vehicles {
		if v.ID == target.ID {
			target = v
		}
	}
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[any](`window.droverMap.select(null)`)); err != nil {
		t.Fatal(err)
	}
	// The vehicle keeps moving: on a loaded machine it can leave the spot
	// between reading its position and the click landing. Like a user, click
	// it again where it is now, a few times at most.
	for attempt := 1; ; attempt++ {
		if err := chromedp.Do(bctx, chromedp.MouseClickXY(target.X, target.Y+48)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(3 * time.Second)
		for s = state(); s.Selected == "" && time.Now().Before(deadline); s = state() {
			time.Sleep(50 * time.Millisecond)
		}
		if s.Selected != "" {
			break
		}
		if attempt == 5 {
			t.Fatalf("no vehicle selected after %d clicks on %s", attempt, target.ID)
		}
		was := target
		for _, v := range s.Vehicles {
			if v.ID == target.ID {
				target = v
			}
		}
		t.Logf("click %d on %s at (%.0f, %.0f) selected nothing; it is now at (%.0f, %.0f)", attempt, target.ID, was.X, was.Y, target.X, target.Y)
	}
	title, err := chromedp.Run(bctx, chromedp.Text(chromedp.ID("ptitle")))
	if err != nil {
		t.Fatal(err)
	}
	if title != s.Selected {
		t.Errorf("panel shows %q, selected %q", title, s.Selected)
	}
	values, err := chromedp.Run(bctx, chromedp.Text(chromedp.ID("pvalues")))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Speed", "km/h", "Heading", "Fuel", "Battery"} {
		if !strings.Contains(values, want) {
			t.Errorf("panel values %q lack %q", values, want)
		}
	}
	status, err := chromedp.Run(bctx, chromedp.Text(chromedp.ID("statustext")))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(status, "Connected") || !strings.Contains(status, fmt.Sprintf("%d vehicles shown", n)) {
		t.Errorf("status line %q", status)
	}

	png, err := chromedp.Run(bctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("DROVER_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, "live-map.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes); status %q; tiles %s", shot, len(png), status, s.Tiles)
	if os.Getenv("DROVER_UPDATE_DOCS") == "1" {
		root, err := testenv.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		doc := filepath.Join(root, "docs", "img", "live-map.png")
		if err := os.MkdirAll(filepath.Dir(doc), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(doc, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("updated %s", doc)
	}
	// Across the antimeridian: two vehicles either side of 180° near Fiji,
	// and a view centred on 180°. The page subscribes with west > east and
	// draws both, side by side.
	pub.publish(rec("fiji-east", "acme-freight", 1, time.Now().UnixMilli(), -17.5, 179.6),
		rec("fiji-west", "acme-freight", 1, time.Now().UnixMilli(), -17.4, -179.7))
	if _, err := chromedp.Run(bctx, chromedp.Evaluate[any](`window.droverMap.setView(-17.5, 180, 7)`)); err != nil {
		t.Fatal(err)
	}
	s = waitState("both Fiji vehicles drawn", func(s mapState) bool {
		vis := 0
		for _, v := range s.Vehicles {
			if strings.HasPrefix(v.ID, "fiji-") && v.Visible {
				vis++
			}
		}
		return vis == 2 && s.Drawn == 2
	})
	if b := s.View.BBox; !(b.West > b.East) || b.West < 170 || b.East > -170 {
		t.Errorf("bbox across the antimeridian %+v, want west in (170, 180], east in [-180, -170)", b)
	}
	var east, west float64
	for _, v := range s.Vehicles {
		switch v.ID {
		case "fiji-east":
			east = v.X
		case "fiji-west":
			west = v.X
		}
	}
	if !(east < west) || west-east > 200 {
		t.Errorf("fiji-east drawn at x=%v, fiji-west at x=%v: want east of 180° on the left, close together", east, west)
	}

	jsMu.Lock()
	defer jsMu.Unlock()
	if len(jsErrs) > 0 {
		t.Errorf("JavaScript errors on the page:\n%s", strings.Join(jsErrs, "\n"))
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
