package browsertest

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/livefeed"
)

// barHeight is the height of the page's top bar: the map's container
// starts below it, and droverMap.state() gives x, y in the container.
const barHeight = 48

// requireBundle fails the test when the livefeed in this test binary was
// compiled without the live map page: these tests are about the real page,
// never the placeholder. make test builds it first (make map).
func requireBundle(t testing.TB) {
	t.Helper()
	if !livefeed.MapBundled() {
		t.Fatal("the live map page is not built into this binary: run scripts/build-map.sh (make map) before go test")
	}
}

// browser is a headless Chromium tab with what the page did recorded: its
// JavaScript exceptions and every URL it requested.
type browser struct {
	t   testing.TB
	ctx context.Context

	mu       sync.Mutex
	jsErrs   []string
	requests []string
}

// newBrowser starts Chromium with a window of width × height and a fresh
// profile, stopped when the test ends.
func newBrowser(t testing.TB, timeout time.Duration, width, height int) *browser {
	t.Helper()
	chromium := testenv.Chromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, chromedpOptions(chromium, t.TempDir(), width, height)...)
	t.Cleanup(cancelAlloc)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(cancelBrowser)
	b := &browser{t: t, ctx: bctx}
	err := chromedp.Listen(bctx, func(ev any) {
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			if d := e.ExceptionDetails; d != nil {
				msg := fmt.Sprintf("%s:%d:%d %s", d.URL, d.LineNumber+1, d.ColumnNumber+1, d.Text)
				if d.Exception != nil {
					msg += " " + d.Exception.Description
				}
				b.mu.Lock()
				b.jsErrs = append(b.jsErrs, msg)
				b.mu.Unlock()
			}
		case *network.EventRequestWillBeSent:
			b.mu.Lock()
			b.requests = append(b.requests, e.Request.URL)
			b.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if _, err := chromedp.Call(bctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("enable network events: %v", err)
	}
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(int64(width), int64(height))); err != nil {
		t.Fatalf("viewport: %v", err)
	}
	return b
}

// open navigates to url.
func (b *browser) open(url string) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, chromedp.Navigate(url)); err != nil {
		b.t.Fatalf("open %s: %v", url, err)
	}
}

// eval evaluates js in the page.
func (b *browser) eval(js string) {
	b.t.Helper()
	if _, err := chromedp.Run(b.ctx, chromedp.Evaluate[any](js)); err != nil {
		b.t.Fatalf("evaluate %s: %v", js, err)
	}
}

// mapState returns window.droverMap.state().
func (b *browser) mapState() mapState {
	b.t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Evaluate[mapState](`window.droverMap ? window.droverMap.state() : {}`))
	if err != nil {
		b.t.Fatalf("read the map's state: %v", err)
	}
	return s
}

// waitState polls the map's state until cond holds.
func (b *browser) waitState(what string, cond func(mapState) bool) mapState {
	b.t.Helper()
	var s mapState
	waitFor(b.t, 20*time.Second, what, func() bool { s = b.mapState(); return cond(s) })
	return s
}

// text returns the text content of the element with the given id.
func (b *browser) text(id string) string {
	b.t.Helper()
	s, err := chromedp.Run(b.ctx, chromedp.Evaluate[string](fmt.Sprintf(`(document.getElementById(%q) || {}).textContent || ''`, id)))
	if err != nil {
		b.t.Fatal(err)
	}
	return s
}

// screenshot returns the viewport as an image, and its PNG.
func (b *browser) screenshot() (image.Image, []byte) {
	b.t.Helper()
	buf, err := chromedp.Run(b.ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		b.t.Fatalf("decode screenshot: %v", err)
	}
	return img, buf
}

// requested returns the URLs the page requested so far.
func (b *browser) requested() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.requests...)
}

// checkNoJSErrors fails the test if the page threw.
func (b *browser) checkNoJSErrors() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.jsErrs) > 0 {
		b.t.Errorf("JavaScript errors on the page:\n%s", strings.Join(b.jsErrs, "\n"))
	}
}

// checkOnlyOrigin fails the test if the page requested anything outside
// the origins (scheme://host:port) but data: URLs: what a browser with no
// network at all would load.
func (b *browser) checkOnlyOrigin(origins ...string) {
	b.t.Helper()
	for _, u := range b.requested() {
		if strings.HasPrefix(u, "data:") {
			continue
		}
		p, err := url.Parse(u)
		if err != nil || !slices.Contains(origins, p.Scheme+"://"+p.Host) {
			b.t.Errorf("the page requested %s, outside %v", u, origins)
		}
	}
}

// saveScreenshot writes png to $DROVER_ARTIFACTS (or the test's temp dir)
// as name, and over docs/img/name too with DROVER_UPDATE_DOCS=1.
func saveScreenshot(t testing.TB, name string, png []byte) {
	t.Helper()
	dir := os.Getenv("DROVER_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(dir, name)
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
	if os.Getenv("DROVER_UPDATE_DOCS") == "1" {
		root, err := testenv.ModuleRoot()
		if err != nil {
			t.Fatal(err)
		}
		doc := filepath.Join(root, "docs", "img", name)
		if err := os.WriteFile(doc, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("updated %s", doc)
	}
}

// The offline basemap's colours (livefeed/map/src: map.css --sea, basemap.js
// LAND).
var (
	seaColour  = color.RGBA{0xc9, 0xdb, 0xe8, 0xff}
	landColour = color.RGBA{0xf4, 0xf0, 0xe6, 0xff}
)

// blend is colour c at opacity a over the background bg.
func blend(c, bg color.RGBA, a float64) color.RGBA {
	mix := func(x, y uint8) uint8 { return uint8(float64(x)*a + float64(y)*(1-a) + 0.5) }
	return color.RGBA{mix(c.R, bg.R), mix(c.G, bg.G), mix(c.B, bg.B), 0xff}
}

// patchColour returns the most common colour of the 7×7 patch of img around
// (x, y): labels, borders and markers that cross a sample point do not
// decide it.
func patchColour(img image.Image, x, y int) color.RGBA {
	counts := map[color.RGBA]int{}
	var best color.RGBA
	for dy := -3; dy <= 3; dy++ {
		for dx := -3; dx <= 3; dx++ {
			r, g, bl, a := img.At(x+dx, y+dy).RGBA()
			c := color.RGBA{uint8(r >> 8), uint8(g >> 8), uint8(bl >> 8), uint8(a >> 8)}
			counts[c]++
			if counts[c] > counts[best] {
				best = c
			}
		}
	}
	return best
}

// near reports whether two colours differ by at most tol in each channel.
func near(a, b color.RGBA, tol int) bool {
	d := func(x, y uint8) bool { v := int(x) - int(y); return v >= -tol && v <= tol }
	return d(a.R, b.R) && d(a.G, b.G) && d(a.B, b.B)
}

// distinctColours counts the colours of img (up to limit).
func distinctColours(img image.Image, limit int) int {
	seen := map[color.Color]bool{}
	bd := img.Bounds()
	for y := bd.Min.Y; y < bd.Max.Y; y += 3 {
		for x := bd.Min.X; x < bd.Max.X; x += 3 {
			seen[img.At(x, y)] = true
			if len(seen) >= limit {
				return len(seen)
			}
		}
	}
	return len(seen)
}

// containerPoint returns where (lat, lon) is in the map's container, in
// CSS pixels, as the page's Leaflet map computes it.
func (b *browser) containerPoint(lat, lon float64) (x, y float64) {
	b.t.Helper()
	p, err := chromedp.Run(b.ctx, chromedp.Evaluate[struct{ X, Y float64 }](
		fmt.Sprintf(`window.droverMap.leaflet.latLngToContainerPoint([%v, %v])`, lat, lon)))
	if err != nil {
		b.t.Fatal(err)
	}
	return p.X, p.Y
}

// pageColour returns the colour the screenshot img shows at (lat, lon).
func (b *browser) pageColour(img image.Image, lat, lon float64) color.RGBA {
	b.t.Helper()
	x, y := b.containerPoint(lat, lon)
	return patchColour(img, int(x+0.5), int(y+0.5)+barHeight)
}
