package livefeed

import (
	"embed"
	"io/fs"
	"net/http"
)

// web holds the live map page: plain HTML, CSS and JavaScript written for
// drover, no third-party code, nothing fetched from a CDN. Map tiles come
// from OpenStreetMap when the browser can reach it; without them the page
// draws its own background, graticule and scale.
//
//go:embed web
var web embed.FS

// pageCSP lets the page load only its own files, open WebSockets, and draw
// OpenStreetMap tiles.
const pageCSP = "default-src 'self'; img-src 'self' data: https://tile.openstreetmap.org; " +
	"connect-src 'self' ws: wss:; script-src 'self'; style-src 'self'; base-uri 'none'; frame-ancestors 'none'"

// pageHandler serves the live map page and its assets.
func pageHandler() http.Handler {
	sub, err := fs.Sub(web, "web")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		// The page's URL may carry ?token=: tile requests get the origin only.
		h.Set("Referrer-Policy", "strict-origin")
		// Small files that change with each release: revalidate each time.
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
