package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
	"github.com/drover-telemetry/drover/internal/testenv"
)

// Command events across api replicas (issue 17): two drover api processes
// on one PostgreSQL, a frontend (and its router) following replica A only,
// simulated devices answering at once. A caller on replica B posts with
// ?wait and follows the events stream there; the frontend takes the
// command from A, and the device's result reaches A. B's caller gets the
// result on the same request, and both replicas' streams carry every state
// change, in order. -command-poll is a minute on both replicas: what the
// test sees within its 20 s can only have come through the replicas'
// notifications, not through their polls of the database.

// cmdEvent is one event of a command events stream.
type cmdEvent struct {
	ID, State string
}

// followEvents opens a's command events stream with query and returns the
// events as they come; it returns once the stream is subscribed.
func followEvents(t *testing.T, ctx context.Context, a *apiProc, query string) <-chan cmdEvent {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", a.url+"/v1/commands/events?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+a.adminKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		t.Fatalf("events on %s: %d", a.url, resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() || sc.Text() != ": command events" {
		resp.Body.Close()
		t.Fatalf("events on %s: first line %q", a.url, sc.Text())
	}
	out := make(chan cmdEvent, 100)
	go func() {
		defer resp.Body.Close()
		defer close(out)
		for sc.Scan() {
			line := sc.Text()
			if line == "event: overflow" {
				out <- cmdEvent{State: "overflow"}
			}
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var ev cmdEvent
				if json.Unmarshal([]byte(data), &ev) == nil && ev.ID != "" {
					out <- ev
				}
			}
		}
	}()
	return out
}

// collect takes events from ch until it closes or n have come.
func collect(ch <-chan cmdEvent, n int) []cmdEvent {
	var got []cmdEvent
	for ev := range ch {
		got = append(got, ev)
		if len(got) == n {
			break
		}
	}
	return got
}

func TestCommandsAcrossAPIReplicas(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	urlFile := secretFile(t, testenv.Postgres(t).NewDatabase(t))
	dbArgs := []string{"-db", "postgres", "-postgres-url-file", urlFile, "-command-poll", "1m"}
	a := startAPIProc(t, ctx, filepath.Join(dir, "a"), dbArgs...)
	// Replica B: the same database; A created the bootstrap admin.
	addr := freeAddr(t)
	b := &apiProc{t: t, dir: filepath.Join(dir, "b"), url: "http://" + addr, keyFile: filepath.Join(dir, "b", "follower-key"),
		adminKey: a.adminKey}
	b.proc = newProc(t, "api-b", "api", append([]string{"-listen", addr, "-data-dir", b.dir,
		"-follower-key-file", b.keyFile, "-feed-poll", "50ms"}, dbArgs...)...)
	b.start(ctx)

	sc := sim.DefaultConfig()
	sc.Devices, sc.Rate, sc.TokenSeed = 2, 0, "replicas"
	sc.CommandDelay = 0 // executes at once: reports its result without received
	a.importFleet(sc)
	routerAddr, feAddr := freeAddr(t), freeAddr(t)
	newProc(t, "router", "router", append([]string{"-id", uid("router-r"), "-listen", "tcp://" + routerAddr,
		"-live-pub", "tcp://" + freeAddr(t), "-store-listen", "tcp://" + freeAddr(t),
		"-queue-dir", filepath.Join(dir, "router")}, a.followerArgs()...)...).start(ctx)
	newProc(t, "frontend", "frontend", append([]string{"-id", uid("fe-r"), "-listen", feAddr,
		"-routers", "tcp://" + routerAddr, "-queue-dir", filepath.Join(dir, "fe"), "-presence-interval", "100ms"},
		a.followerArgs()...)...).start(ctx)
	sc.URLs = []string{"ws://" + feAddr}
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	fctx, fstop := context.WithCancel(ctx)
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fctx) }()
	defer func() { fstop(); <-fleetDone }()
	dev := sim.DeviceID(sc.IDPrefix, 0)
	waitFor(t, 20*time.Second, dev+" connected, as replica B sees it", func() bool {
		var d struct {
			Presence *struct{ Connected bool } `json:"presence"`
		}
		b.call("GET", "/v1/devices/"+dev, nil, &d)
		return d.Presence != nil && d.Presence.Connected
	})

	onA := followEvents(t, ctx, a, "device="+dev+"&max_events=3&duration=30s")
	onB := followEvents(t, ctx, b, "device="+dev+"&max_events=3&duration=30s")
	body, _ := json.Marshal(map[string]any{"name": "locate", "ttl": "1m"})
	req, _ := http.NewRequestWithContext(ctx, "POST", b.url+"/v1/devices/"+dev+"/commands?wait=20s", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+b.adminKey)
	req.Header.Set("Content-Type", "application/json")
	began := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var cmd cmdRecord
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(rb, &cmd) != nil || cmd.State != "succeeded" {
		t.Fatalf("POST ?wait=20s on replica B, delivered and reported through replica A: %d %s after %v", resp.StatusCode, rb, time.Since(began))
	}
	t.Logf("POST ?wait on replica B → result through replica A: %v", time.Since(began))
	want := []string{"queued", "sent", "succeeded"} // the simulated device answers at once, without received
	for name, ch := range map[string]<-chan cmdEvent{"A": onA, "B": onB} {
		got := collect(ch, len(want))
		ok := len(got) == len(want)
		for i := 0; ok && i < len(want); i++ {
			ok = got[i].ID == cmd.ID && got[i].State == want[i]
		}
		if !ok {
			t.Errorf("replica %s's stream: %+v, want %s's %v", name, got, cmd.ID, want)
		}
	}
	if s := fleet.Summary().Commands; s.Executed != 1 || s.Duplicates != 0 {
		t.Errorf("device figures %+v: want the command executed once", s)
	}
}
