package livefeed

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode"
)

// MapConfig configures the built-in live map page: what it draws besides
// the vehicles. The page reads it from map-config.json, and the page's
// Content-Security-Policy lets the browser reach exactly the origins named
// here.
type MapConfig struct {
	// Tiles is the URL template of a raster tile provider drawn over the
	// offline basemap, with {z}, {x} and {y}, and optionally {s} (one of
	// TilesSubdomains, as the leftmost label of the host) and {r} (@2x on
	// high-density screens): e.g.
	// https://tile.openstreetmap.org/{z}/{x}/{y}.png. Empty: the offline
	// basemap only, and the page fetches nothing from outside the livefeed.
	Tiles string
	// TilesAttribution is the credit the provider requires, shown as text
	// in the map's corner; empty: the provider's host name.
	TilesAttribution string
	// TilesMaxZoom is the provider's highest zoom level.
	TilesMaxZoom int
	// TilesSubdomains are the letters {s} takes, e.g. "abc".
	TilesSubdomains string

	// Geofences is the URL of a GeoJSON FeatureCollection of geofences the
	// page draws read-only (docs/live-api.md, "Geofences on the map"): an
	// http(s) URL, or a path on the page's own origin. Empty: none.
	Geofences string
	// GeofencesRefresh is how often the page fetches Geofences again.
	GeofencesRefresh time.Duration

	// API is the control plane's base URL (drover api), which the page's
	// "edit fences" mode saves geofences through with an operator's API
	// key. The CSP lets the page reach its origin, and the API's
	// -cors-origins must list the livefeed's. Empty: no fence editing.
	API string
}

// DefaultMapConfig returns the map of a livefeed with no network beyond
// itself: the offline basemap and no geofences.
func DefaultMapConfig() MapConfig {
	return MapConfig{TilesMaxZoom: 19, TilesSubdomains: "abc", GeofencesRefresh: time.Minute}
}

// RegisterFlags defines the map's flags (-map-...) in fs, bound to c.
func (c *MapConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Tiles, "map-tiles", c.Tiles,
		"`URL template` of raster map tiles drawn over the offline basemap ({z}, {x}, {y}, optional {s} and {r}), "+
			"e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png; empty: the offline basemap only, nothing fetched from outside")
	fs.StringVar(&c.TilesAttribution, "map-tiles-attribution", c.TilesAttribution,
		"`text` crediting the tile provider, shown on the map (e.g. \"© OpenStreetMap contributors\"); empty: the provider's host")
	fs.IntVar(&c.TilesMaxZoom, "map-tiles-max-zoom", c.TilesMaxZoom, "highest `zoom` level the tile provider serves")
	fs.StringVar(&c.TilesSubdomains, "map-tiles-subdomains", c.TilesSubdomains, "`letters` the {s} of -map-tiles takes")
	fs.StringVar(&c.Geofences, "map-geofences", c.Geofences,
		"`URL` (http(s), or a path on the livefeed's origin) of a GeoJSON FeatureCollection of geofences the map draws read-only")
	fs.DurationVar(&c.GeofencesRefresh, "map-geofences-refresh", c.GeofencesRefresh,
		"how often (`duration`) the map fetches -map-geofences again")
	fs.StringVar(&c.API, "map-api", c.API,
		"base `URL` of the control plane (drover api) the map's \"edit fences\" mode saves geofences through with an operator's key; "+
			"the api's -cors-origins must list this livefeed's origin; empty: no fence editing")
}

// Validate reports every problem of the map's configuration at once.
func (c MapConfig) Validate() error {
	var errs []error
	if c.Tiles != "" {
		if _, err := tilesOrigin(c.Tiles); err != nil {
			errs = append(errs, fmt.Errorf("map-tiles: %w", err))
		}
	}
	if len(c.TilesAttribution) > 300 || strings.ContainsFunc(c.TilesAttribution, unicode.IsControl) {
		errs = append(errs, errors.New("map-tiles-attribution: longer than 300 bytes or holds control characters"))
	}
	if c.TilesMaxZoom < 1 || c.TilesMaxZoom > 22 {
		errs = append(errs, fmt.Errorf("map-tiles-max-zoom: %d, want 1 to 22", c.TilesMaxZoom))
	}
	if c.TilesSubdomains == "" || strings.ContainsFunc(c.TilesSubdomains, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9')
	}) {
		errs = append(errs, fmt.Errorf("map-tiles-subdomains: %q, want letters or digits", c.TilesSubdomains))
	}
	if c.Geofences != "" {
		if _, err := geofencesOrigin(c.Geofences); err != nil {
			errs = append(errs, fmt.Errorf("map-geofences: %w", err))
		}
	}
	if c.API != "" {
		if o, err := geofencesOrigin(c.API); err != nil || o == "" {
			errs = append(errs, fmt.Errorf("map-api: %q, want the http(s) URL of the control plane", c.API))
		}
	}
	if c.GeofencesRefresh < 5*time.Second {
		errs = append(errs, fmt.Errorf("map-geofences-refresh: %v, want at least 5s", c.GeofencesRefresh))
	}
	return errors.Join(errs...)
}

// tilesOrigin checks a tile URL template and returns the source the page's
// CSP must allow for its images: scheme://host[:port], with a leading {s}
// label as a * wildcard.
func tilesOrigin(tmpl string) (string, error) {
	for _, p := range []string{"{z}", "{x}", "{y}"} {
		if !strings.Contains(tmpl, p) {
			return "", fmt.Errorf("%q lacks %s", tmpl, p)
		}
	}
	// Placeholders are not URL syntax: parse with stand-ins.
	probe := strings.NewReplacer("{s}", "s0", "{z}", "0", "{x}", "0", "{y}", "0", "{r}", "").Replace(tmpl)
	if strings.ContainsAny(probe, "{}") {
		return "", fmt.Errorf("%q has a placeholder other than {s}, {z}, {x}, {y} and {r}", tmpl)
	}
	u, err := url.Parse(probe)
	if err != nil {
		return "", err
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return "", fmt.Errorf("%q is not an http(s) URL", tmpl)
	}
	if u.User != nil {
		return "", fmt.Errorf("%q holds a user name or password, which every viewer of the map would see", tmpl)
	}
	host := u.Host
	if strings.Contains(host, "s0") {
		if !strings.HasPrefix(host, "s0.") || strings.Count(host, "s0") > 1 {
			return "", fmt.Errorf("%q: {s} may only be the host's leftmost label", tmpl)
		}
		host = "*" + strings.TrimPrefix(host, "s0")
	}
	return u.Scheme + "://" + host, nil
}

// geofencesOrigin checks the geofences URL and returns the origin the page's
// CSP must allow it to fetch: "" for a path on the page's own origin.
func geofencesOrigin(raw string) (string, error) {
	if strings.HasPrefix(raw, "/") && !strings.HasPrefix(raw, "//") {
		if _, err := url.Parse(raw); err != nil {
			return "", err
		}
		return "", nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return "", fmt.Errorf("%q is neither an http(s) URL nor a path starting with /", raw)
	}
	if u.User != nil {
		return "", fmt.Errorf("%q holds a user name or password, which every viewer of the map would see", raw)
	}
	return u.Scheme + "://" + u.Host, nil
}

// pageConfig is map-config.json: what the page needs of MapConfig.
type pageConfig struct {
	Tiles             *pageTiles `json:"tiles"`
	GeofencesURL      string     `json:"geofences_url"`
	GeofencesRefreshS float64    `json:"geofences_refresh_s"`
	// APIURL is MapConfig.API: where the "edit fences" mode saves.
	APIURL string `json:"api_url,omitempty"`
	// Bundled says whether this binary holds the map page (MapBundled).
	Bundled bool `json:"bundled"`
}

type pageTiles struct {
	URL         string `json:"url"`
	Attribution string `json:"attribution"`
	MaxZoom     int    `json:"max_zoom"`
	Subdomains  string `json:"subdomains"`
}

func (c MapConfig) page() pageConfig {
	p := pageConfig{GeofencesURL: c.Geofences, GeofencesRefreshS: c.GeofencesRefresh.Seconds(), APIURL: strings.TrimRight(c.API, "/")}
	if c.Tiles != "" {
		p.Tiles = &pageTiles{URL: c.Tiles, Attribution: c.TilesAttribution, MaxZoom: c.TilesMaxZoom, Subdomains: c.TilesSubdomains}
	}
	return p
}

// csp is the page's Content-Security-Policy: its own files, WebSockets to
// the live API, and only the tile and geofence origins configured.
func (c MapConfig) csp() string {
	img := "img-src 'self' data:"
	if o, err := tilesOrigin(c.Tiles); c.Tiles != "" && err == nil {
		img += " " + o
	}
	connect := "connect-src 'self' ws: wss:"
	if o, err := geofencesOrigin(c.Geofences); c.Geofences != "" && err == nil && o != "" {
		connect += " " + o
	}
	if o, err := geofencesOrigin(c.API); c.API != "" && err == nil && o != "" {
		connect += " " + o
	}
	return "default-src 'self'; " + img + "; " + connect +
		"; script-src 'self'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}
