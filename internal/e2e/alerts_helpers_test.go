package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/telemetry"
)

// alertTrip is the scripted trip of the alert tests, in a truck: it
// speeds, brakes hard, drives into a depot, idles there with the engine
// overheating, drives out, goes silent and comes back. Each device of the
// scripted fleet drives it; tripRules make every one of these an alert
// within seconds (the production defaults wait minutes).
func alertTrip() *sim.Script {
	brake, off := 5.0, false
	return &sim.Script{Start: [2]float64{-26.2, 28.0}, Class: "truck", Legs: []sim.Leg{
		{Do: sim.LegDrive, Seconds: 8, HeadingDeg: 90, SpeedKmh: 40, AccelKmhS: 5},
		{Do: sim.LegDrive, Seconds: 10, HeadingDeg: 90, SpeedKmh: 110, AccelKmhS: 8}, // over the truck's 80 (+5)
		{Do: sim.LegDrive, Seconds: 8, HeadingDeg: 90, SpeedKmh: 40, AccelKmhS: 8, BrakeTo: &brake},
		{Do: sim.LegStop, Seconds: 16, EngineTempC: 114}, // idling, overheating, in the depot
		{Do: sim.LegDrive, Seconds: 18, HeadingDeg: 90, SpeedKmh: 50, AccelKmhS: 5},
		{Do: sim.LegSilent, Seconds: 12},
		{Do: sim.LegStop, Seconds: 2, Ignition: &off},
	}}
}

// tripDepot is the depot of alertTrip: where the truck stops, 300 m east
// to west.
func tripDepot() json.RawMessage {
	sc := alertTrip()
	readings := sim.ScriptReadings(sc, 2, time.Unix(0, 0))
	// The stop: the position of the first reading of the stop leg.
	stopAt := int((sc.Legs[0].Seconds+sc.Legs[1].Seconds+sc.Legs[2].Seconds)*2) + 1
	lat, lon, _ := readings[stopAt].Position()
	d := 150.0
	dLat := d / 111_320
	dLon := d / (111_320 * math.Cos(lat*math.Pi/180))
	return json.RawMessage(fmt.Sprintf(`{"type":"Polygon","coordinates":[[[%.7f,%.7f],[%.7f,%.7f],[%.7f,%.7f],[%.7f,%.7f],[%.7f,%.7f]]]}`,
		lon-dLon, lat-dLat, lon+dLon, lat-dLat, lon+dLon, lat+dLat, lon-dLon, lat+dLat, lon-dLon, lat-dLat))
}

// tripRules makes the trip's events alerts within seconds, and sends them
// to a webhook.
func tripRules(hookURL, secret string) *eval.RuleSet {
	return &eval.RuleSet{
		Rules: []eval.Rule{
			{ID: "fast-overspeed", Kind: eval.KindOverspeed, Settings: json.RawMessage(`{"min_duration":"3s","clear_after":"2s"}`)},
			{ID: "fast-overheat", Kind: eval.KindOverheat, Settings: json.RawMessage(`{"min_duration":"4s","clear_after":"2s"}`)},
			{ID: "fast-idling", Kind: eval.KindIdling, Settings: json.RawMessage(`{"after":"8s"}`)},
			{ID: "fast-silence", Kind: eval.KindSilence, Settings: json.RawMessage(`{"after":"8s"}`)},
			{ID: "fast-fences", Kind: eval.KindGeofence, Settings: json.RawMessage(`{"margin_m":10,"confirm_fixes":2,"confirm_time":"1s"}`)},
		},
		Geofences: []eval.Fence{{ID: "depot", Name: "Depot", Geometry: tripDepot(), Events: []string{"enter", "exit", "dwell"},
			Dwell: eval.Duration(10 * time.Second)}},
		Webhooks: []eval.Webhook{{ID: "control-room", URL: hookURL, Secret: secret}},
	}
}

// tripExpected is the alert events one device driving alertTrip raises:
// "type:event" strings, sorted.
var tripExpected = []string{
	"engine_overheat:cleared", "engine_overheat:raised",
	"geofence_dwell:cleared", "geofence_dwell:raised", "geofence_enter:instant", "geofence_exit:instant",
	"harsh_braking:instant",
	"idling:cleared", "idling:raised",
	"overspeed:cleared", "overspeed:raised",
	"silence:cleared", "silence:raised",
}

// kindsOf returns each device's events as sorted "type:event" strings.
func kindsOf(events []eval.Event) map[string][]string {
	out := map[string][]string{}
	for _, ev := range events {
		out[ev.Alert.Device] = append(out[ev.Alert.Device], ev.Alert.Type+":"+ev.Kind)
	}
	for _, k := range out {
		sort.Strings(k)
	}
	return out
}

// TestAlertTripOffline: the scripted trip, evaluated offline with its
// rules, raises exactly tripExpected. It is the reference the end-to-end
// tests compare the real pipeline with.
func TestAlertTripOffline(t *testing.T) {
	e, err := eval.New(tripRules("https://example.com/hook", "0123456789abcdef"), eval.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	var events []eval.Event
	start := time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)
	for _, r := range sim.ScriptReadings(alertTrip(), 2, start) {
		rec := &telemetry.EnrichedRecord{Record: &telemetry.Record{DeviceId: "truck-1", ReceivedMs: r.GetTimeMs() + 100, Reading: r},
			Enrichment: &telemetry.Enrichment{Fleet: "acme", VehicleClass: "truck"}}
		e.Process(rec, func(ev *eval.Event) { events = append(events, *ev) })
		e.Tick(r.GetTimeMs()+150, func(ev *eval.Event) { events = append(events, *ev) })
	}
	got := kindsOf(events)["truck-1"]
	if !slices.Equal(got, tripExpected) {
		var b strings.Builder
		for _, ev := range events {
			fmt.Fprintf(&b, "  %s %s at %v: %s\n", ev.Alert.Type, ev.Kind, time.UnixMilli(ev.AtMs).Sub(start), ev.Alert.Message)
		}
		t.Fatalf("the trip raises\n %v\nwant\n %v\n%s", got, tripExpected, b.String())
	}
}
