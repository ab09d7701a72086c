package api

import (
	"bufio"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// cmdEnv is a server with a device, a follower key (the frontends') and
// helpers that play a frontend over the real HTTP API.
type cmdEnv struct {
	*env
	fkey string
}

func startCmdEnv(t testing.TB, b backend, mod ...func(*Config)) *cmdEnv {
	mod = append([]func(*Config){func(c *Config) { c.Commands.Poll = 50 * time.Millisecond }}, mod...)
	e := startEnv(t, b, mod...)
	_, fkey := e.makeOperator("frontends", RoleFollower, "*")
	for _, id := range []string{"truck-1", "truck-2"} {
		e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{"id": id}}, nil)
	}
	return &cmdEnv{env: e, fkey: fkey}
}

// presence reports the device connected (or not) to fe at at.
func (c *cmdEnv) presence(fe, dev string, connected bool, at time.Time) {
	c.t.Helper()
	c.must(200, req{method: "POST", path: "/v1/feed/presence", key: c.fkey, body: map[string]any{"frontend": fe,
		"reports": []map[string]any{{"id": dev, "seen_at": at.UTC(), "remote_addr": "10.0.0.1:1", "connected": connected}}}}, nil)
}

func (c *cmdEnv) send(dev string, body map[string]any) Command {
	c.t.Helper()
	var cmd Command
	c.must(201, req{method: "POST", path: "/v1/devices/" + dev + "/commands", key: c.adminKey, body: body}, &cmd)
	return cmd
}

// dispatch long-polls as frontend fe.
func (c *cmdEnv) dispatch(fe, wait string) []DispatchedCommand {
	c.t.Helper()
	var d Dispatch
	c.must(200, req{method: "GET", path: "/v1/frontends/" + fe + "/commands?wait=" + wait, key: c.fkey}, &d)
	return d.Commands
}

func (c *cmdEnv) report(fe, dev, id, outcome string, extra ...string) {
	c.t.Helper()
	r := map[string]any{"id": id, "device_id": dev, "outcome": outcome, "at": time.Now().UnixMilli()}
	if len(extra) == 2 {
		r["message"], r["payload"] = extra[0], extra[1]
	}
	c.must(200, req{method: "POST", path: "/v1/frontends/" + fe + "/command-reports", key: c.fkey,
		body: map[string]any{"reports": []map[string]any{r}}}, nil)
}

// sendWaiting posts a command with ?wait=10s in the background; the
// answer comes on the channel.
func (c *cmdEnv) sendWaiting(dev string, body map[string]any) <-chan resp {
	done := make(chan resp, 1)
	go func() {
		done <- c.do(req{method: "POST", path: "/v1/devices/" + dev + "/commands?wait=10s", key: c.adminKey, body: body})
	}()
	return done
}

// wantPolled fails the test unless fe's poll (with wait) answers exactly
// the commands ids, in order.
func (c *cmdEnv) wantPolled(fe, wait string, ids ...string) {
	c.t.Helper()
	got := c.dispatch(fe, wait)
	var gotIDs []string
	for _, d := range got {
		gotIDs = append(gotIDs, d.ID)
	}
	if !slices.Equal(gotIDs, ids) {
		c.t.Fatalf("%s's poll answered %v, want %v", fe, gotIDs, ids)
	}
}

// commitsTimed is how many commits drover_api_db_commit_duration_seconds
// has timed.
func (c *cmdEnv) commitsTimed() uint64 {
	c.t.Helper()
	mfs, err := c.reg.Gather()
	if err != nil {
		c.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "drover_api_db_commit_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	c.t.Fatal("no drover_api_db_commit_duration_seconds")
	return 0
}

func (c *cmdEnv) get(dev, id string) Command {
	c.t.Helper()
	var cmd Command
	c.must(200, req{method: "GET", path: "/v1/devices/" + dev + "/commands/" + id, key: c.adminKey}, &cmd)
	return cmd
}

// TestCommandRoundTrip: queued → sent → delivered → succeeded, each with
// its timestamp, and a caller waiting on the POST gets the final state and
// the device's payload; a duplicate report changes nothing.
func TestCommandRoundTrip(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		c := startCmdEnv(t, b)
		c.presence("fe-1", "truck-1", true, time.Now())
		done := c.sendWaiting("truck-1", map[string]any{"name": "unlock", "params": map[string]string{"door": "driver"}, "ttl": "30s"})
		got := c.dispatch("fe-1", "10s")
		if len(got) != 1 || got[0].Name != "unlock" || got[0].Params["door"] != "driver" || got[0].DeviceID != "truck-1" || got[0].Seq != 1 {
			t.Fatalf("dispatch = %+v", got)
		}
		if left := time.Until(time.UnixMilli(got[0].ExpiresAt)); left < 25*time.Second || left > 30*time.Second {
			t.Errorf("expires in %v, want ~30s", left)
		}
		if cmd := c.get("truck-1", got[0].ID); cmd.State != CmdSent || cmd.SentAt == nil || cmd.SentTo != "fe-1" || cmd.Attempts != 1 {
			t.Errorf("after dispatch: %+v", cmd)
		}
		commits := c.commitsTimed()
		c.report("fe-1", "truck-1", got[0].ID, "received")
		if cmd := c.get("truck-1", got[0].ID); cmd.State != CmdDelivered || cmd.DeliveredAt == nil {
			t.Errorf("after received: %+v", cmd)
		}
		if n := c.commitsTimed(); n < commits+1 {
			t.Errorf("a report's commit: drover_api_db_commit_duration_seconds counted %d commits, want at least %d", n, commits+1)
		}
		c.report("fe-1", "truck-1", got[0].ID, "succeeded", "unlocked", `{"locked":false}`)
		var res resp
		select {
		case res = <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("the waiting POST did not answer")
		}
		var cmd Command
		res.json(t, &cmd)
		if res.status != http.StatusCreated || cmd.State != CmdSucceeded || cmd.Payload != `{"locked":false}` || cmd.Message != "unlocked" ||
			cmd.CompletedAt == nil || cmd.DeliveredAt == nil || cmd.SentAt == nil {
			t.Errorf("waited answer %d %+v", res.status, cmd)
		}
		// A device that sends its result again (no report_ack reached it) changes nothing.
		c.report("fe-1", "truck-1", got[0].ID, "failed", "late", "")
		if again := c.get("truck-1", got[0].ID); again.State != CmdSucceeded || again.Message != "unlocked" {
			t.Errorf("a duplicate report changed the command: %+v", again)
		}
		// A report naming another device's command is ignored.
		c2 := c.send("truck-2", map[string]any{"name": "locate"})
		c.report("fe-1", "truck-1", c2.ID, "succeeded")
		if x := c.get("truck-2", c2.ID); x.State != CmdQueued {
			t.Errorf("truck-1 completed truck-2's command: %+v", x)
		}
		var page listResponse[Command]
		c.must(200, req{method: "GET", path: "/v1/devices/truck-1/commands?state=succeeded", key: c.adminKey}, &page)
		if len(page.Items) != 1 || page.Items[0].ID != got[0].ID {
			t.Errorf("list by state: %+v", page.Items)
		}
	})
}

// TestCommandExpiresWhileOffline: a command whose device never connects
// within its TTL ends expired, never sent; when the device then connects,
// nothing is dispatched.
func TestCommandExpiresWhileOffline(t *testing.T) {
	c := startCmdEnv(t, backends[0])
	cmd := c.send("truck-1", map[string]any{"name": "immobilise", "ttl": "1s"})
	var got Command
	c.must(200, req{method: "GET", path: "/v1/devices/truck-1/commands/" + cmd.ID + "?wait=5s", key: c.adminKey}, &got)
	if got.State != CmdExpired || got.SentAt != nil || got.Attempts != 0 || got.CompletedAt == nil {
		t.Fatalf("after its TTL offline: %+v", got)
	}
	c.presence("fe-1", "truck-1", true, time.Now())
	if d := c.dispatch("fe-1", "200ms"); len(d) != 0 {
		t.Errorf("an expired command was dispatched: %+v", d)
	}
}

// TestCommandExpiredNeverDispatched: expiry is checked at dispatch itself,
// not only by the sweep (which may lag): a command past its TTL is not
// handed out even while it is still marked queued.
func TestCommandExpiredNeverDispatched(t *testing.T) {
	c := startCmdEnv(t, backends[0], func(cfg *Config) { cfg.Commands.Poll = time.Hour }) // no sweep
	cmd := c.send("truck-1", map[string]any{"name": "immobilise", "ttl": "1s"})
	deadline := time.UnixMilli(cmd.ExpiresAt.UnixMilli())
	time.Sleep(time.Until(deadline) + 10*time.Millisecond) // let the TTL pass; nothing else to wait for
	c.presence("fe-1", "truck-1", true, time.Now())
	if d := c.dispatch("fe-1", "0s"); len(d) != 0 {
		t.Errorf("dispatched after expiry: %+v", d)
	}
	if got := c.get("truck-1", cmd.ID); got.State != CmdQueued {
		t.Errorf("state %s (the sweep is off)", got.State)
	}
}

// TestCommandCancel: a queued command can be cancelled and is then never
// dispatched; a sent one cannot (409).
func TestCommandCancel(t *testing.T) {
	c := startCmdEnv(t, backends[0])
	a := c.send("truck-1", map[string]any{"name": "a"})
	var got Command
	c.must(200, req{method: "POST", path: "/v1/devices/truck-1/commands/" + a.ID + "/cancel", key: c.adminKey}, &got)
	if got.State != CmdCancelled || got.CompletedAt == nil || got.CancelledBy == "" {
		t.Fatalf("cancel: %+v", got)
	}
	c.presence("fe-1", "truck-1", true, time.Now())
	if d := c.dispatch("fe-1", "0s"); len(d) != 0 {
		t.Fatalf("a cancelled command was dispatched: %+v", d)
	}
	b := c.send("truck-1", map[string]any{"name": "b"})
	if d := c.dispatch("fe-1", "5s"); len(d) != 1 || d[0].ID != b.ID {
		t.Fatalf("dispatch: %+v", d)
	}
	if r := c.do(req{method: "POST", path: "/v1/devices/truck-1/commands/" + b.ID + "/cancel", key: c.adminKey}); r.status != 409 {
		t.Errorf("cancel of a sent command: %d %s", r.status, r.body)
	}
}

// TestCommandQueueFull: past the per-device limit a command is refused
// with 429 queue_full and a Retry-After, and nothing older is dropped.
func TestCommandQueueFull(t *testing.T) {
	c := startCmdEnv(t, backends[0], func(cfg *Config) { cfg.Commands.QueueLimit = 2 })
	a := c.send("truck-1", map[string]any{"name": "a"})
	c.send("truck-1", map[string]any{"name": "b"})
	r := c.do(req{method: "POST", path: "/v1/devices/truck-1/commands", key: c.adminKey, body: map[string]any{"name": "c"}})
	if r.status != 429 || r.errCode() != "queue_full" || r.header.Get("Retry-After") == "" {
		t.Fatalf("third command: %d %s %v", r.status, r.body, r.header)
	}
	if got := c.get("truck-1", a.ID); got.State != CmdQueued {
		t.Errorf("the oldest command was touched: %+v", got)
	}
	// Another device's queue is its own.
	c.send("truck-2", map[string]any{"name": "c"})
	c.must(200, req{method: "POST", path: "/v1/devices/truck-1/commands/" + a.ID + "/cancel", key: c.adminKey}, nil)
	c.send("truck-1", map[string]any{"name": "c"})
}

// TestCommandIdempotencyKey: a retried POST with the same key answers the
// first command (200), another command under the key is a 409.
func TestCommandIdempotencyKey(t *testing.T) {
	c := startCmdEnv(t, backends[0])
	body := map[string]any{"name": "unlock", "params": map[string]string{"door": "rear"}}
	h := map[string]string{"Idempotency-Key": "req-42"}
	var first, again Command
	c.must(201, req{method: "POST", path: "/v1/devices/truck-1/commands", key: c.adminKey, body: body, header: h}, &first)
	c.must(200, req{method: "POST", path: "/v1/devices/truck-1/commands", key: c.adminKey, body: body, header: h}, &again)
	if again.ID != first.ID || again.IdempotencyKey != "req-42" {
		t.Errorf("retry made %s, first %s", again.ID, first.ID)
	}
	r := c.do(req{method: "POST", path: "/v1/devices/truck-1/commands", key: c.adminKey, header: h, body: map[string]any{"name": "lock"}})
	if r.status != 409 {
		t.Errorf("key reused for another command: %d %s", r.status, r.body)
	}
	var page listResponse[Command]
	c.must(200, req{method: "GET", path: "/v1/devices/truck-1/commands", key: c.adminKey}, &page)
	if len(page.Items) != 1 {
		t.Errorf("%d commands, want 1", len(page.Items))
	}
}

// TestCommandFollowsDevice: a command sent to a frontend that died is sent
// again, at once, to the frontend the device reconnected to (not after the
// resend delay); a stale disconnect from the old frontend neither marks the
// device offline nor requeues the command.
func TestCommandFollowsDevice(t *testing.T) {
	c := startCmdEnv(t, backends[0], func(cfg *Config) { cfg.Commands.Resend = time.Hour })
	c.presence("fe-1", "truck-1", true, time.Now())
	cmd := c.send("truck-1", map[string]any{"name": "locate"})
	if d := c.dispatch("fe-1", "5s"); len(d) != 1 {
		t.Fatalf("dispatch fe-1: %+v", d)
	}
	// fe-1 is killed; the device connects to fe-2.
	c.presence("fe-2", "truck-1", true, time.Now().Add(10*time.Millisecond))
	d := c.dispatch("fe-2", "5s")
	if len(d) != 1 || d[0].ID != cmd.ID {
		t.Fatalf("dispatch fe-2: %+v", d)
	}
	// fe-1 comes back and reports, late, that the device left it, and
	// that it could not write the command.
	c.presence("fe-1", "truck-1", false, time.Now().Add(20*time.Millisecond))
	c.report("fe-1", "truck-1", cmd.ID, "undeliverable")
	var dev Device
	c.must(200, req{method: "GET", path: "/v1/devices/truck-1", key: c.adminKey}, &dev)
	if dev.Presence == nil || dev.Presence.Frontend != "fe-2" || !dev.Presence.Connected {
		t.Errorf("presence after a stale disconnect: %+v", dev.Presence)
	}
	if got := c.get("truck-1", cmd.ID); got.State != CmdSent || got.SentTo != "fe-2" || got.Attempts != 2 {
		t.Errorf("after the move: %+v", got)
	}
	if d := c.dispatch("fe-1", "0s"); len(d) != 0 {
		t.Errorf("dispatched to the old frontend: %+v", d)
	}
}

// TestCommandOrderAndUndeliverable: a device's commands go in seq order; a
// later one waits while an earlier attempt is in flight; a command the
// frontend could not write goes back to queued and is sent again when the
// device connects again.
func TestCommandOrderAndUndeliverable(t *testing.T) {
	c := startCmdEnv(t, backends[0], func(cfg *Config) { cfg.Commands.Resend = time.Hour })
	c.presence("fe-1", "truck-1", true, time.Now())
	a := c.send("truck-1", map[string]any{"name": "a"})
	if d := c.dispatch("fe-1", "5s"); len(d) != 1 || d[0].ID != a.ID {
		t.Fatalf("first dispatch: %+v", d)
	}
	b := c.send("truck-1", map[string]any{"name": "b"})
	if d := c.dispatch("fe-1", "0s"); len(d) != 0 {
		t.Fatalf("b overtook a while a is in flight: %+v", d)
	}
	c.report("fe-1", "truck-1", a.ID, "undeliverable")
	if got := c.get("truck-1", a.ID); got.State != CmdQueued || got.SentTo != "" || got.Attempts != 1 {
		t.Errorf("after undeliverable: %+v", got)
	}
	if d := c.dispatch("fe-1", "0s"); len(d) != 0 {
		t.Fatalf("resent before the device came back: %+v", d)
	}
	c.presence("fe-1", "truck-1", true, time.Now().Add(10*time.Millisecond))
	d := c.dispatch("fe-1", "5s")
	if len(d) != 2 || d[0].ID != a.ID || d[1].ID != b.ID {
		t.Fatalf("after reconnect: %+v, want a then b", d)
	}
}

// TestCommandResentAfterDelay: an attempt the device never acknowledged
// (its frontend died with it, or the frame was lost) is sent again after
// the resend delay, found by the periodic scan without any other event.
func TestCommandResentAfterDelay(t *testing.T) {
	c := startCmdEnv(t, backends[0], func(cfg *Config) { cfg.Commands.Resend = 200 * time.Millisecond })
	c.presence("fe-1", "truck-1", true, time.Now())
	cmd := c.send("truck-1", map[string]any{"name": "locate"})
	if d := c.dispatch("fe-1", "5s"); len(d) != 1 {
		t.Fatalf("first attempt: %+v", d)
	}
	first := c.get("truck-1", cmd.ID)
	d := c.dispatch("fe-1", "5s")
	if len(d) != 1 || d[0].ID != cmd.ID {
		t.Fatalf("resend: %+v", d)
	}
	// The delay runs from the attempt as the api recorded it, not from
	// when this test got the answer (late under load).
	got := c.get("truck-1", cmd.ID)
	if got.Attempts != 2 || got.State != CmdSent || first.SentAt == nil || got.SentAt == nil {
		t.Fatalf("after the resend: %+v", got)
	}
	if gap := got.SentAt.Sub(*first.SentAt); gap < 200*time.Millisecond {
		t.Errorf("resent %v after the first attempt, before the 200ms resend delay", gap)
	}
}

// TestCommandEvents: the event stream carries the state changes of the
// caller's fleets only, in order.
func TestCommandEvents(t *testing.T) {
	c := startCmdEnv(t, backends[0])
	c.makeFleet("f-a")
	c.makeFleet("f-b")
	c.must(201, req{method: "POST", path: "/v1/devices", key: c.adminKey, body: map[string]any{"id": "a1", "fleet": "f-a"}}, nil)
	c.must(201, req{method: "POST", path: "/v1/devices", key: c.adminKey, body: map[string]any{"id": "b1", "fleet": "f-b"}}, nil)
	_, viewerA := c.makeOperator("watcher", RoleViewer, "f-a")
	hreq, _ := http.NewRequest("GET", c.base+"/v1/commands/events?max_events=2&duration=10s", nil)
	hreq.Header.Set("Authorization", "Bearer "+viewerA)
	res, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" || res.Header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("events: %d %s, X-Accel-Buffering %q (want no: a buffering proxy would hold the events)",
			res.StatusCode, res.Header.Get("Content-Type"), res.Header.Get("X-Accel-Buffering"))
	}
	sc := bufio.NewScanner(res.Body)
	if !sc.Scan() || sc.Text() != ": command events" { // subscribed from here
		t.Fatalf("first line %q", sc.Text())
	}
	c.send("b1", map[string]any{"name": "bravo-only"})
	a := c.send("a1", map[string]any{"name": "unlock"})
	c.must(200, req{method: "POST", path: "/v1/devices/a1/commands/" + a.ID + "/cancel", key: c.adminKey}, nil)
	var got []CommandEvent
	for sc.Scan() {
		line := sc.Text()
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			var ev CommandEvent
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatal(err)
			}
			got = append(got, ev)
		}
	}
	if len(got) != 2 || got[0].ID != a.ID || got[0].State != CmdQueued || got[1].State != CmdCancelled || got[1].DeviceID != "a1" {
		t.Errorf("events %+v, want a1's queued then cancelled only", got)
	}
}

// TestCommandLateReportAndFailure: a sent command is marked expired only
// after the report grace; a device's report that comes later still wins
// (it says what the device did); a failure keeps the device's message.
func TestCommandLateReportAndFailure(t *testing.T) {
	c := startCmdEnv(t, backends[0], func(cfg *Config) {
		cfg.Commands.ReportGrace, cfg.Commands.Resend = 200*time.Millisecond, time.Hour
	})
	c.presence("fe-1", "truck-1", true, time.Now())
	late := c.send("truck-1", map[string]any{"name": "unlock", "ttl": "1s"})
	if d := c.dispatch("fe-1", "5s"); len(d) != 1 {
		t.Fatalf("dispatch: %+v", d)
	}
	var got Command
	c.must(200, req{method: "GET", path: "/v1/devices/truck-1/commands/" + late.ID + "?wait=5s", key: c.adminKey}, &got)
	if got.State != CmdExpired || got.SentAt == nil {
		t.Fatalf("a sent command past its TTL and grace: %+v", got)
	}
	if exp := got.CompletedAt.Sub(got.ExpiresAt); exp < 200*time.Millisecond {
		t.Errorf("marked expired %v after its expiry, want after the 200ms grace", exp)
	}
	c.report("fe-1", "truck-1", late.ID, "succeeded", "done late", "")
	if got = c.get("truck-1", late.ID); got.State != CmdSucceeded || got.Message != "done late" {
		t.Errorf("the device's late report: %+v", got)
	}
	f := c.send("truck-1", map[string]any{"name": "immobilise"})
	if d := c.dispatch("fe-1", "5s"); len(d) != 1 || d[0].ID != f.ID {
		t.Fatalf("dispatch: %+v", d)
	}
	c.report("fe-1", "truck-1", f.ID, "failed", "engine running: refused", "")
	if got = c.get("truck-1", f.ID); got.State != CmdFailed || got.Message != "engine running: refused" || got.DeliveredAt == nil || got.CompletedAt == nil {
		t.Errorf("failed: %+v", got)
	}
	// A report of a command never sent is ignored: nothing reached the device.
	q := c.send("truck-2", map[string]any{"name": "locate"})
	c.report("fe-1", "truck-2", q.ID, "succeeded")
	if got = c.get("truck-2", q.ID); got.State != CmdQueued {
		t.Errorf("a report of a command never sent applied: %+v", got)
	}
}
