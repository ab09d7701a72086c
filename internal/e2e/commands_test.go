package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/drover-telemetry/drover/internal/sim"
)

// Commands with real processes (issue 17): a drover api, two frontends and
// a router following it, a simulated fleet of 500 devices spread over both
// frontends executing commands, a stream of commands posted through the
// API, a firmware campaign over the fleet on links that drop every 10 KB, and
// kill -9 of a frontend and of the api in the middle. Every command the
// api accepted (201) ends final and consistent with what the devices did:
// none lost while its TTL lasted, none executed twice, none written to a
// device after its expiry (one in flight as its expiry passes is refused by
// the device, reported failed, and counted so). Every device of the campaign ends succeeded or
// failed with a reason, and installed exactly once; no download started
// again from zero (the fleet received exactly devices × image bytes).

// cmdRecord is the part of an API command the test checks.
type cmdRecord struct {
	ID        string    `json:"id"`
	DeviceID  string    `json:"device_id"`
	State     string    `json:"state"`
	Message   string    `json:"message"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
	Attempts  int       `json:"attempts"`
}

// postCommand posts a command with an idempotency key, retrying (the
// api may be down) until it is accepted or ctx ends: a key makes a retry
// after a lost answer return the first command, never a second one.
func (a *apiProc) postCommand(ctx context.Context, dev, key, ttl string) (cmdRecord, error) {
	body, _ := json.Marshal(map[string]any{"name": "locate", "ttl": ttl})
	c := &http.Client{Timeout: 5 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, "POST", a.url+"/v1/devices/"+dev+"/commands", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+a.adminKey)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := c.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated || resp.StatusCode == http.StatusOK {
				var r cmdRecord
				return r, json.Unmarshal(b, &r)
			}
			if resp.StatusCode != http.StatusServiceUnavailable {
				return cmdRecord{}, fmt.Errorf("POST command: %d %s", resp.StatusCode, b)
			}
		}
		select {
		case <-ctx.Done():
			return cmdRecord{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func TestCommandsKill9(t *testing.T) {
	t.Parallel()
	const devices = 500 // the campaign
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	api := startAPIProc(t, ctx, filepath.Join(dir, "api"), "-command-poll", "100ms", "-command-resend", "1s",
		"-command-report-grace", "2s")
	api.call("POST", "/v1/fleets", map[string]string{"id": "acme"}, nil)
	sc := sim.DefaultConfig()
	sc.Devices, sc.Rate, sc.TokenSeed = devices, 0, "commands"
	sc.BackoffMin, sc.BackoffMax = 50*time.Millisecond, 500*time.Millisecond
	sc.CommandDelay, sc.CommandFailureRate = 300*time.Millisecond, 0.1
	// ~1.5 s a download, 100 at once (2 MB/s in all, as light as the 60
	// devices of old): the campaign spans the kills.
	sc.FirmwareLinkBytesPerSecond, sc.FirmwareDropEvery = 20_000, 10_000
	// Named at each connect; the installed one after the update.
	sc.FirmwareVersion = "7.0.0"
	api.importFleet(sc)
	// Four more devices stay offline while the stream runs, and connect
	// only after their short commands have expired.
	late := sc
	late.Devices, late.DeviceOffset = 4, devices
	api.importFleet(late)

	routerAddr := freeAddr(t)
	rt := newProc(t, "router", "router", append([]string{"-id", uid("router-c"), "-listen", "tcp://" + routerAddr,
		"-live-pub", "tcp://" + freeAddr(t), "-store-listen", "tcp://" + freeAddr(t),
		"-queue-dir", filepath.Join(dir, "router")}, api.followerArgs()...)...)
	rt.start(ctx)
	var fes []*proc
	var urls []string
	for i := range 2 {
		addr := freeAddr(t)
		fe := newProc(t, fmt.Sprintf("frontend-%d", i), "frontend", append([]string{"-id", uid(fmt.Sprintf("fe-%d", i)),
			"-listen", addr, "-routers", "tcp://" + routerAddr, "-queue-dir", filepath.Join(dir, fmt.Sprintf("fe-%d", i)),
			"-presence-interval", "100ms", "-shutdown-grace", "2s", "-firmware-bytes-per-second", "4194304"}, api.followerArgs()...)...)
		fe.start(ctx)
		fes = append(fes, fe)
		urls = append(urls, "ws://"+addr)
	}
	sc.URLs, late.URLs = urls, urls
	fleet, err := sim.New(sc, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	fctx, fstop := context.WithCancel(ctx)
	fleetDone := make(chan error, 1)
	go func() { fleetDone <- fleet.Run(fctx) }()
	waitFor(t, 30*time.Second, "every device connected", func() bool { return fleet.Stats().Connected == devices })

	// A firmware campaign over the connected devices runs through the kills.
	img := make([]byte, 30_000)
	for i := range img {
		img[i] = byte(rand.IntN(256))
	}
	fwReq, _ := http.NewRequest("POST", api.url+"/v1/firmware?version=7.1.0", bytes.NewReader(img))
	fwReq.Header.Set("Authorization", "Bearer "+api.adminKey)
	fwReq.Header.Set("Content-Type", "application/octet-stream")
	fwResp, err := http.DefaultClient.Do(fwReq)
	if err != nil {
		t.Fatal(err)
	}
	var fw struct{ ID string }
	_ = json.NewDecoder(fwResp.Body).Decode(&fw)
	fwResp.Body.Close()
	var ids []string
	for i := range devices {
		ids = append(ids, sim.DeviceID(sc.IDPrefix, i))
	}
	var camp struct {
		ID      string
		State   string
		Devices map[string]int
	}
	api.call("POST", "/v1/firmware-campaigns", map[string]any{"firmware": fw.ID, "devices": ids, "max_concurrent": 100,
		"per_minute": 6000, "device_timeout": "2m"}, &camp)

	// The stream: ~40 commands/s to random devices, most with a TTL long
	// enough to outlive the outages, some short enough to expire in them.
	var (
		mu       sync.Mutex
		accepted []cmdRecord
	)
	sctx, sstop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for n := 0; sctx.Err() == nil; n++ {
				dev := sim.DeviceID(sc.IDPrefix, rand.IntN(devices))
				ttl := "30s"
				switch {
				case n%10 == 3:
					dev, ttl = sim.DeviceID(sc.IDPrefix, devices+rand.IntN(late.Devices)), "2s"
				case n%10 == 7:
					dev, ttl = sim.DeviceID(sc.IDPrefix, devices+rand.IntN(late.Devices)), "2m"
				case n%5 == 0:
					ttl = "2s"
				}
				// ctx, not sctx: a post the stream's stop cut off may have
				// been committed, and the device would do a command the
				// test never heard of. The post in flight finishes.
				r, err := api.postCommand(ctx, dev, fmt.Sprintf("w%d-%d", w, n), ttl)
				if err != nil {
					return
				}
				mu.Lock()
				accepted = append(accepted, r)
				mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(accepted) }
	waitFor(t, 20*time.Second, "100 commands accepted", func() bool { return count() >= 100 })
	var during struct{ Devices map[string]int }
	api.call("GET", "/v1/firmware-campaigns/"+camp.ID, nil, &during)
	t.Logf("campaign at the frontend's kill: %v", during.Devices)
	fes[0].kill9() // its devices move to the other frontend
	n := count()
	waitFor(t, 20*time.Second, "commands accepted with a frontend dead", func() bool { return count() >= n+50 })
	fes[0].start(ctx)
	api.kill9()
	time.Sleep(time.Second) // the api stays down for a second; posts wait and retry
	api.start(ctx)
	n = count()
	waitFor(t, 20*time.Second, "commands accepted after the api restart", func() bool { return count() >= n+100 })
	sstop()
	wg.Wait()

	// The late devices connect once their short commands have expired:
	// they must get exactly the long ones, queued while they were offline.
	var lateLong, lateShort []cmdRecord
	for _, c := range accepted {
		if c.DeviceID >= sim.DeviceID(sc.IDPrefix, devices) && len(c.DeviceID) == len(sim.DeviceID(sc.IDPrefix, devices)) {
			if c.ExpiresAt.Sub(c.CreatedAt) > time.Minute {
				lateLong = append(lateLong, c)
			} else {
				lateShort = append(lateShort, c)
			}
		}
	}
	waitFor(t, 20*time.Second, "the offline devices' short commands expired", func() bool {
		for _, c := range lateShort {
			var got cmdRecord
			api.call("GET", "/v1/devices/"+c.DeviceID+"/commands/"+c.ID, nil, &got)
			if got.State != "expired" {
				return false
			}
		}
		return true
	})
	lateFleet, err := sim.New(late, testLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	lateDone := make(chan error, 1)
	go func() { lateDone <- lateFleet.Run(fctx) }()

	// The campaign ends with every device succeeded or failed with a
	// reason, none stuck; no download started again from zero.
	waitFor(t, 90*time.Second, "the campaign completed", func() bool {
		api.call("GET", "/v1/firmware-campaigns/"+camp.ID, nil, &camp)
		return camp.State == "completed"
	})
	if camp.Devices["succeeded"]+camp.Devices["failed"] != devices {
		t.Errorf("campaign devices %v, want all %d succeeded or failed", camp.Devices, devices)
	}
	var failedDevs struct {
		Items []struct{ DeviceID, Reason string } `json:"items"`
	}
	api.call("GET", "/v1/firmware-campaigns/"+camp.ID+"/devices?state=failed", nil, &failedDevs)
	for _, d := range failedDevs.Items {
		if d.Reason == "" {
			t.Errorf("%s failed without a reason", d.DeviceID)
		}
	}

	// Every command ends final: the long ones done by the device, none
	// stuck; the short ones done or expired.
	// read reads every accepted command's state from the api, and counts
	// those still open.
	var last map[string]cmdRecord
	var states map[string]int
	read := func() (open int) {
		last, states = map[string]cmdRecord{}, map[string]int{}
		for _, c := range accepted {
			var got cmdRecord
			api.call("GET", "/v1/devices/"+c.DeviceID+"/commands/"+c.ID, nil, &got)
			last[c.ID] = got
			states[got.State]++
			switch got.State {
			case "succeeded", "failed", "expired":
			default:
				open++
			}
		}
		return open
	}
	waitFor(t, 60*time.Second, "every command final", func() bool { return read() == 0 })
	// Devices keep no report un-acked, so the fleet's figures become final,
	// and so do the api's: a report held up by the api's outage (the
	// frontends back off up to 10 s) may still turn an expired command into
	// the outcome the device reports. Read both until they agree.
	var done uint64
	if !eventually(30*time.Second, func() bool {
		s, ls := fleet.Summary().Commands, lateFleet.Summary().Commands
		fwDone := s.FirmwareInstalled + s.FirmwareFailed
		// A command that reached its device after its expiry (written just
		// before it, and in flight as it passed) is refused there and
		// reported failed, "expired on device" (docs/wire-format.md).
		done = s.Succeeded + s.Failed + s.Expired - fwDone + ls.Succeeded + ls.Failed + ls.Expired
		return read() == 0 && done == uint64(states["succeeded"]+states["failed"])
	}) {
		t.Fatalf("devices completed %d commands, the api %d (%v): a report not stored, or a command done twice",
			done, states["succeeded"]+states["failed"], states)
	}
	for _, c := range last {
		// None lost while its TTL lasted: a 30 s command outlives every
		// outage here, so the device must have done it.
		if c.State == "expired" && c.ExpiresAt.Sub(c.CreatedAt) > 10*time.Second {
			t.Errorf("%s (ttl %v, %d attempts) expired: lost while its TTL lasted", c.ID, c.ExpiresAt.Sub(c.CreatedAt), c.Attempts)
		}
	}
	fstop()
	<-fleetDone
	<-lateDone
	s, ls := fleet.Summary().Commands, lateFleet.Summary().Commands
	t.Logf("%d commands: %v; devices: %+v; late devices: %+v (%d long, %d short commands queued while offline)",
		len(accepted), states, s, ls, len(lateLong), len(lateShort))
	// None written after its expiry: the frontend checks right before
	// writing, so one that reaches its device expired was in flight as its
	// expiry passed, and arrives by a transit's time late. A frontend that
	// wrote expired commands would show the seconds the late devices were
	// offline.
	if late := max(s.ExpiredLateMs, ls.ExpiredLateMs); late > 2000 {
		t.Errorf("%d commands reached a device after their expiry, one %d ms after: written after it", s.Expired+ls.Expired, late)
	}
	if ls.Received-ls.Duplicates != uint64(len(lateLong)) || len(lateShort) == 0 || len(lateLong) == 0 {
		t.Errorf("late devices got %d distinct commands, want the %d long ones (and none of %d short)",
			ls.Received-ls.Duplicates, len(lateLong), len(lateShort))
	}
	if s.FirmwareRestarts != 0 || s.FirmwareInstalled != uint64(camp.Devices["succeeded"]) {
		t.Errorf("firmware: %d installed for %d succeeded in the campaign, %d restarts from zero (want 0)",
			s.FirmwareInstalled, camp.Devices["succeeded"], s.FirmwareRestarts)
	}
	s.Executed += ls.Executed - s.FirmwareInstalled - s.FirmwareFailed
	// Executed once each: the devices executed (or refused as expired)
	// exactly the commands the api says they completed (their dedup held
	// across redeliveries).
	if got := int(s.Executed + s.Expired + ls.Expired); got != states["succeeded"]+states["failed"] {
		t.Errorf("devices executed %d commands and refused %d as expired, the api has %d completed", s.Executed, s.Expired+ls.Expired, states["succeeded"]+states["failed"])
	}
	if states["succeeded"] == 0 {
		t.Error("no command succeeded")
	}
}

// eventually polls cond until it holds (true) or timeout passes (false),
// for a caller that fails with its own figures.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}
