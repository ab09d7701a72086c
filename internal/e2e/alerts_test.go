package e2e

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/parquet-go/parquet-go"

	"github.com/drover-telemetry/drover/alerts"
	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/internal/testenv"
	"github.com/drover-telemetry/drover/telemetry"
)

// alertPipeline is the alert path as real processes: a frontend, a router
// with the engine as its durable subscriber, the alert engine (drover
// alerts) writing to a real InfluxDB, the lake's alerts table and a
// webhook receiver (in this process), and a livefeed on the router's live
// lane and the engine's alert lane. Two fleets run in this process: the
// scripted trucks, and a few "pacers" on the vehicle model that keep
// readings flowing (the engine judges silence against the newest reading
// it has seen from anyone).
type alertPipeline struct {
	t         *testing.T
	ctx       context.Context
	dir       string
	inf       *testenv.Influx
	lakeDir   string
	alertsDir string
	liveURL   string
	devToken  string
	hook      *hookReceiver
	rt, fe    *proc
	engine    *proc
	lf        *proc
	trip      sim.Config
	pacers    sim.Config
}

func startAlertPipeline(t *testing.T, ctx context.Context, trucks int, engineArgs ...string) *alertPipeline {
	t.Helper()
	p := &alertPipeline{t: t, ctx: ctx, dir: t.TempDir(), devToken: "e2e-alerts-dev-token-01234"}
	p.inf = testenv.InfluxD(t)
	p.lakeDir, p.alertsDir = filepath.Join(p.dir, "lake-alerts"), filepath.Join(p.dir, "alerts")
	p.hook = startHookReceiver(t, "e2e-webhook-secret-0123456789")

	p.trip = sim.DefaultConfig()
	p.trip.Devices, p.trip.IDPrefix, p.trip.TokenSeed = trucks, "trip-", "alerts"
	// Each truck takes the trip's readings and stops, parked with the
	// ignition off (no silence for that: after_parked is 0).
	p.trip.Script, p.trip.Rate = alertTrip(), 2
	p.trip.Readings = len(sim.ScriptReadings(alertTrip(), 2, time.Unix(0, 0)))
	p.trip.BackoffMin, p.trip.BackoffMax, p.trip.AckTimeout = 50*time.Millisecond, time.Second, 5*time.Second
	p.pacers = sim.DefaultConfig()
	p.pacers.Devices, p.pacers.IDPrefix, p.pacers.TokenSeed, p.pacers.Rate = 3, "pacer-", "alerts", 2
	p.pacers.BackoffMin, p.pacers.BackoffMax = 50*time.Millisecond, time.Second
	regPath := filepath.Join(p.dir, "registry.json")
	if err := registry.Write(regPath, append(sim.Devices(p.trip), sim.Devices(p.pacers)...)); err != nil {
		t.Fatal(err)
	}
	rulesPath := filepath.Join(p.dir, "rules.json")
	b, _ := json.Marshal(tripRules(p.hook.srv.URL, p.hook.secret))
	if err := os.WriteFile(rulesPath, b, 0o600); err != nil {
		t.Fatal(err)
	}

	routerAddr, frontAddr, storeAddr, liveAddr, alertAddr, lfAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	p.rt = newProc(t, "router", "router", "-id", uid("router-1"), "-listen", "tcp://"+routerAddr,
		"-live-pub", "tcp://"+liveAddr, "-store-listen", "tcp://"+storeAddr,
		"-queue-dir", filepath.Join(p.dir, "router"), "-registry", regPath,
		"-subscribers", uid("alerts"), "-fixed-subscribers")
	p.fe = newProc(t, "frontend", "frontend", "-id", uid("frontend-1"), "-listen", frontAddr, "-routers", "tcp://"+routerAddr,
		"-queue-dir", filepath.Join(p.dir, "frontend"), "-registry", regPath, "-rate", "1000", "-rate-burst", "1000")
	p.engine = newProc(t, "alerts", "alerts", "-name", uid("alerts"), "-routers", "tcp://"+storeAddr,
		"-data-dir", p.alertsDir, "-rules", rulesPath, "-alert-pub", "tcp://"+alertAddr,
		"-influx-url", p.inf.URL, "-influx-database", p.inf.Database, "-influx-timeout", "5s",
		"-lake-dir", p.lakeDir, "-lake-flush", "500ms",
		"-tick", "250ms", "-snapshot-interval", "1s", "-webhook-max-backoff", "500ms")
	p.engine.args = append(p.engine.args, engineArgs...)
	p.lf = newProc(t, "livefeed", "livefeed", "-id", uid("livefeed-1"), "-listen", lfAddr,
		"-routers", "tcp://"+liveAddr, "-alerts", "tcp://"+alertAddr, "-dev-token-file", secretFile(t, p.devToken))
	p.liveURL = "ws://" + lfAddr + "/v1/live"
	p.rt.start(ctx)
	p.engine.start(ctx)
	p.lf.start(ctx)
	p.fe.start(ctx)
	p.trip.URLs = []string{"ws://" + frontAddr}
	p.pacers.URLs = p.trip.URLs
	return p
}

// runFleets runs the pacers and the scripted trucks, calling during while
// the trucks drive, and returns when the trucks are done.
func (p *alertPipeline) runFleets(during func(ctx context.Context)) {
	t := p.t
	pctx, stopPacers := context.WithCancel(p.ctx)
	t.Cleanup(stopPacers)
	pacers, err := sim.New(p.pacers, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = pacers.Run(pctx) }()
	trucks, err := sim.New(p.trip, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- trucks.Run(p.ctx) }()
	if during != nil {
		during(p.ctx)
	}
	if err := <-done; err != nil {
		t.Fatalf("scripted fleet: %v", err)
	}
	st := trucks.Stats()
	t.Logf("scripted fleet: %d readings acked of %d taken", st.Acked, st.Generated)
	if st.OutboxDrops > 0 {
		// The trip's readings would no longer be the script's.
		t.Errorf("scripted fleet: %d readings not taken (the simulator's outbox was full)", st.OutboxDrops)
	}
	// The pacers go on a little: the last silences are judged by the clock
	// against their readings.
	time.Sleep(3 * time.Second)
	stopPacers()
}

// trucksOnly keeps the events of the scripted trucks.
func trucksOnly(events []eval.Event) []eval.Event {
	var out []eval.Event
	for _, ev := range events {
		if strings.HasPrefix(ev.Alert.Device, "trip-") {
			out = append(out, ev)
		}
	}
	return out
}

// checkDeviceOrder fails unless each device's events, in the order they
// came (an event that comes again, after a kill, counted where it first
// came), are in the order they happened: the webhook's "in order per
// device". A cleared event is dated at the end of its episode, which the
// engine can only know a clear_after later, so it is left out.
func checkDeviceOrder(t *testing.T, what string, events []eval.Event) {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]int64{}
	for _, ev := range events {
		if seen[ev.ID()] {
			continue
		}
		seen[ev.ID()] = true
		if ev.Kind == eval.EventCleared {
			continue
		}
		if ev.AtMs < last[ev.Alert.Device] {
			t.Errorf("%s: %s's %s %s at %d came after an event at %d", what, ev.Alert.Device, ev.Alert.Type, ev.Kind, ev.AtMs, last[ev.Alert.Device])
		}
		last[ev.Alert.Device] = ev.AtMs
	}
}

// checkOffline compares the engine's events with an offline evaluation of
// the same readings: each truck took the script's readings at start +
// k/rate (internal/sim), so its start, found from the time of any of its
// alerts' first reading, gives its readings exactly, and the evaluator
// (alerts/eval) must find the same events, with the same ids — none
// missing, none more. Silences are left out: they are judged by the
// engine's clock on received times, which no offline run has (checkTrips
// counts them).
func checkOffline(t *testing.T, events []eval.Event, rs *eval.RuleSet) {
	t.Helper()
	ref := sim.ScriptReadings(alertTrip(), 2, time.UnixMilli(0))
	byDev := map[string][]eval.Event{}
	for _, ev := range events {
		if ev.Alert.Type != eval.TypeSilence {
			byDev[ev.Alert.Device] = append(byDev[ev.Alert.Device], ev)
		}
	}
	checked := 0
	for dev, evs := range byDev {
		// The start most of its alerts agree on (an alert whose first
		// reading is not its start would disagree, and lose the vote).
		votes := map[int64]int{}
		for _, ev := range evs {
			if s := ev.Alert.FirstSeq; s >= 1 && int(s) <= len(ref) {
				votes[ev.Alert.StartMs-ref[s-1].GetTimeMs()]++
			}
		}
		var start int64
		for s, n := range votes {
			if n > votes[start] {
				start = s
			}
		}
		e, err := eval.New(rs, eval.DefaultOptions())
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]bool{}
		emit := func(ev *eval.Event) {
			if ev.Alert.Type != eval.TypeSilence {
				want[ev.ID()] = true
			}
		}
		for _, r := range sim.ScriptReadings(alertTrip(), 2, time.UnixMilli(start)) {
			e.Process(&telemetry.EnrichedRecord{Record: &telemetry.Record{DeviceId: dev, ReceivedMs: r.GetTimeMs() + 100, Reading: r},
				Enrichment: &telemetry.Enrichment{Fleet: evs[0].Alert.Fleet, VehicleClass: evs[0].Alert.Class}}, emit)
			e.Tick(r.GetTimeMs()+150, emit)
		}
		got := map[string]bool{}
		for _, ev := range evs {
			got[ev.ID()] = true
			if !want[ev.ID()] {
				t.Errorf("offline: %s's %s %s (%s) is not in the offline evaluation", dev, ev.Alert.Type, ev.Kind, ev.ID())
			}
		}
		for id := range want {
			if !got[id] {
				t.Errorf("offline: %s's event %s of the offline evaluation is missing", dev, id)
			}
		}
		checked += len(want)
	}
	t.Logf("offline evaluation: %d events of %d trucks, each found by the engine once", checked, len(byDev))
}

// checkTrips fails unless every truck raised exactly tripExpected, each
// event once; it returns the event ids.
func checkTrips(t *testing.T, what string, events []eval.Event, trucks int) map[string]eval.Event {
	t.Helper()
	ids := map[string]eval.Event{}
	dups := 0
	for _, ev := range events {
		if _, ok := ids[ev.ID()]; ok {
			dups++
		}
		ids[ev.ID()] = ev
	}
	if dups > 0 {
		t.Errorf("%s: %d events came twice", what, dups)
	}
	var once []eval.Event
	for _, ev := range ids {
		once = append(once, ev)
	}
	byDev := kindsOf(once)
	if len(byDev) != trucks {
		t.Errorf("%s: alerts of %d trucks, want %d", what, len(byDev), trucks)
	}
	for dev, got := range byDev {
		if !slices.Equal(got, tripExpected) {
			t.Errorf("%s: %s raised\n %v\nwant\n %v", what, dev, got, tripExpected)
		}
	}
	return ids
}

// TestAlertsEndToEnd: trucks drive the scripted trip through real
// processes; exactly the alerts the script must raise, each once, arrive
// at the webhook receiver (signed), in InfluxDB, in the lake's alerts
// table and on the live feed — the same alerts, by id, everywhere. The
// silences are raised by the engine's clock while the trucks are silent.
func TestAlertsEndToEnd(t *testing.T) {
	const trucks = 4
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	p := startAlertPipeline(t, ctx, trucks)
	live := watchAlerts(ctx, t, p.liveURL, p.devToken)
	p.runFleets(nil)

	var webhook map[string]eval.Event
	waitFor(t, 60*time.Second, "every truck's alerts at the webhook receiver", func() bool {
		return len(trucksOnly(p.hook.events())) >= trucks*len(tripExpected)
	})
	time.Sleep(2 * time.Second) // anything more would be a duplicate
	webhook = checkTrips(t, "webhook", trucksOnly(p.hook.events()), trucks)
	checkDeviceOrder(t, "webhook", trucksOnly(p.hook.events()))
	checkOffline(t, trucksOnly(p.hook.events()), tripRules(p.hook.srv.URL, p.hook.secret))
	if p.hook.bad() > 0 {
		t.Errorf("%d webhook deliveries failed the signature check", p.hook.bad())
	}
	for _, ev := range webhook {
		if ev.Alert.Type == eval.TypeSilence && ev.Kind == eval.EventRaised && ev.DetectedMs >= ev.Alert.StartMs+11_000 {
			t.Errorf("%s's silence raised %v after its last reading: by the data when it came back, not by the clock",
				ev.Alert.Device, time.Duration(ev.DetectedMs-ev.Alert.StartMs)*time.Millisecond)
		}
	}

	// InfluxDB: one point per alert, in its final state.
	alertIDs := map[string]bool{}
	for _, ev := range webhook {
		alertIDs[ev.Alert.ID] = true
	}
	var rows [][]any
	waitFor(t, 30*time.Second, "every alert in InfluxDB", func() bool {
		rows = p.inf.Query(t, `SELECT "alert_id", "state", "event" FROM "alerts" WHERE "device" =~ /^trip-/`)
		return len(rows) >= len(alertIDs)
	})
	inInflux := map[string]bool{}
	for _, r := range rows {
		id, _ := r[1].(string)
		if inInflux[id] {
			t.Errorf("InfluxDB: alert %s twice", id)
		}
		inInflux[id] = true
		if state, _ := r[2].(string); state != eval.StateCleared {
			t.Errorf("InfluxDB: alert %s in state %q, want cleared (every alert of the trip ended)", id, state)
		}
	}
	for id := range alertIDs {
		if !inInflux[id] {
			t.Errorf("InfluxDB: alert %s missing", id)
		}
	}

	// The lake: every event, by event id.
	waitFor(t, 30*time.Second, "every event in the lake", func() bool {
		return len(trucksOnly(lakeEvents(t, p.lakeDir))) >= len(webhook)
	})
	lake := checkTrips(t, "lake", trucksOnly(lakeEvents(t, p.lakeDir)), trucks)
	for id := range webhook {
		if _, ok := lake[id]; !ok {
			t.Errorf("lake: event %s missing", id)
		}
	}

	// The live feed: every alert, active then cleared.
	waitFor(t, 10*time.Second, "every alert on the live feed", func() bool {
		got := live.ids()
		for id := range alertIDs {
			if !got[id] {
				return false
			}
		}
		return true
	})
}

// lakeEvents reads the events in the alerts table.
func lakeEvents(t *testing.T, dir string) []eval.Event {
	var out []eval.Event
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".parquet") {
			return nil
		}
		rows, err := parquet.ReadFile[alerts.LakeRow](path)
		if err != nil {
			t.Errorf("lake file %s: %v", path, err)
			return nil
		}
		for _, r := range rows {
			out = append(out, eval.Event{Kind: r.Event, AtMs: r.AtMs, Alert: eval.Alert{ID: r.AlertID, Type: r.Type, Device: r.DeviceID}})
		}
		return nil
	})
	return out
}

// TestAlertsKill9: the alert engine is killed with SIGKILL three times and
// the router twice while scripted trucks drive; at the end the engine's
// outbox holds every event an offline evaluation of the same readings
// finds (checkOffline: the same ids), each once, in order per device, and
// so does the webhook receiver (each event id; a delivery in flight at a
// kill may come twice, with the same id); the lake's alerts table holds
// each of the outbox's events exactly once. Without the
// outbox's record of what it has (a mutation of recover), the outbox
// repeats alerts and the test fails.
func TestAlertsKill9(t *testing.T) {
	t.Parallel()
	const trucks = 40
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Snapshots 8 s apart: a kill then always leaves evaluated entries
	// whose events are in the outbox to evaluate again (what the test is
	// about); the trucks start 0.2 s apart, so that their alerts come
	// throughout the run, not all at the same seconds.
	p := startAlertPipeline(t, ctx, trucks, "-snapshot-interval", "8s")
	p.trip.ConnectRate = 5
	var kills []string
	p.runFleets(func(ctx context.Context) {
		start := time.Now()
		for i, victim := range []*proc{p.engine, p.rt, p.engine, p.engine, p.rt} {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(4000+rand.IntN(6000)) * time.Millisecond):
			}
			victim.kill9()
			kills = append(kills, fmt.Sprintf("%v: kill -9 %s (%d)", time.Since(start).Round(time.Millisecond), victim.name, i))
			time.Sleep(time.Duration(200+rand.IntN(1500)) * time.Millisecond)
			victim.start(ctx)
		}
	})
	t.Logf("kills:\n  %s", strings.Join(kills, "\n  "))
	waitFor(t, 90*time.Second, "every truck's alerts at the webhook receiver", func() bool {
		ids := map[string]bool{}
		for _, ev := range trucksOnly(p.hook.events()) {
			ids[ev.ID()] = true
		}
		return len(ids) >= trucks*len(tripExpected)
	})
	waitFor(t, 30*time.Second, "every truck's alerts in the lake", func() bool {
		ids := map[string]bool{}
		for _, ev := range trucksOnly(lakeEvents(t, p.lakeDir)) {
			ids[ev.ID()] = true
		}
		return len(ids) >= trucks*len(tripExpected)
	})
	time.Sleep(2 * time.Second)
	p.engine.stop(20 * time.Second)

	out, err := alerts.ReadOutbox(p.alertsDir)
	if err != nil {
		t.Fatal(err)
	}
	checkTrips(t, "outbox", trucksOnly(out), trucks)
	checkDeviceOrder(t, "outbox", trucksOnly(out))
	checkOffline(t, trucksOnly(out), tripRules(p.hook.srv.URL, p.hook.secret))
	got := trucksOnly(p.hook.events())
	checkDeviceOrder(t, "webhook", got)
	distinct := map[string]eval.Event{}
	for _, ev := range got {
		distinct[ev.ID()] = ev
	}
	var once []eval.Event
	for _, ev := range distinct {
		once = append(once, ev)
	}
	checkTrips(t, "webhook (distinct ids)", once, trucks)
	checkOffline(t, once, tripRules(p.hook.srv.URL, p.hook.secret))
	t.Logf("webhook: %d deliveries of %d distinct events (%d again, after a kill)", len(got), len(distinct), len(got)-len(distinct))

	// The lake's alerts table: every event of the outbox, each exactly
	// once, although the engine was killed (planned batches, alerts/
	// batchplan.go).
	inLake := map[string]int{}
	for _, ev := range lakeEvents(t, p.lakeDir) {
		inLake[ev.ID()]++
	}
	for _, ev := range out {
		if n := inLake[ev.ID()]; n != 1 {
			t.Errorf("lake: event %s %d times, want once", ev.ID(), n)
		}
		delete(inLake, ev.ID())
	}
	for id, n := range inLake {
		t.Errorf("lake: event %s (%d times) is not in the outbox", id, n)
	}
}

// hookReceiver is a webhook receiver: it checks signatures and keeps
// every event, in the order received.
type hookReceiver struct {
	srv    *httptest.Server
	secret string
	mu     sync.Mutex
	evs    []eval.Event
	nbad   int
}

func startHookReceiver(t *testing.T, secret string) *hookReceiver {
	h := &hookReceiver{secret: secret}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		want := alerts.Sign(h.secret, r.Header.Get(alerts.HeaderTimestamp), body)
		var p alerts.WebhookPayload
		ok := hmac.Equal([]byte(want), []byte(r.Header.Get(alerts.HeaderSignature))) && json.Unmarshal(body, &p) == nil
		h.mu.Lock()
		defer h.mu.Unlock()
		if !ok {
			h.nbad++
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		h.evs = append(h.evs, p.Events...)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hookReceiver) events() []eval.Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]eval.Event(nil), h.evs...)
}

func (h *hookReceiver) bad() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nbad
}

// liveAlerts are the alert ids a live client saw.
type liveAlerts struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (l *liveAlerts) ids() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]bool{}
	for k := range l.seen {
		out[k] = true
	}
	return out
}

// watchAlerts connects a live client that follows every vehicle and
// records the ids of the alerts it is sent.
func watchAlerts(ctx context.Context, t *testing.T, url, token string) *liveAlerts {
	t.Helper()
	l := &liveAlerts{seen: map[string]bool{}}
	c, resp, err := websocket.DefaultDialer.DialContext(ctx, url, http.Header{"Authorization": {"Bearer " + token}})
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%w (HTTP %s)", err, resp.Status)
		}
		t.Fatalf("live client: %v", err)
	}
	if err := c.WriteMessage(websocket.TextMessage, []byte(`{"type":"subscribe","id":"alerts"}`)); err != nil {
		t.Fatal(err)
	}
	go func() {
		stop := context.AfterFunc(ctx, func() { c.Close() })
		defer stop()
		for {
			_, b, err := c.ReadMessage()
			if err != nil {
				return
			}
			var m struct {
				Type   string `json:"type"`
				Alerts []struct {
					ID     string `json:"id"`
					Device string `json:"device"`
				} `json:"alerts"`
			}
			if json.Unmarshal(b, &m) != nil || m.Type != "alert" {
				continue
			}
			l.mu.Lock()
			for _, a := range m.Alerts {
				l.seen[a.ID] = true
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.Close() })
	return l
}
