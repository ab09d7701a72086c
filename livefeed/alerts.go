package livefeed

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/telemetry"
)

// AlertTopic is the first frame of every message of an alert engine's
// alert lane; the second is one alert event, JSON (docs/live-api.md,
// "Alerts").
const AlertTopic = "alert."

// maxQueuedAlerts bounds the alert messages waiting for one client; past
// it the oldest is dropped (counted): a client that does not keep up with
// alerts has far worse problems than a lost toast, and the API has the
// list.
const maxQueuedAlerts = 256

// maxActiveAlerts bounds the active alerts the livefeed remembers (for
// the marker state of vehicles a client subscribes to later).
const maxActiveAlerts = 100_000

// alertEvent is what the livefeed reads of an engine's alert event
// (package alerts/eval, Event).
type alertEvent struct {
	Kind  string `json:"event"`
	AtMs  int64  `json:"at_ms"`
	Alert struct {
		ID         string   `json:"id"`
		Type       string   `json:"type"`
		Rule       string   `json:"rule"`
		Fence      string   `json:"fence"`
		FenceName  string   `json:"fence_name"`
		Device     string   `json:"device"`
		Fleet      string   `json:"fleet"`
		Class      string   `json:"class"`
		Severity   string   `json:"severity"`
		State      string   `json:"state"`
		StartMs    int64    `json:"start_ms"`
		EndMs      int64    `json:"end_ms"`
		DurationMs int64    `json:"duration_ms"`
		Value      *float64 `json:"value"`
		Peak       *float64 `json:"peak"`
		Threshold  float64  `json:"threshold"`
		Unit       string   `json:"unit"`
		Lat        float64  `json:"lat"`
		Lon        float64  `json:"lon"`
		HasPos     bool     `json:"has_position"`
		Late       bool     `json:"late"`
		Message    string   `json:"message"`
	} `json:"alert"`
}

// clientAlert is an alert as clients get it (docs/live-api.md, "alert"):
// the shape the live map reads.
type clientAlert struct {
	ID           string   `json:"id"`
	Rule         string   `json:"rule"`
	RuleID       string   `json:"rule_id,omitempty"`
	Title        string   `json:"title"`
	Severity     string   `json:"severity"`
	State        string   `json:"state"`
	Event        string   `json:"event"`
	Acknowledged bool     `json:"acknowledged"`
	Late         bool     `json:"late"`
	Device       string   `json:"device"`
	Fleet        string   `json:"fleet,omitempty"`
	Class        string   `json:"class,omitempty"`
	StartMs      int64    `json:"start_ms"`
	EndMs        *int64   `json:"end_ms"`
	DurationMs   *int64   `json:"duration_ms,omitempty"`
	AtMs         int64    `json:"at_ms"`
	Lat          *float64 `json:"lat,omitempty"`
	Lon          *float64 `json:"lon,omitempty"`
	Value        *float64 `json:"value"`
	Peak         *float64 `json:"peak"`
	Threshold    float64  `json:"threshold,omitempty"`
	Unit         string   `json:"unit,omitempty"`
	Geofence     string   `json:"geofence,omitempty"`
	GeofenceName string   `json:"geofence_name,omitempty"`
}

// clientAlerts turns an engine event into what clients get: one alert,
// or, for a single event (a harsh braking, a fence entry: over as it
// happens), the alert active and then cleared, so that a screen shows it
// and lets it go.
func clientAlerts(ev *alertEvent) []clientAlert {
	a := &ev.Alert
	c := clientAlert{ID: a.ID, Rule: a.Type, RuleID: a.Rule, Title: a.Message, Severity: a.Severity, State: a.State,
		Event: ev.Kind, Late: a.Late, Device: a.Device, Fleet: a.Fleet, Class: a.Class, StartMs: a.StartMs, AtMs: ev.AtMs,
		Value: a.Value, Peak: a.Peak, Threshold: a.Threshold, Unit: a.Unit, Geofence: a.Fence, GeofenceName: a.FenceName}
	if a.HasPos {
		lat, lon := a.Lat, a.Lon
		c.Lat, c.Lon = &lat, &lon
	}
	if c.State == "cleared" && ev.Kind != "instant" {
		end, dur := a.EndMs, a.DurationMs
		c.EndMs, c.DurationMs = &end, &dur
	}
	if ev.Kind != "instant" {
		return []clientAlert{c}
	}
	active := c
	active.State = "active"
	end := a.StartMs
	c.EndMs = &end
	return []clientAlert{active, c}
}

// activeAlerts are the alerts under way per vehicle, as the lane told
// them: a client that subscribes gets those of its vehicles, so that a
// marker shows its state without waiting for the next alert.
type activeAlerts struct {
	mu    sync.Mutex
	byDev map[string]map[string]clientAlert // device → alert id → the alert as raised
	n     int
}

func (a *activeAlerts) apply(ev *alertEvent, ca clientAlert) {
	a.mu.Lock()
	defer a.mu.Unlock()
	dev, id := ev.Alert.Device, ev.Alert.ID
	switch ev.Kind {
	case "raised":
		m := a.byDev[dev]
		if m == nil {
			m = map[string]clientAlert{}
			a.byDev[dev] = m
		}
		if _, ok := m[id]; !ok {
			if a.n >= maxActiveAlerts {
				return
			}
			a.n++
		}
		m[id] = ca
	case "cleared":
		if m := a.byDev[dev]; m != nil {
			if _, ok := m[id]; ok {
				delete(m, id)
				a.n--
			}
			if len(m) == 0 {
				delete(a.byDev, dev)
			}
		}
	}
}

// of returns the active alerts of the vehicles that match.
func (a *activeAlerts) of(match func(dev string) bool) []clientAlert {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []clientAlert
	for dev, m := range a.byDev {
		if !match(dev) {
			continue
		}
		for _, ca := range m {
			out = append(out, ca)
		}
	}
	return out
}

// subscribeAlerts subscribes to one alert engine's alert lane and hands
// each event to the clients that follow its vehicle, until ctx ends.
func (f *Feed) subscribeAlerts(ctx context.Context, i int, ep string) {
	log := f.logger.With("alerts_endpoint", ep)
	sock, closeSock, ok := f.dialSubscriber(ctx, log, fmt.Sprintf("%s.alerts.%d", f.cfg.ID, i), AlertTopic, clusterlink.LinkAlerts, ep, "alert engine")
	if !ok {
		return
	}
	defer closeSock()
	log.Info("livefeed: subscribed to an alert lane")
	for {
		msg, err := sock.Recv()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			continue // zmq4 reconnects
		}
		if len(msg.Frames) != 2 || string(msg.Frames[0]) != AlertTopic {
			f.m.messagesInvalid.Inc()
			continue
		}
		var ev alertEvent
		if err := json.Unmarshal(msg.Frames[1], &ev); err != nil || ev.Alert.Device == "" || ev.Alert.ID == "" {
			f.m.messagesInvalid.Inc()
			continue
		}
		f.m.alertsReceived.Inc()
		f.dispatchAlert(&ev)
	}
}

// alertMsg is a message to clients: {"type":"alert","id":...,"alerts":[...]}
// (id: the subscription's, for the alerts under way sent after its
// snapshot).
type alertMsg struct {
	Type   string        `json:"type"`
	ID     string        `json:"id,omitempty"`
	Alerts []clientAlert `json:"alerts"`
}

// dispatchAlert offers an alert to every client whose scope and
// subscription include its vehicle: the vehicle as the livefeed knows it,
// or, when it does not, as the alert describes it.
func (f *Feed) dispatchAlert(ev *alertEvent) {
	cas := clientAlerts(ev)
	f.alerts.apply(ev, cas[0])
	v := f.store.get(ev.Alert.Device)
	if v == nil {
		v = &vehicle{id: ev.Alert.Device, fleet: ev.Alert.Fleet}
		if ev.Alert.HasPos {
			v.latE7, v.lonE7 = telemetry.DegreesToE7(ev.Alert.Lat), telemetry.DegreesToE7(ev.Alert.Lon)
			v.has |= hasPos
		}
	}
	msg, err := json.Marshal(alertMsg{Type: "alert", Alerts: cas})
	if err != nil {
		return
	}
	f.hubMu.RLock()
	defer f.hubMu.RUnlock()
	for c := range f.byFleet[v.fleet] {
		c.offerAlert(msg, v)
	}
	for c := range f.all {
		c.offerAlert(msg, v)
	}
}

// offerAlert queues an alert message for the client if it follows v.
func (c *client) offerAlert(msg []byte, v *vehicle) {
	if s := c.streamOf; s != nil {
		// A stream's members are out of the hub: they get the alert
		// themselves (the caller holds hubMu, which guards members).
		for m := range s.members {
			m.offerAlert(msg, v)
		}
		return
	}
	c.mu.Lock()
	if c.stopping || c.sub == nil || !c.who.scope.allows(v.fleet) || !c.sub.match(v) {
		c.mu.Unlock()
		return
	}
	dropped := false
	if len(c.alerts) >= maxQueuedAlerts {
		c.alerts = c.alerts[1:]
		dropped = true
	}
	c.alerts = append(c.alerts, msg)
	c.mu.Unlock()
	if dropped {
		c.f.m.alertsDropped.Inc()
	}
	c.signal()
}

// activeAlertsMsg is what a client gets after its snapshot: the alerts
// under way for the vehicles of its subscription.
func (f *Feed) activeAlertsMsg(c *client, sub *subscription, id string) []byte {
	list := f.alerts.of(func(dev string) bool {
		v := f.store.get(dev)
		return v != nil && c.who.scope.allows(v.fleet) && sub.match(v)
	})
	if len(list) == 0 {
		return nil
	}
	b, _ := json.Marshal(alertMsg{Type: "alert", ID: id, Alerts: list})
	return b
}
