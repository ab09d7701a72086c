// Package browsertest holds drover's tests that drive a real Chromium: the
// live map served by the livefeed, fed by a moving fleet
// (TestBrowserLiveMap: vehicles, filters, follow, the offline basemap,
// clusters, the antimeridian, nothing loaded from elsewhere), with a tile
// provider (TestBrowserMapTiles), with geofences and alert messages
// (TestBrowserMapGeofencesAndAlerts), and the map of `drover all
// -simulate`, as make run shows it (TestLiveMapFromSimulatedFleet);
// BenchmarkLiveMapFrames measures the page with 1,000 and 10,000 vehicles.
//
// The tests are about the real page, bundled by scripts/build-map.sh into
// livefeed/web/dist before the test binary is compiled (make test runs
// make map first): on a binary built without it, which serves a
// placeholder, they fail and say so.
//
// It is a Go module of its own (go.mod here, with a replace directive to
// the repository root) so that the browser driver, chromedp and its
// DevTools protocol bindings, stays out of drover's go.mod: a user's `go
// get` of drover never pulls it in. make test runs these tests like the
// others (see the Makefile's NESTED_MODULES). Without a Chromium they fail
// under CI=true and are skipped, loudly, otherwise (testenv.Chromium).
package browsertest
