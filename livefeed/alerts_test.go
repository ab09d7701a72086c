package livefeed

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/publane"
)

// alertLane is an alert engine's alert lane, as the engine opens it.
type alertLane struct {
	p  *publane.Publisher
	ep string
}

func newAlertLane(t testing.TB) *alertLane {
	t.Helper()
	sec, err := clusterlink.New(testLinks, clusterlink.RoleAlerts, "alerts-test", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := func(n string) prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: n}) }
	cv := func(n, l string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: n}, []string{l})
	}
	p, addr, err := publane.Open(sec, clusterlink.LinkAlerts, "tcp://127.0.0.1:0", "alerts-test", publane.Config{
		Topic: AlertTopic, Buffer: 64, BufferBytes: 1 << 20, Stall: 10 * time.Second, CloseGrace: time.Second,
		MaxSubscribers: 8, MaxLabels: 8, Name: "test alert lane"},
		publane.Metrics{Published: c("p"), Dropped: c("d"), Sent: cv("s", "subscriber"), SubDropped: cv("sd", "subscriber"),
			Subscribers: prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"}), Disconnects: cv("x", "reason")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close(); sec.Close() })
	return &alertLane{p: p, ep: addr}
}

func (l *alertLane) publish(t testing.TB, event, id, device, fleet string, lat, lon float64) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"event": event, "at_ms": time.Now().UnixMilli(), "alert": map[string]any{
		"id": id, "type": "geofence_inside", "rule": "nogo", "device": device, "fleet": fleet, "severity": "critical",
		"state": map[bool]string{true: "cleared", false: "active"}[event == "cleared"],
		"lat":   lat, "lon": lon, "has_position": true, "message": device + " inside a no-go zone"}})
	if err != nil {
		t.Fatal(err)
	}
	l.p.Offer(b)
}

// mapAlert is what the live map reads of an alert.
type mapAlert struct {
	ID, Rule, Title, Severity, State, Device, Fleet string
	Late                                            bool
}

// alertsUntil reads messages until an alert of id comes (it, and the
// alert ids of every alert message seen on the way).
func alertsUntil(t testing.TB, c *testClient, id string) (mapAlert, []string) {
	t.Helper()
	var seen []string
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		m := c.next(10 * time.Second)
		if m.Type != "alert" {
			continue
		}
		for _, raw := range m.Alerts {
			var a mapAlert
			if err := json.Unmarshal(raw, &a); err != nil {
				t.Fatalf("alert message: %v: %s", err, raw)
			}
			seen = append(seen, a.ID)
			if a.ID == id {
				return a, seen
			}
		}
	}
	t.Fatalf("no alert %s within 10 s (saw %v)", id, seen)
	return mapAlert{}, nil
}

// TestAlertsFollowTheSubscription: alert events from an alert lane reach
// the clients whose token and subscription include the vehicle, and no
// other; a client that subscribes later is told the alerts under way for
// its vehicles.
func TestAlertsFollowTheSubscription(t *testing.T) {
	noLeaks(t)
	pub := newPublisher(t, "router-a")
	lane := newAlertLane(t)
	clients := writeClients(t, t.TempDir(), map[string][]string{"acme-token": {"acme"}})
	rf := startFeed(t, func(c *Config) {
		c.Alerts = []string{lane.ep}
		c.Clients = clients
	}, pub)
	pub.publish(rec("truck-1", "acme", 1, time.Now().UnixMilli(), -26.2, 28.04), rec("bus-1", "beta", 1, time.Now().UnixMilli(), -33.9, 18.4))
	rf.waitVehicles(t, 2)

	acme := dial(t, rf, "acme-token")
	acme.subscribe(subscribeMsg{})
	onlyBus := dial(t, rf, devToken)
	onlyBus.subscribe(subscribeMsg{Devices: []string{"bus-1"}})
	waitFor(t, 10*time.Second, "the alert lane subscriber", func() bool { _, n := lane.p.Subscribers(); return n == 1 })

	// An alert the livefeed receives before its subscription reaches the
	// lane is lost (the lane is best effort): publish until one arrives.
	waitFor(t, 10*time.Second, "an alert through", func() bool {
		lane.publish(t, "instant", "al_probe", "bus-1", "beta", -33.9, 18.4)
		time.Sleep(20 * time.Millisecond)
		return testutil.ToFloat64(rf.m.alertsReceived) > 0
	})
	lane.publish(t, "raised", "al_truck", "truck-1", "acme", -26.2, 28.04)
	lane.publish(t, "raised", "al_bus", "bus-1", "beta", -33.9, 18.4)

	if _, seen := alertsUntil(t, acme, "al_truck"); len(seen) != 1 {
		t.Errorf("the acme client saw %v before its own alert: another fleet's", seen)
	}
	a, seen := alertsUntil(t, onlyBus, "al_bus")
	for _, id := range seen {
		if id == "al_truck" {
			t.Errorf("a client following bus-1 got truck-1's alert")
		}
	}
	// What the live map needs (livefeed/map/src/alerts.js, valid()).
	if a.Rule != "geofence_inside" || a.Severity != "critical" || a.State != "active" || a.Device != "bus-1" || a.Title == "" {
		t.Errorf("alert %+v: not what the map reads", a)
	}

	// A later subscriber gets the alerts under way for its vehicles.
	late := dial(t, rf, "acme-token")
	snap := late.subscribe(subscribeMsg{})
	m := late.next(5 * time.Second)
	if m.Type != "alert" || m.ID != snap.ID || len(m.Alerts) != 1 {
		t.Fatalf("after the snapshot: %+v, want the one active alert of acme", m)
	}
	var active mapAlert
	_ = json.Unmarshal(m.Alerts[0], &active)
	if active.ID != "al_truck" || active.State != "active" {
		t.Errorf("active alert %+v, want al_truck", active)
	}
	// Cleared: no longer under way.
	lane.publish(t, "cleared", "al_truck", "truck-1", "acme", -26.2, 28.04)
	alertsUntil(t, acme, "al_truck")
	again := dial(t, rf, "acme-token")
	again.subscribe(subscribeMsg{})
	pub.publish(rec("truck-1", "acme", 2, time.Now().UnixMilli(), -26.2, 28.04))
	if m := again.next(5 * time.Second); m.Type == "alert" {
		t.Errorf("a cleared alert is still listed as under way: %+v", m)
	}
}
