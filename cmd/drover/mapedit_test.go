package main

import (
	"slices"
	"testing"

	"github.com/drover-telemetry/drover/api"
	"github.com/drover-telemetry/drover/livefeed"
)

// TestWireMapEditing: in `drover all` the live map saves fences through the
// API of the same process — the livefeed names the API on loopback and the
// API allows the map's origins — unless the operator set either flag.
func TestWireMapEditing(t *testing.T) {
	lf, ac := livefeed.DefaultConfig(), api.DefaultConfig()
	lf.Listen, ac.Listen = ":8081", "127.0.0.1:8090"
	wireMapEditing(&lf, &ac)
	if lf.Map.API != "http://127.0.0.1:8090" ||
		!slices.Equal(ac.CORSOrigins, []string{"http://127.0.0.1:8081", "http://localhost:8081"}) {
		t.Errorf("map-api %q, cors-origins %q", lf.Map.API, ac.CORSOrigins)
	}
	if err := lf.Map.Validate(); err != nil {
		t.Error(err)
	}
	if err := ac.Validate(); err != nil {
		t.Error(err)
	}

	lf, ac = livefeed.DefaultConfig(), api.DefaultConfig()
	ac.CORSOrigins = []string{"https://ops.example.com"}
	wireMapEditing(&lf, &ac)
	if lf.Map.API != "" || len(ac.CORSOrigins) != 1 {
		t.Errorf("the operator's -api.cors-origins overridden: map-api %q, cors-origins %q", lf.Map.API, ac.CORSOrigins)
	}
}
