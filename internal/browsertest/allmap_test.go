package browsertest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestLiveMapFromSimulatedFleet runs `drover all -simulate 40` — the whole
// pipeline, as make run does — and opens its live map in headless Chromium:
// the binary serves the real page (not the placeholder of a binary built
// without scripts/build-map.sh), the offline basemap shows the Southern
// African countries the simulator drives through, every simulated vehicle
// appears and they move as their readings travel device → frontend →
// router → livefeed → browser, and the page loads nothing from elsewhere.
// The screenshot goes to $DROVER_ARTIFACTS (or the test's temp dir) as
// make-run-map.png; with DROVER_UPDATE_DOCS=1 it also replaces
// docs/img/make-run-map.png.
func TestLiveMapFromSimulatedFleet(t *testing.T) {
	const vehicles = 40
	b := newBrowser(t, 2*time.Minute, 1280, 800)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	mapAddr := freeAddr(t)
	const token = "e2e-map-token"
	dataDir := t.TempDir()
	all := startDrover(t, ctx, "all", "-data", dataDir, "-simulate", "40", "-status-interval", "0",
		"-frontend.listen", freeAddr(t), "-router.listen", "tcp://"+freeAddr(t),
		"-alerts.alert-pub", "tcp://"+freeAddr(t), // not the fixed default: another test may hold it
		"-router.live-pub", "tcp://"+freeAddr(t), "-router.store-listen", "tcp://"+freeAddr(t),
		"-livefeed.listen", mapAddr, "-livefeed.dev-token-file", secretFile(t, token),
		"-api.listen", freeAddr(t))

	resp, err := http.Get("http://" + mapAddr + "/map-config.json")
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Bundled bool `json:"bundled"`
	}
	err = json.NewDecoder(resp.Body).Decode(&conf)
	resp.Body.Close()
	if err != nil || !conf.Bundled {
		t.Fatalf("drover all serves the placeholder page (bundled %v, %v): the binary was built without scripts/build-map.sh", conf.Bundled, err)
	}

	b.open("http://" + mapAddr + "/?token=" + token)
	first := b.waitState("every simulated vehicle on the map, on the offline basemap", func(s mapState) bool {
		return s.Connected && len(s.Vehicles) == vehicles && s.Basemap.Loaded
	})
	before := map[string][2]float64{}
	for _, v := range first.Vehicles {
		before[v.ID] = [2]float64{v.Lat, v.Lon}
	}
	s := b.waitState("most vehicles to move", func(s mapState) bool {
		moved := 0
		for _, v := range s.Vehicles {
			if p, ok := before[v.ID]; ok && (p[0] != v.Lat || p[1] != v.Lon) {
				moved++
			}
		}
		return moved >= vehicles/2
	})
	// The simulator's routes cross Southern Africa: the view, fitted to the
	// fleet once it has positions (a second after the first update when the
	// page opened before the fleet reported), names its countries.
	names := func(s mapState) bool {
		return slices.Contains(s.Basemap.Labels, "South Africa") && slices.Contains(s.Basemap.Labels, "Botswana")
	}
	if !names(s) {
		b.waitState("the view fitted to the fleet, naming South Africa and Botswana", names)
	}
	time.Sleep(700 * time.Millisecond) // markers settle, for the picture
	_, png := b.screenshot()
	saveScreenshot(t, "make-run-map.png", png)
	b.checkOnlyOrigin("http://" + mapAddr)
	b.checkNoJSErrors()

	// "Edit fences" saves to drover all's own API (CORS and -map-api wired
	// for it): a polygon drawn with the bootstrap admin's key is stored.
	key, err := os.ReadFile(filepath.Join(dataDir, "api", "api-admin-key"))
	if err != nil {
		t.Fatal(err)
	}
	b.eval(`document.getElementById('fenceedit').click()`)
	b.eval(fmt.Sprintf(`document.getElementById('fencekey').value = %q; document.getElementById('fenceconnect').click()`, strings.TrimSpace(string(key))))
	b.waitState("the editor connected to drover all's API", func(s mapState) bool { return s.FenceEditor.Connected })
	b.eval(`document.getElementById('fenceid').value = 'make-run-depot'`)
	b.eval(`window.droverMap.fenceEditor.draw('Polygon', [[-26.1, 28.0], [-26.1, 28.1], [-26.2, 28.1]]); document.getElementById('fencesave').click()`)
	if s := b.waitState("the fence saved", func(s mapState) bool { return s.FenceEditor.Saves == 1 || s.FenceEditor.Error != "" }); s.FenceEditor.Error != "" {
		t.Errorf("saving a fence in drover all: %s", s.FenceEditor.Error)
	}
	b.checkNoJSErrors()
	t.Logf("%d vehicles drawn and moving", len(first.Vehicles))
	all.stop(30 * time.Second)
}
