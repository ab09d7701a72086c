package alerts

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/parquet-go/parquet-go"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/telemetry"
)

const tripLat, tripLon = -26.2041, 28.0473

func moveM(lat, lon, eastM, northM float64) (float64, float64) {
	return lat + northM/(eval.EarthRadiusM*math.Pi/180), lon + eastM/(eval.EarthRadiusM*math.Pi/180*math.Cos(lat*math.Pi/180))
}

// trips are n devices driving east at 10 m/s for secs seconds, one
// reading a second, 500 m apart: through a depot from x=3000 to 5000 m,
// speeding from 100 to 140 s, a harsh acceleration and braking at 195 and
// 200 s. Device times start at t0.
func trips(n, secs int, t0 time.Time) [][]*telemetry.Record {
	var out [][]*telemetry.Record
	for d := range n {
		var recs []*telemetry.Record
		for s := range secs {
			kmh := float32(36)
			switch {
			case s >= 100 && s < 140:
				kmh = 140
			case s >= 195 && s < 200:
				kmh = 60
			case s == 200:
				kmh = 20
			}
			lat, lon := moveM(tripLat, tripLon, float64(s)*10, float64(d)*500)
			ms := t0.Add(time.Duration(s) * time.Second).UnixMilli()
			rd := &telemetry.Reading{Seq: uint64(s + 1), TimeMs: ms, SpeedKmh: &kmh}
			rd.SetPosition(lat, lon)
			recs = append(recs, &telemetry.Record{DeviceId: fmt.Sprintf("truck-%02d", d), ReceivedMs: ms + 150, Reading: rd})
		}
		out = append(out, recs)
	}
	return out
}

func tripDevices(n int) []registry.Device {
	var ds []registry.Device
	for d := range n {
		ds = append(ds, registry.Device{ID: fmt.Sprintf("truck-%02d", d), TokenSHA256: strings.Repeat("ab", 32), Fleet: "acme", Class: "car"})
	}
	return ds
}

func tripRules(hookURL, secret string) *eval.RuleSet {
	depot := json.RawMessage(func() string {
		var pts []string
		for _, c := range [][2]float64{{3000, -1000}, {5000, -1000}, {5000, 30000}, {3000, 30000}, {3000, -1000}} {
			lat, lon := moveM(tripLat, tripLon, c[0], c[1])
			pts = append(pts, fmt.Sprintf("[%.7f,%.7f]", lon, lat))
		}
		return `{"type":"Polygon","coordinates":[[` + strings.Join(pts, ",") + `]]}`
	}())
	f := false
	return &eval.RuleSet{
		Rules:     []eval.Rule{{ID: "no-silence", Kind: eval.KindSilence, Enabled: &f}},
		Geofences: []eval.Fence{{ID: "depot", Name: "Depot", Geometry: depot, Events: []string{"enter", "exit", "dwell"}, Dwell: eval.Duration(time.Minute)}},
		Webhooks:  []eval.Webhook{{ID: "ops", Fleet: "acme", URL: hookURL, Secret: secret}},
	}
}

// offline evaluates recs (interleaved by device time as the pipeline does
// not guarantee an order across devices: only per device) with rs, as the
// engine must.
func offline(t testing.TB, rs *eval.RuleSet, devs [][]*telemetry.Record) map[string]eval.Event {
	t.Helper()
	e, err := eval.New(rs, eval.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]eval.Event{}
	for _, recs := range devs {
		for _, r := range recs {
			e.Process(&telemetry.EnrichedRecord{Record: r, Enrichment: &telemetry.Enrichment{Fleet: "acme", VehicleClass: "car"}},
				func(ev *eval.Event) { out[ev.ID()] = *ev })
		}
	}
	return out
}

// checkExactly fails unless got holds each event of want once, and each
// device's events in the order they happened.
func checkExactly(t testing.TB, what string, got []eval.Event, want map[string]eval.Event) {
	t.Helper()
	seen := map[string]int{}
	last := map[string]int64{}
	for _, ev := range got {
		seen[ev.ID()]++
		if _, ok := want[ev.ID()]; !ok {
			t.Errorf("%s: unexpected event %s %s %s", what, ev.ID(), ev.Alert.Type, ev.Kind)
		}
		if ev.AtMs < last[ev.Alert.Device] && ev.Kind != eval.EventCleared {
			t.Errorf("%s: %s's events out of order: %s at %d after %d", what, ev.Alert.Device, ev.Alert.Type, ev.AtMs, last[ev.Alert.Device])
		}
		last[ev.Alert.Device] = max(last[ev.Alert.Device], ev.AtMs)
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("%s: event %s %d times", what, id, n)
		}
	}
	for id, ev := range want {
		if seen[id] == 0 {
			t.Errorf("%s: missing event %s (%s %s of %s)", what, id, ev.Alert.Type, ev.Kind, ev.Alert.Device)
		}
	}
}

// laneReader subscribes to the alert lane as a livefeed does.
type laneReader struct {
	mu     sync.Mutex
	events []eval.Event
}

func readLane(t testing.TB, addr string) *laneReader {
	t.Helper()
	sec, err := clusterlink.New(testLinks, clusterlink.RoleLivefeed, "test-livefeed", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := sec.Endpoint(clusterlink.LinkAlerts, addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sock := zmq4.NewSub(ctx, zmq4.WithDialerMaxRetries(-1), zmq4.WithAutomaticReconnect(true))
	if err := sock.SetOption(zmq4.OptionSubscribe, AlertTopic); err != nil {
		t.Fatal(err)
	}
	if err := sock.Dial(ep); err != nil {
		t.Fatal(err)
	}
	lr := &laneReader{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := sock.Recv()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			var ev eval.Event
			if len(m.Frames) == 2 && string(m.Frames[0]) == AlertTopic && json.Unmarshal(m.Frames[1], &ev) == nil {
				lr.mu.Lock()
				lr.events = append(lr.events, ev)
				lr.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { cancel(); _ = zmqsock.Close(sock); <-done; sec.Close() })
	return lr
}

func (lr *laneReader) got() []eval.Event {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return append([]eval.Event(nil), lr.events...)
}

// readOutbox returns every event in the outbox, in order.
func readOutbox(t testing.TB, dir string) []eval.Event {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(dir, "outbox", "*.log"))
	sort.Strings(names)
	var segs []outSeg
	for _, n := range names {
		var first uint64
		fmt.Sscanf(filepath.Base(n), "%020d.log", &first)
		segs = append(segs, outSeg{first: first, path: n})
	}
	recs, err := readRecords(segs, 0, math.MaxUint64, math.MaxInt)
	if err != nil {
		t.Fatal(err)
	}
	var out []eval.Event
	for _, r := range recs {
		out = append(out, r.Events...)
	}
	return out
}

// TestEngineDeliversEachAlertOnce: readings through a real router reach the
// engine; every alert an offline evaluation of the same readings finds
// arrives once at the webhook receiver (signed), in the outbox, on the
// alert lane and in the lake, across a restart of the engine in the
// middle.
func TestEngineDeliversEachAlertOnce(t *testing.T) {
	const secret = "s3cret-for-the-receiver"
	rv := startReceiver(t, secret)
	rs := tripRules(rv.srv.URL, secret)
	devs := trips(4, 600, time.Now().Add(-11*time.Minute))
	want := offline(t, rs, devs)
	kinds := map[string]bool{}
	for _, ev := range want {
		kinds[ev.Alert.Type] = true
	}
	for _, k := range []string{eval.TypeGeofenceEnter, eval.TypeGeofenceExit, eval.TypeGeofenceDwell, eval.TypeOverspeed,
		eval.TypeHarshAccel, eval.TypeHarshBrake} {
		if !kinds[k] {
			t.Fatalf("the test trips raise no %s (offline: %d events): the test tests nothing", k, len(want))
		}
	}

	p := startPipeline(t, tripDevices(4))
	dir := t.TempDir()
	rulesPath := filepath.Join(t.TempDir(), "rules.json")
	writeRules(t, rulesPath, rs)
	cfg := testEngineConfig(t, dir, []string{p.router.StoreAddr()}, rulesPath)
	cfg.Lake.Dir, cfg.LakeFlush = filepath.Join(t.TempDir(), "lake-alerts"), 200*time.Millisecond
	// Each device's 300 readings of a half are sent at once, more than the
	// evaluator's ReorderMax (256): the test relies on the router's log and
	// the engine's queue keeping a frontend's batches in the order sent. A
	// batch of 20 readings that overtook by more than 256 made them a late
	// stretch, with events that evaluating in order does not raise (one run
	// in four, before the router and the engine kept the order).
	en := startEngine(t, cfg)
	lane := readLane(t, en.AlertLaneAddr())
	waitFor(t, 10*time.Second, "lane subscriber", func() bool { _, n := en.lane.Subscribers(); return n == 1 })

	// The first half, then a graceful restart, then the rest.
	for _, recs := range devs {
		p.send(recs[:300])
	}
	waitFor(t, 60*time.Second, "the first half evaluated", func() bool { return counter(t, en.reg, "drover_alerts_readings_total") >= 1200 })
	en.stop(t)
	en = startEngine(t, cfg)
	for _, recs := range devs {
		p.send(recs[300:])
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("%d events at the receiver", len(want)), func() bool { return len(rv.got()) >= len(want) })
	time.Sleep(500 * time.Millisecond) // anything more would be a duplicate
	checkExactly(t, "webhook", rv.got(), want)
	checkExactly(t, "outbox", readOutbox(t, dir), want)
	if rv.bad > 0 {
		t.Errorf("%d deliveries failed the signature check", rv.bad)
	}
	// The lane: every event of the second half (the first engine's lane
	// subscriber is gone with it; the lane is best effort across restarts).
	var laneWant int
	for _, ev := range want {
		if ev.DetectedMs >= devs[0][300].ReceivedMs {
			laneWant++
		}
	}
	if got := len(lane.got()); got == 0 || got > len(want) {
		t.Errorf("lane: %d events, want some (%d after the restart) and no more than %d", got, laneWant, len(want))
	}
	// The lake: every event, by event_id.
	waitFor(t, 10*time.Second, "the lake", func() bool { return len(lakeEvents(t, cfg.Lake.Dir)) >= len(want) })
	lakeGot := lakeEvents(t, cfg.Lake.Dir)
	for id := range want {
		if !slices.Contains(lakeGot, id) {
			t.Errorf("lake: missing %s", id)
		}
	}
}

func lakeEvents(t testing.TB, dir string) []string {
	var ids []string
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".parquet") {
			return nil
		}
		rows, err := parquet.ReadFile[LakeRow](path)
		if err != nil {
			t.Errorf("lake file %s: %v", path, err)
			return nil
		}
		for _, r := range rows {
			ids = append(ids, r.EventID)
		}
		return nil
	})
	return ids
}

// TestEngineReceiverDown: a receiver that fails for a while gets every
// event afterwards, in order.
func TestEngineReceiverDown(t *testing.T) {
	const secret = "another-secret-16"
	rv := startReceiver(t, secret)
	rv.setFail(true)
	rs := tripRules(rv.srv.URL, secret)
	devs := trips(2, 600, time.Now().Add(-11*time.Minute))
	want := offline(t, rs, devs)
	p := startPipeline(t, tripDevices(2))
	rulesPath := filepath.Join(t.TempDir(), "rules.json")
	writeRules(t, rulesPath, rs)
	en := startEngine(t, testEngineConfig(t, t.TempDir(), []string{p.router.StoreAddr()}, rulesPath))
	for _, recs := range devs {
		p.send(recs)
	}
	waitFor(t, 90*time.Second, "failed deliveries", func() bool {
		return counter(t, en.reg, "drover_alerts_delivery_failures_total", "output", "webhook-ops") >= 3
	})
	if len(rv.got()) != 0 {
		t.Fatal("a failing receiver got events")
	}
	rv.setFail(false)
	waitFor(t, 90*time.Second, "every event", func() bool { return len(rv.got()) >= len(want) })
	time.Sleep(300 * time.Millisecond)
	checkExactly(t, "webhook", rv.got(), want)
}
