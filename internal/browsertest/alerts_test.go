package browsertest

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/publane"
	"github.com/drover-telemetry/drover/livefeed"
)

// engineLane is an alert lane opened as the alert engine opens its own
// (alerts/engine.go), publishing events as the engine does: each an
// eval.Event as JSON (alerts/outputs.go, laneOutput).
type engineLane struct {
	p  *publane.Publisher
	ep string
}

func newEngineLane(t testing.TB) *engineLane {
	t.Helper()
	sec, err := clusterlink.New(clusterlink.Config{Insecure: true}, clusterlink.RoleAlerts, "alerts-browsertest", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := func(n string) prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: n}) }
	cv := func(n, l string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: n}, []string{l})
	}
	p, addr, err := publane.Open(sec, clusterlink.LinkAlerts, "tcp://127.0.0.1:0", "alerts-browsertest", publane.Config{
		Topic: livefeed.AlertTopic, Buffer: 64, BufferBytes: 1 << 20, Stall: 10 * time.Second, CloseGrace: time.Second,
		MaxSubscribers: 8, MaxLabels: 8, Name: "browsertest alert lane"},
		publane.Metrics{Published: c("p"), Dropped: c("d"), Sent: cv("s", "subscriber"), SubDropped: cv("sd", "subscriber"),
			Subscribers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"}), Disconnects: cv("x", "reason")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); sec.Close() })
	return &engineLane{p: p, ep: addr}
}

func (l *engineLane) publish(t testing.TB, ev eval.Event) {
	t.Helper()
	b, err := json.Marshal(&ev)
	if err != nil {
		t.Fatal(err)
	}
	l.p.Offer(b)
}

// TestBrowserMapAlertsFromTheEngine: the alert engine's events, as it
// publishes them on its alert lane, reach the live map through a real
// livefeed and show as the operator expects: an overheat raised rings the
// vehicle in its severity's colour and pops a toast with the engine's
// message; cleared, the ring goes and the toast says so; a harsh braking
// (a single event) pops a toast already cleared and leaves no ring; a
// late alert from a backfilled stretch marks the vehicle without a toast.
func TestBrowserMapAlertsFromTheEngine(t *testing.T) {
	noLeaks(t)
	lane := newEngineLane(t)
	pub := newPublisher(t, "r0")
	rf := startFeedWith(t, func(c *livefeed.Config) { c.Alerts = []string{lane.ep} }, pub)
	now := time.Now().UnixMilli()
	pub.publish(rec("truck-1", "acme", 1, now, -26.20, 28.00), rec("truck-2", "acme", 1, now, -26.30, 28.20))
	rf.waitVehicles(t, 2)
	b := newBrowser(t, 90*time.Second, 1024, 700)
	b.open(rf.url("http") + "/?token=" + devToken + "&lat=-26.25&lon=28.1&zoom=10")
	b.waitState("both trucks on the map", func(s mapState) bool { return s.Connected && len(s.Vehicles) == 2 })
	deadline := time.Now().Add(10 * time.Second)
	for _, n := lane.p.Subscribers(); n == 0; _, n = lane.p.Subscribers() {
		if time.Now().After(deadline) {
			t.Fatal("the livefeed did not subscribe to the alert lane")
		}
		time.Sleep(50 * time.Millisecond)
	}

	start := now - 40_000
	heat := eval.Alert{ID: eval.AlertID(eval.TypeOverheat, "", "truck-1", start), Type: eval.TypeOverheat, Rule: "default",
		Device: "truck-1", Fleet: "acme", Class: "truck", Severity: eval.Critical, State: eval.StateActive,
		StartMs: start, RaisedMs: now, Value: 112, Peak: 114, Threshold: 105, Unit: "°C",
		Lat: -26.2, Lon: 28, HasPos: true, FirstSeq: 1, LastSeq: 9, Message: "truck-1: engine at 114 °C (over 105 °C for 40 s)"}
	lane.publish(t, eval.Event{Kind: eval.EventRaised, AtMs: now, DetectedMs: now, Alert: heat})
	s := b.waitState("truck-1 ringed critical, a toast", func(s mapState) bool {
		v, _ := s.vehicle("truck-1")
		return v.Alert == "critical" && len(s.Alerts.Toasts) == 1
	})
	if tt := s.Alerts.Toasts[0]; tt.ID != heat.ID || tt.Device != "truck-1" || tt.Severity != "critical" || tt.Title != heat.Message || tt.Cleared {
		t.Errorf("toast %+v: want the engine's alert %s, its message as the title", tt, heat.ID)
	}

	// Cleared: the ring goes, the toast says so.
	done := heat
	done.State, done.EndMs, done.DurationMs = eval.StateCleared, now+5000, 45_000
	lane.publish(t, eval.Event{Kind: eval.EventCleared, AtMs: done.EndMs, DetectedMs: now, Alert: done})
	b.waitState("truck-1's ring gone, its toast cleared", func(s mapState) bool {
		v, _ := s.vehicle("truck-1")
		return v.Alert == "" && len(s.Alerts.Toasts) == 1 && s.Alerts.Toasts[0].Cleared
	})

	// A harsh braking: over as it happens.
	brake := eval.Alert{ID: eval.AlertID(eval.TypeHarshBrake, "", "truck-2", now), Type: eval.TypeHarshBrake, Rule: "default",
		Device: "truck-2", Fleet: "acme", Severity: eval.Minor, State: eval.StateCleared, StartMs: now, RaisedMs: now,
		Value: 6.1, Peak: 6.1, Threshold: 4.5, Unit: "m/s²", Message: "truck-2: harsh braking, 6.1 m/s²"}
	lane.publish(t, eval.Event{Kind: eval.EventInstant, AtMs: now, DetectedMs: now, Alert: brake})
	s = b.waitState("truck-2's harsh braking toasted, cleared", func(s mapState) bool {
		for _, tt := range s.Alerts.Toasts {
			if tt.ID == brake.ID {
				return tt.Cleared
			}
		}
		return false
	})
	if v, _ := s.vehicle("truck-2"); v.Alert != "" {
		t.Errorf("truck-2 marked %q by a single event", v.Alert)
	}

	// A late depot visit's dwell, raised from a backfilled stretch: the
	// marker shows it, no toast pops.
	dwell := eval.Alert{ID: eval.AlertID(eval.TypeGeofenceDwell, "depot", "truck-2", now-3_600_000), Type: eval.TypeGeofenceDwell,
		Rule: "default", Fence: "depot", FenceName: "Depot", Device: "truck-2", Fleet: "acme", Severity: eval.Major,
		State: eval.StateActive, StartMs: now - 3_600_000, RaisedMs: now - 60_000, Late: true, Message: "truck-2: in Depot for 58 min"}
	lane.publish(t, eval.Event{Kind: eval.EventRaised, AtMs: now - 60_000, DetectedMs: now, Alert: dwell})
	s = b.waitState("truck-2 marked major", func(s mapState) bool { v, _ := s.vehicle("truck-2"); return v.Alert == "major" })
	for _, tt := range s.Alerts.Toasts {
		if tt.ID == dwell.ID {
			t.Errorf("a late alert popped a toast: %+v", tt)
		}
	}
	if s.Alerts.Invalid != 0 {
		t.Errorf("the page refused %d of the engine's alerts", s.Alerts.Invalid)
	}
}
