package browsertest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// liveMapState is what the map page's window.droverMap.state() returns
// (the part this test reads).
type liveMapState struct {
	Connected bool `json:"connected"`
	Vehicles  []struct {
		ID  string  `json:"id"`
		Lat float64 `json:"lat"`
		Lon float64 `json:"lon"`
	} `json:"vehicles"`
	Drawn int `json:"drawn"`
}

// TestLiveMapFromSimulatedFleet runs `drover all -simulate 40` — the whole
// pipeline, as make run does — and opens its live map in headless Chromium:
// every simulated vehicle appears and they move as their readings travel
// device → frontend → router → livefeed → browser. The screenshot goes to
// $DROVER_ARTIFACTS (or the test's temp dir); with DROVER_UPDATE_DOCS=1 it
// also replaces docs/img/make-run-map.png.
func TestLiveMapFromSimulatedFleet(t *testing.T) {
	chromium := testenv.Chromium(t)
	const vehicles = 40
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mapAddr := freeAddr(t)
	const token = "e2e-map-token"
	all := startDrover(t, ctx, "all", "-data", t.TempDir(), "-simulate", "40", "-status-interval", "0",
		"-frontend.listen", freeAddr(t), "-router.listen", "tcp://"+freeAddr(t),
		"-router.live-pub", "tcp://"+freeAddr(t), "-router.store-listen", "tcp://"+freeAddr(t),
		"-livefeed.listen", mapAddr, "-livefeed.dev-token-file", secretFile(t, token),
		"-api.listen", freeAddr(t))

	opts := chromedpOptions(chromium, t.TempDir(), 1280, 800)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(1280, 800), chromedp.Navigate("http://"+mapAddr+"/?token="+token)); err != nil {
		t.Fatalf("open the map: %v", err)
	}
	state := func() liveMapState {
		s, err := chromedp.Run(bctx, chromedp.Evaluate[liveMapState](`window.droverMap ? window.droverMap.state() : {}`))
		if err != nil {
			t.Fatalf("read the map's state: %v", err)
		}
		return s
	}
	var first liveMapState
	waitFor(t, 60*time.Second, "every simulated vehicle on the map", func() bool {
		first = state()
		return first.Connected && len(first.Vehicles) == vehicles
	})
	before := map[string][2]float64{}
	for _, v := range first.Vehicles {
		before[v.ID] = [2]float64{v.Lat, v.Lon}
	}
	waitFor(t, 30*time.Second, "most vehicles to move", func() bool {
		moved := 0
		for _, v := range state().Vehicles {
			if p, ok := before[v.ID]; ok && (p[0] != v.Lat || p[1] != v.Lon) {
				moved++
			}
		}
		return moved >= vehicles/2
	})

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
	shot := filepath.Join(dir, "make-run-map.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("DROVER_UPDATE_DOCS") == "1" {
		root, err := testenv.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "docs", "img", "make-run-map.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d vehicles drawn and moving; screenshot %s", len(first.Vehicles), shot)
	all.stop(30 * time.Second)
}
