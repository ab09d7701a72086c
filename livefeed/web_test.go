package livefeed

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// getJSON GETs url and decodes its JSON body into v.
func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}

var (
	placeholderHTML = []byte("<!doctype html><p>the map was not built: run scripts/build-map.sh</p>")
	bundleHTML      = []byte(`<!doctype html><script src="main.js"></script>`)
	bundleJS        = bytes.Repeat([]byte("console.log('drover map');\n"), 200)
)

// TestPageBundleOrPlaceholder: with web/dist in the embedded tree the page
// is the bundle; without it (a plain go build) the placeholder that says
// how to build the map, and map-config.json says which.
func TestPageBundleOrPlaceholder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fsys    fstest.MapFS
		bundled bool
		index   []byte
	}{
		{"placeholder", fstest.MapFS{"web/placeholder/index.html": {Data: placeholderHTML}}, false, placeholderHTML},
		{"bundle", fstest.MapFS{
			"web/placeholder/index.html": {Data: placeholderHTML},
			"web/dist/index.html":        {Data: bundleHTML},
			"web/dist/main.js":           {Data: bundleJS},
		}, true, bundleHTML},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := loadPage(tc.fsys)
			if p.bundled != tc.bundled {
				t.Errorf("bundled = %v, want %v", p.bundled, tc.bundled)
			}
			srv := httptest.NewServer(servePage(p, DefaultMapConfig()))
			defer srv.Close()
			resp, err := http.Get(srv.URL + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !bytes.Equal(body, tc.index) {
				t.Errorf("GET / = %q, want %q", body, tc.index)
			}
			var conf pageConfig
			getJSON(t, srv.URL+"/map-config.json", &conf)
			if conf.Bundled != tc.bundled {
				t.Errorf("map-config.json bundled = %v, want %v", conf.Bundled, tc.bundled)
			}
			resp, err = http.Get(srv.URL + "/nothing.js")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET /nothing.js = %d, want 404", resp.StatusCode)
			}
		})
	}
}

// TestPageCachingAndGzip: a browser that has a file revalidates it with its
// ETag and gets 304; one that accepts gzip gets the smaller body, with its
// own ETag, and the same bytes once decompressed.
func TestPageCachingAndGzip(t *testing.T) {
	p := loadPage(fstest.MapFS{
		"web/dist/index.html": {Data: bundleHTML},
		"web/dist/main.js":    {Data: bundleJS},
	})
	srv := httptest.NewServer(servePage(p, DefaultMapConfig()))
	defer srv.Close()
	get := func(hdr map[string]string) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/main.js", nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		// Transport would ask for gzip and decode it itself: ask ourselves.
		tr := &http.Transport{DisableCompression: true}
		defer tr.CloseIdleConnections()
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, b
	}
	plain, body := get(nil)
	if plain.StatusCode != 200 || !bytes.Equal(body, bundleJS) || plain.Header.Get("Content-Encoding") != "" {
		t.Fatalf("plain GET: %d %q, %d bytes", plain.StatusCode, plain.Header.Get("Content-Encoding"), len(body))
	}
	etag := plain.Header.Get("ETag")
	if again, _ := get(map[string]string{"If-None-Match": etag}); again.StatusCode != http.StatusNotModified {
		t.Errorf("GET with If-None-Match %s = %d, want 304", etag, again.StatusCode)
	}
	zipped, zbody := get(map[string]string{"Accept-Encoding": "br, gzip"})
	if zipped.Header.Get("Content-Encoding") != "gzip" || len(zbody) >= len(bundleJS) || zipped.Header.Get("ETag") == etag {
		t.Fatalf("gzip GET: encoding %q, %d bytes (plain %d), ETag %s (plain %s)", zipped.Header.Get("Content-Encoding"),
			len(zbody), len(bundleJS), zipped.Header.Get("ETag"), etag)
	}
	zr, err := gzip.NewReader(bytes.NewReader(zbody))
	if err != nil {
		t.Fatal(err)
	}
	if un, _ := io.ReadAll(zr); !bytes.Equal(un, bundleJS) {
		t.Error("gzip body does not decompress to the file")
	}
	if refused, _ := get(map[string]string{"Accept-Encoding": "gzip;q=0"}); refused.Header.Get("Content-Encoding") != "" {
		t.Errorf("gzip;q=0 got %q", refused.Header.Get("Content-Encoding"))
	}
}

// TestMapConfigFlagsAndCSP: the -map-* flags reach map-config.json, and the
// page's CSP lets the browser fetch images from the tile provider (any
// {s} subdomain) and the geofences from their origin, and nothing else.
func TestMapConfigFlagsAndCSP(t *testing.T) {
	cfg := DefaultMapConfig()
	fs := flag.NewFlagSet("livefeed", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"-map-tiles", "https://{s}.tiles.example.com/base/{z}/{x}/{y}{r}.png?key=abc",
		"-map-tiles-attribution", "© Example Maps", "-map-tiles-max-zoom", "17", "-map-tiles-subdomains", "ab",
		"-map-geofences", "https://api.example.com:8443/v1/geofences.geojson", "-map-geofences-refresh", "30s",
		"-map-api", "https://ctl.example.com:9443/"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	p := loadPage(fstest.MapFS{"web/dist/index.html": {Data: bundleHTML}})
	srv := httptest.NewServer(servePage(p, cfg))
	defer srv.Close()
	var conf pageConfig
	getJSON(t, srv.URL+"/map-config.json", &conf)
	want := pageConfig{Tiles: &pageTiles{URL: "https://{s}.tiles.example.com/base/{z}/{x}/{y}{r}.png?key=abc",
		Attribution: "© Example Maps", MaxZoom: 17, Subdomains: "ab"},
		GeofencesURL: "https://api.example.com:8443/v1/geofences.geojson", GeofencesRefreshS: 30, Bundled: true}
	if conf.Tiles == nil || *conf.Tiles != *want.Tiles || conf.GeofencesURL != want.GeofencesURL ||
		conf.GeofencesRefreshS != want.GeofencesRefreshS || !conf.Bundled || conf.APIURL != "https://ctl.example.com:9443" {
		t.Errorf("map-config.json = %+v (tiles %+v)", conf, conf.Tiles)
	}
	resp, err := http.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	for _, part := range []string{"img-src 'self' data: https://*.tiles.example.com;",
		"connect-src 'self' ws: wss: https://api.example.com:8443 https://ctl.example.com:9443;", "script-src 'self';", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, part) {
			t.Errorf("CSP %q lacks %q", csp, part)
		}
	}

	// A geofences path on the page's own origin needs nothing more.
	cfg = DefaultMapConfig()
	cfg.Geofences = "/geofences.geojson"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if csp := cfg.csp(); !strings.Contains(csp, "connect-src 'self' ws: wss:;") {
		t.Errorf("CSP with a same-origin geofences path: %q", csp)
	}
}

// TestMapConfigRefused: every bad -map-* value is refused with its flag
// named, at once.
func TestMapConfigRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*MapConfig)
		want   string
	}{
		{"tiles without {x}", func(c *MapConfig) { c.Tiles = "https://t.example.com/{z}/{y}.png" }, "map-tiles: \"https://t.example.com/{z}/{y}.png\" lacks {x}"},
		{"tiles not http", func(c *MapConfig) { c.Tiles = "ftp://t.example.com/{z}/{x}/{y}.png" }, "not an http(s) URL"},
		{"tiles relative", func(c *MapConfig) { c.Tiles = "/tiles/{z}/{x}/{y}.png" }, "not an http(s) URL"},
		{"tiles with a password", func(c *MapConfig) { c.Tiles = "https://me:secret@t.example.com/{z}/{x}/{y}.png" }, "user name or password"},
		{"tiles unknown placeholder", func(c *MapConfig) { c.Tiles = "https://t.example.com/{z}/{x}/{y}.png?k={key}" }, "placeholder other than"},
		{"{s} not leftmost", func(c *MapConfig) { c.Tiles = "https://tiles.{s}.example.com/{z}/{x}/{y}.png" }, "leftmost label"},
		{"attribution control characters", func(c *MapConfig) { c.TilesAttribution = "a\nb" }, "map-tiles-attribution"},
		{"max zoom", func(c *MapConfig) { c.TilesMaxZoom = 30 }, "map-tiles-max-zoom: 30"},
		{"subdomains", func(c *MapConfig) { c.TilesSubdomains = "a.b" }, "map-tiles-subdomains"},
		{"geofences scheme", func(c *MapConfig) { c.Geofences = "javascript:alert(1)" }, "map-geofences: \"javascript:alert(1)\" is neither"},
		{"geofences protocol-relative", func(c *MapConfig) { c.Geofences = "//evil.example.com/x" }, "map-geofences"},
		{"geofences refresh", func(c *MapConfig) { c.GeofencesRefresh = time.Second }, "map-geofences-refresh: 1s"},
		{"api relative", func(c *MapConfig) { c.API = "/v1" }, "map-api: \"/v1\""},
		{"api with a password", func(c *MapConfig) { c.API = "https://me:pw@ctl.example.com" }, "map-api"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultMapConfig()
			tc.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	// Through the livefeed's Config too.
	cfg := DefaultConfig()
	cfg.Links.Insecure = true
	cfg.Map.Tiles = "https://t.example.com/{z}/{x}.png"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "map-tiles") {
		t.Errorf("Config.Validate() = %v, want the map-tiles error", err)
	}
}
