package livefeed

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"
)

// web holds the live map page. web/dist is the bundle scripts/build-map.sh
// writes before the binary is compiled (make build, make run and make test
// run it): drover's page code with Leaflet, supercluster and
// topojson-client, the offline basemap from Natural Earth (world-atlas) and
// their licences. It is gitignored: none of it is committed. Without it, as
// after a plain `go build`, web/placeholder is served instead: a page that
// says how to build the map. The source of the page is livefeed/map/.
//
//go:embed web
var web embed.FS

// pageFiles is the page the binary serves, loaded once.
var pageFiles = sync.OnceValue(func() *page { return loadPage(web) })

// staticFile is one file of the page, with its gzip form when that is
// smaller.
type staticFile struct {
	data, gz []byte
	etag     string
	ctype    string
}

type page struct {
	bundled bool
	files   map[string]*staticFile // by URL path without the leading /
}

// loadPage reads the page from fsys (holding web/dist and web/placeholder):
// the bundle when there is one, else the placeholder.
func loadPage(fsys fs.FS) *page {
	p := &page{files: map[string]*staticFile{}}
	root := "web/placeholder"
	if _, err := fs.Stat(fsys, "web/dist/index.html"); err == nil {
		root, p.bundled = "web/dist", true
	}
	err := fs.WalkDir(fsys, root, func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(fsys, name)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		f := &staticFile{data: data, etag: `"` + hex.EncodeToString(sum[:12]) + `"`,
			ctype: mime.TypeByExtension(path.Ext(name))}
		if f.ctype == "" {
			f.ctype = http.DetectContentType(data)
		}
		if len(data) > 1024 {
			var b bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression)
			_, _ = zw.Write(data)
			_ = zw.Close()
			if b.Len() < len(data)*9/10 {
				f.gz = b.Bytes()
			}
		}
		p.files[strings.TrimPrefix(name, root+"/")] = f
		return nil
	})
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	return p
}

// MapBundled reports whether this binary holds the live map page, built by
// scripts/build-map.sh before it was compiled, rather than the placeholder
// that says how to build it.
func MapBundled() bool { return pageFiles().bundled }

// pageHandler serves the live map page, its assets and map-config.json.
func pageHandler(cfg MapConfig) http.Handler { return servePage(pageFiles(), cfg) }

// servePage serves p with cfg.
func servePage(p *page, cfg MapConfig) http.Handler {
	pc := cfg.page()
	pc.Bundled = p.bundled
	conf, err := json.Marshal(pc)
	if err != nil {
		panic(err) // plain strings and numbers
	}
	csp := cfg.csp()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		// The page's URL may carry ?token=: tile requests get the origin only.
		h.Set("Referrer-Policy", "strict-origin")
		// Files that change with each release: revalidate each time (ETag).
		h.Set("Cache-Control", "no-cache")
		name := strings.TrimPrefix(r.URL.Path, "/")
		if name == "" {
			name = "index.html"
		}
		if name == "map-config.json" {
			h.Set("Content-Type", "application/json")
			_, _ = w.Write(conf)
			return
		}
		f, ok := p.files[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h.Set("Content-Type", f.ctype)
		data, etag := f.data, f.etag
		if f.gz != nil {
			h.Add("Vary", "Accept-Encoding")
			if acceptsGzip(r) {
				data, etag = f.gz, strings.TrimSuffix(f.etag, `"`)+`-gz"`
				h.Set("Content-Encoding", "gzip")
			}
		}
		h.Set("ETag", etag)
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
	})
}

// acceptsGzip reports whether the request accepts a gzip body.
func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			continue
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(q), "q="); ok {
			f, err := strconv.ParseFloat(v, 64)
			return err == nil && f > 0
		}
		return true
	}
	return false
}
