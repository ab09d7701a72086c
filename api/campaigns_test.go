package api

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestCampaignPacingPauseAbort: a campaign offers the image to at most
// max_concurrent devices at once, each as a firmware_update command naming
// the image's id, SHA-256 and version; finished devices make room for more;
// paused, it offers nothing more but still counts outcomes; past the abort
// rule it stops, its pending devices skipped.
func TestCampaignPacingPauseAbort(t *testing.T) {
	c := startCmdEnv(t, backends[0])
	devs := []string{"truck-1", "truck-2"}
	for _, id := range []string{"truck-3", "truck-4", "truck-5", "truck-6"} {
		c.must(201, req{method: "POST", path: "/v1/devices", key: c.adminKey, body: map[string]any{"id": id}}, nil)
		devs = append(devs, id)
	}
	for _, d := range devs {
		c.presence("fe-1", d, true, time.Now())
	}
	var fw Firmware
	c.must(201, req{method: "POST", path: "/v1/firmware?version=4.2.0", key: c.adminKey, body: []byte("image"),
		contentType: "application/octet-stream"}, &fw)
	var camp Campaign
	c.must(201, req{method: "POST", path: "/v1/firmware-campaigns", key: c.adminKey, body: map[string]any{"firmware": fw.ID,
		"devices": devs, "max_concurrent": 2, "per_minute": 1000, "abort_percent": 50, "abort_min": 4}}, &camp)
	get := func() Campaign {
		var got Campaign
		c.must(200, req{method: "GET", path: "/v1/firmware-campaigns/" + camp.ID, key: c.adminKey}, &got)
		return got
	}
	waitFor(t, 5*time.Second, "two devices offered", func() bool { return get().Devices["offered"] == 2 })
	// Ticks go on; the concurrency holds.
	d := c.dispatch("fe-1", "5s")
	if got := get(); len(d) != 2 || got.Devices["offered"] != 2 || got.Devices["pending"] != 4 {
		t.Fatalf("dispatch %+v; campaign %+v", d, got.Devices)
	}
	if d[0].Name != "firmware_update" || d[0].Params["id"] != fw.ID || d[0].Params["sha256"] != fw.SHA256 || d[0].Params["version"] != "4.2.0" {
		t.Errorf("offer %+v", d[0])
	}
	for _, x := range d {
		c.report("fe-1", x.DeviceID, x.ID, "succeeded")
	}
	waitFor(t, 5*time.Second, "two succeeded, two more offered", func() bool {
		g := get().Devices
		return g["succeeded"] == 2 && g["offered"] == 2
	})
	c.must(200, req{method: "POST", path: "/v1/firmware-campaigns/" + camp.ID + "/pause", key: c.adminKey}, nil)
	for _, x := range c.dispatch("fe-1", "5s") {
		c.report("fe-1", x.DeviceID, x.ID, "failed", "flash write error", "")
	}
	// 2 of 4 finished failed: the abort rule (50 % of at least 4), even paused.
	waitFor(t, 5*time.Second, "aborted by the rule", func() bool { return get().State == CampaignAborted })
	got := get()
	if got.Devices["skipped"] != 2 || got.Devices["failed"] != 2 || got.Devices["pending"] != 0 || got.Reason == "" {
		t.Errorf("after the abort: %+v (%s)", got.Devices, got.Reason)
	}
	var page listResponse[CampaignDevice]
	c.must(200, req{method: "GET", path: "/v1/firmware-campaigns/" + camp.ID + "/devices?state=failed", key: c.adminKey}, &page)
	if len(page.Items) != 2 || page.Items[0].Reason != "flash write error" {
		t.Errorf("failed devices: %+v", page.Items)
	}
	if r := c.do(req{method: "POST", path: "/v1/firmware-campaigns/" + camp.ID + "/resume", key: c.adminKey}); r.status != 409 {
		t.Errorf("resume of an aborted campaign: %d", r.status)
	}
}

// TestCampaignCompletes: every device done, the campaign is completed.
func TestCampaignCompletes(t *testing.T) {
	c := startCmdEnv(t, backends[0])
	c.presence("fe-1", "truck-1", true, time.Now())
	var fw Firmware
	c.must(201, req{method: "POST", path: "/v1/firmware?version=1", key: c.adminKey, body: []byte("image"),
		contentType: "application/octet-stream"}, &fw)
	var camp Campaign
	c.must(201, req{method: "POST", path: "/v1/firmware-campaigns", key: c.adminKey, body: map[string]any{"firmware": fw.ID,
		"devices": []string{"truck-1"}}}, &camp)
	d := c.dispatch("fe-1", "5s")
	if len(d) != 1 {
		t.Fatalf("dispatch %+v", d)
	}
	c.report("fe-1", "truck-1", d[0].ID, "succeeded")
	waitFor(t, 5*time.Second, "completed", func() bool {
		var got Campaign
		c.must(200, req{method: "GET", path: "/v1/firmware-campaigns/" + camp.ID, key: c.adminKey}, &got)
		return got.State == CampaignCompleted && got.Devices["succeeded"] == 1
	})
}

// TestCampaignRamp: the rate grows by the factor once per ramp_every
// devices succeeded, up to the ceiling.
func TestCampaignRamp(t *testing.T) {
	c := Campaign{PerMinute: 10, RampFactor: 2, RampEvery: 5, MaxPerMinute: 60, Devices: map[string]int{}}
	for _, tc := range []struct{ succeeded, want int }{{0, 10}, {4, 10}, {5, 20}, {10, 40}, {15, 60}, {100, 60}} {
		c.Devices["succeeded"] = tc.succeeded
		if got := c.rate(); got != tc.want {
			t.Errorf("%d succeeded: rate %d, want %d", tc.succeeded, got, tc.want)
		}
	}
	c.RampEvery = 0
	if got := c.rate(); got != 10 {
		t.Errorf("no ramp: %d", got)
	}
}

// TestCampaignCountsRunningVersion: frontends report the firmware version a
// device names at connect; the device's view shows it (a connect naming
// none keeps it, a bad one is refused). A campaign counts a device that
// reconnects running the target version as succeeded, report or not, and
// one running it already as succeeded without offering it the image; a
// device back on its old version stays in flight.
func TestCampaignCountsRunningVersion(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := startCmdEnv(t, b)
		c.must(201, req{method: "POST", path: "/v1/devices", key: c.adminKey, body: map[string]any{"id": "truck-3"}}, nil)
		connect := func(dev, version string, at time.Time) int {
			r := c.do(req{method: "POST", path: "/v1/feed/presence", key: c.fkey, body: map[string]any{"frontend": "fe-1",
				"reports": []map[string]any{{"id": dev, "seen_at": at.UTC(), "connected": true, "firmware": version}}}})
			return r.status
		}
		version := func(dev string) string {
			var d Device
			c.must(200, req{method: "GET", path: "/v1/devices/" + dev, key: c.adminKey}, &d)
			if d.Presence == nil {
				return "(no presence)"
			}
			return d.Presence.FirmwareVersion
		}
		start := time.Now()
		for i, dev := range []string{"truck-1", "truck-2"} {
			if st := connect(dev, "4.1.0", start.Add(time.Duration(i)*time.Millisecond)); st != 200 {
				t.Fatalf("presence with a version: %d", st)
			}
		}
		if st := connect("truck-3", "4.2.0", start); st != 200 {
			t.Fatalf("presence: %d", st)
		}
		if st := connect("truck-1", "4.2.0 beta", start.Add(time.Second)); st != 422 {
			t.Errorf("presence with a bad version: %d, want 422", st)
		}
		c.presence("fe-1", "truck-2", true, start.Add(time.Second)) // names none
		if got := version("truck-2"); got != "4.1.0" {
			t.Errorf("truck-2 runs %q after a connect naming no version, want 4.1.0 kept", got)
		}

		var fw Firmware
		c.must(201, req{method: "POST", path: "/v1/firmware?version=4.2.0", key: c.adminKey, body: []byte("image"),
			contentType: "application/octet-stream"}, &fw)
		var camp Campaign
		c.must(201, req{method: "POST", path: "/v1/firmware-campaigns", key: c.adminKey, body: map[string]any{"firmware": fw.ID,
			"devices": []string{"truck-1", "truck-2", "truck-3"}, "per_minute": 1000}}, &camp)
		get := func() Campaign {
			var got Campaign
			c.must(200, req{method: "GET", path: "/v1/firmware-campaigns/" + camp.ID, key: c.adminKey}, &got)
			return got
		}
		waitFor(t, 10*time.Second, "truck-3 succeeded, two offered", func() bool {
			g := get().Devices
			return g["succeeded"] == 1 && g["offered"] == 2
		})
		d := c.dispatch("fe-1", "5s")
		if len(d) != 2 {
			t.Fatalf("dispatch %+v: want the offers of truck-1 and truck-2 only", d)
		}
		for _, x := range d {
			c.report("fe-1", x.DeviceID, x.ID, "received") // downloading
		}
		// truck-1 reboots into the new image; its result report is lost.
		// truck-2 comes back on its old one.
		connect("truck-1", "4.2.0", start.Add(2*time.Second))
		connect("truck-2", "4.1.0", start.Add(2*time.Second))
		waitFor(t, 10*time.Second, "truck-1 succeeded", func() bool { return get().Devices["succeeded"] == 2 })
		if g := get(); g.Devices["downloading"] != 1 || g.State != CampaignRunning {
			t.Errorf("campaign %s %+v: want truck-2 still downloading", g.State, g.Devices)
		}
		if got := version("truck-1"); got != "4.2.0" {
			t.Errorf("truck-1 runs %q, want 4.2.0", got)
		}
		// The dashboard's figures: drover_api_campaign_devices{state}.
		gauge := func(st string) float64 { return testutil.ToFloat64(c.srv.metrics.campaignDevs.WithLabelValues(st)) }
		waitFor(t, 10*time.Second, "the campaign gauge", func() bool {
			return gauge("succeeded") == 2 && gauge("downloading") == 1 && gauge("pending") == 0
		})
	})
}

// TestCampaignDeviceProgress: a device that reports its progress (wire
// format 1.2) goes offered → downloading (with its bytes) → verifying →
// installing → succeeded in its campaign, each state counted in the
// campaign and in drover_api_campaign_devices, and shown on its command;
// verifying and installing are in flight (the next device waits for
// max_concurrent); a progress report after the result changes nothing.
func TestCampaignDeviceProgress(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := startCmdEnv(t, b)
		c.presence("fe-1", "truck-1", true, time.Now())
		c.presence("fe-1", "truck-2", true, time.Now())
		var fw Firmware
		c.must(201, req{method: "POST", path: "/v1/firmware?version=4.2.0", key: c.adminKey, body: []byte("image"),
			contentType: "application/octet-stream"}, &fw)
		var camp Campaign
		c.must(201, req{method: "POST", path: "/v1/firmware-campaigns", key: c.adminKey, body: map[string]any{"firmware": fw.ID,
			"devices": []string{"truck-1", "truck-2"}, "max_concurrent": 1, "per_minute": 1000}}, &camp)
		dev := func() CampaignDevice {
			var page listResponse[CampaignDevice]
			c.must(200, req{method: "GET", path: "/v1/firmware-campaigns/" + camp.ID + "/devices", key: c.adminKey}, &page)
			for _, d := range page.Items {
				if d.State != CampDevPending {
					return d
				}
			}
			return CampaignDevice{}
		}
		waitFor(t, 5*time.Second, "one device offered", func() bool { return dev().State == CampDevOffered })
		d := c.dispatch("fe-1", "5s")
		if len(d) != 1 {
			t.Fatalf("dispatch %+v", d)
		}
		offer := d[0]
		progress := func(outcome string, bytes int64) {
			t.Helper()
			c.must(200, req{method: "POST", path: "/v1/frontends/fe-1/command-reports", key: c.fkey, body: map[string]any{
				"reports": []map[string]any{{"id": offer.ID, "device_id": offer.DeviceID, "outcome": outcome, "bytes": bytes,
					"at": time.Now().UnixMilli()}}}}, nil)
		}
		gauge := func(st string) float64 { return testutil.ToFloat64(c.srv.metrics.campaignDevs.WithLabelValues(st)) }
		steps := []struct {
			outcome string
			bytes   int64
			state   string
			want    int64 // the device's bytes
		}{
			{"received", 0, CampDevDownloading, 0},
			{"downloading", 2, CampDevDownloading, 2},
			{"downloading", 5, CampDevDownloading, 5},
			{"verifying", 0, CampDevVerifying, 5},
			{"installing", 0, CampDevInstalling, 5},
		}
		for _, s := range steps {
			progress(s.outcome, s.bytes)
			waitFor(t, 5*time.Second, s.outcome+": the campaign device "+s.state, func() bool {
				got := dev()
				return got.State == s.state && got.Bytes == s.want && gauge(s.state) == 1
			})
			var got Campaign
			c.must(200, req{method: "GET", path: "/v1/firmware-campaigns/" + camp.ID, key: c.adminKey}, &got)
			if got.Devices[s.state] != 1 || got.Devices[CampDevPending] != 1 || got.Devices[CampDevOffered] != 0 {
				t.Fatalf("%s: campaign devices %+v: want one %s, the other still pending (max_concurrent 1)", s.outcome, got.Devices, s.state)
			}
		}
		cmd := c.get(offer.DeviceID, offer.ID)
		if cmd.State != CmdDelivered || cmd.Progress == nil || cmd.Progress.Stage != ProgressInstalling || cmd.Progress.Bytes != 5 || cmd.DeliveredAt == nil {
			t.Errorf("the command while installing: %+v %+v", cmd, cmd.Progress)
		}
		if n := testutil.ToFloat64(c.srv.metrics.commands.WithLabelValues(ProgressVerifying)); n != 1 {
			t.Errorf("commands_total{event=verifying} = %v, want 1", n)
		}
		c.report("fe-1", offer.DeviceID, offer.ID, "succeeded")
		progress("downloading", 1) // late: the result stands
		if got := c.get(offer.DeviceID, offer.ID); got.State != CmdSucceeded || got.Progress.Stage != ProgressInstalling {
			t.Errorf("a progress report after the result: %+v %+v", got, got.Progress)
		}
		waitFor(t, 5*time.Second, "succeeded, the next device offered", func() bool {
			var got Campaign
			c.must(200, req{method: "GET", path: "/v1/firmware-campaigns/" + camp.ID, key: c.adminKey}, &got)
			return got.Devices[CampDevSucceeded] == 1 && got.Devices[CampDevOffered] == 1
		})
	})
}
