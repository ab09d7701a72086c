package main

import (
	"net"

	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/livefeed"
)

// wireMapEditing lets the live map of `drover all` save geofences through
// the API of the same process (docs/live-api.md, "Drawing and editing
// fences"): the livefeed's -map-api names the API on loopback and the API's
// -cors-origins lists the livefeed's origins on loopback. An operator who
// set either flag chose for themselves: nothing is changed. Nor when a port
// is 0 (no origin is known before the start).
func wireMapEditing(lf *livefeed.Config, ac *api.Config) {
	if lf.Map.API != "" || len(ac.CORSOrigins) > 0 {
		return
	}
	apiHost, apiPort, err := net.SplitHostPort(ac.Listen)
	if err != nil || apiPort == "0" {
		return
	}
	lfHost, lfPort, err := net.SplitHostPort(lf.Listen)
	if err != nil || lfPort == "0" {
		return
	}
	scheme := func(tls bool) string {
		if tls {
			return "https://"
		}
		return "http://"
	}
	lf.Map.API = scheme(ac.TLSCert != "") + net.JoinHostPort(loopbackHost(apiHost), apiPort)
	lfScheme := scheme(lf.TLS.CertFile != "")
	switch h := loopbackHost(lfHost); {
	case h == "127.0.0.1" || h == "localhost":
		// The map is opened at either name.
		ac.CORSOrigins = []string{lfScheme + "127.0.0.1:" + lfPort, lfScheme + "localhost:" + lfPort}
	default:
		ac.CORSOrigins = []string{lfScheme + net.JoinHostPort(h, lfPort)}
	}
}
