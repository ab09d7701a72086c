package api

import (
	"sync"

	"bufio"
	"bytes"
	"encoding/json"
	"github.com/drover-telemetry/drover/internal/testenv"
	"strings"
	"testing"
	"time"
)

// follower is what a frontend does (internal/registry), reduced to a map: take a
// snapshot, then apply changes in order.
type follower struct {
	e       *env
	key     string
	version int64
	devices map[string]FeedDevice
}

func (f *follower) snapshot(t *testing.T) {
	t.Helper()
	res := f.e.must(200, req{method: "GET", path: "/v1/feed/snapshot", key: f.key}, nil)
	if ct := res.header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Fatalf("snapshot Content-Type %q", ct)
	}
	f.devices = map[string]FeedDevice{}
	sc := bufio.NewScanner(bytes.NewReader(res.body))
	var header struct{ Snapshot struct{ Version int64 } }
	var trailer struct{ End *struct{ Devices int } }
	lines := 0
	for sc.Scan() {
		lines++
		switch {
		case lines == 1:
			if err := json.Unmarshal(sc.Bytes(), &header); err != nil {
				t.Fatalf("snapshot header: %v", err)
			}
		case bytes.HasPrefix(sc.Bytes(), []byte(`{"end"`)):
			if err := json.Unmarshal(sc.Bytes(), &trailer); err != nil {
				t.Fatalf("snapshot trailer: %v", err)
			}
		default:
			var d FeedDevice
			if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
				t.Fatalf("snapshot line %d: %v", lines, err)
			}
			f.devices[d.ID] = d
		}
	}
	if trailer.End == nil || trailer.End.Devices != len(f.devices) {
		t.Fatalf("snapshot trailer %+v for %d devices", trailer.End, len(f.devices))
	}
	f.version = header.Snapshot.Version
}

// poll asks for changes once (with wait) and applies them.
func (f *follower) poll(t *testing.T, wait string) FeedChanges {
	t.Helper()
	var ch FeedChanges
	f.e.must(200, req{method: "GET", path: "/v1/feed/changes?since=" + itoa64(f.version) + "&wait=" + wait, key: f.key}, &ch)
	for _, d := range ch.Changes {
		if d.V <= f.version {
			t.Errorf("change %+v not after since=%d", d, f.version)
		}
		if d.Del {
			delete(f.devices, d.ID)
		} else {
			f.devices[d.ID] = d
		}
	}
	f.version = ch.Version
	return ch
}

func itoa64(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestFeedFollowsEveryChange: a follower that took a snapshot and applies
// changes holds exactly what the registry holds, through creates,
// credential changes, state changes, fleet moves and deletes; a long poll
// wakes at a change well inside the 2 s a frontend has.
func TestFeedFollowsEveryChange(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("acme")
		e.makeFleet("beta")
		_, fkey := e.makeOperator("frontends", RoleFollower, "*")
		var d Device
		e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{"id": "t1", "fleet": "acme", "issue_token": true}}, &d)
		f := &follower{e: e, key: fkey}
		f.snapshot(t)
		if got := f.devices["t1"]; got.H != hashSecret(d.Token) || got.Fleet != "acme" || got.State != "active" {
			t.Fatalf("snapshot t1 = %+v", got)
		}

		// A long poll with nothing to say waits, then answers empty.
		start := time.Now()
		if ch := f.poll(t, "200ms"); len(ch.Changes) != 0 || time.Since(start) < 150*time.Millisecond {
			t.Errorf("empty poll: %+v after %v", ch, time.Since(start))
		}

		// A long poll wakes at a change.
		type result struct {
			ch  FeedChanges
			err error
		}
		done := make(chan time.Duration, 1)
		go func() {
			s := time.Now()
			var ch FeedChanges
			res := e.do(req{method: "GET", path: "/v1/feed/changes?since=" + itoa64(f.version) + "&wait=30s", key: fkey})
			res.json(t, &ch)
			done <- time.Since(s)
		}()
		time.Sleep(100 * time.Millisecond) // let the poll start waiting (it would also see the change if not)
		changedAt := time.Now()
		var rot Device
		e.must(201, req{method: "POST", path: "/v1/devices/t1/token/rotate", key: e.adminKey, body: map[string]any{"overlap_seconds": 600}}, &rot)
		select {
		case <-done:
			if lag := time.Since(changedAt); lag > 2*time.Second {
				t.Errorf("long poll answered %v after the change", lag)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("long poll did not wake at a change")
		}
		f.poll(t, "0s")
		got := f.devices["t1"]
		if got.H != hashSecret(rot.Token) || got.PH != hashSecret(d.Token) || got.PU < time.Now().Add(590*time.Second).UnixMilli() {
			t.Errorf("after rotate: %+v", got)
		}

		// Suspend, move, create, delete: the follower converges.
		e.must(200, req{method: "POST", path: "/v1/devices/t1/state", key: e.adminKey, body: map[string]any{"state": "suspended"}}, nil)
		e.must(200, req{method: "PATCH", path: "/v1/devices/t1", key: e.adminKey, body: map[string]any{"fleet": "beta"}}, nil)
		e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{"id": "t2", "fleet": "acme"}}, nil)
		e.must(200, req{method: "POST", path: "/v1/devices/t2/state", key: e.adminKey, body: map[string]any{"state": "decommissioned"}}, nil)
		e.must(204, req{method: "DELETE", path: "/v1/devices/t2", key: e.adminKey}, nil)
		e.must(204, req{method: "DELETE", path: "/v1/devices/t1/token", key: e.adminKey}, nil)
		f.poll(t, "0s")
		got = f.devices["t1"]
		if got.State != "suspended" || got.Fleet != "beta" || got.H != "" || got.PH != "" {
			t.Errorf("after suspend, move and revoke: %+v", got)
		}
		if _, ok := f.devices["t2"]; ok {
			t.Error("the deleted device is still in the follower's copy")
		}
		// A fresh snapshot agrees with the follower.
		g := &follower{e: e, key: fkey}
		g.snapshot(t)
		if jsonString(g.devices) != jsonString(f.devices) {
			t.Errorf("follower and a fresh snapshot differ:\n%v\n%v", f.devices, g.devices)
		}
	})
}

// TestFeedPagesAndResync: changes come in pages with more=true; a since
// older than the pruned tombstones, or newer than the database, answers
// 410 resync_required.
func TestFeedPagesAndResync(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b, func(c *Config) { c.TombstoneRetention = time.Millisecond })
		_, fkey := e.makeOperator("frontends", RoleFollower, "*")
		var rows []map[string]any
		for i := range 30 {
			rows = append(rows, map[string]any{"id": "d" + pad(i), "state": "decommissioned"})
		}
		var imp ImportResult
		e.must(200, req{method: "POST", path: "/v1/imports/devices", key: e.adminKey, body: map[string]any{"devices": rows}}, &imp)
		var ch FeedChanges
		e.must(200, req{method: "GET", path: "/v1/feed/changes?since=0&limit=10", key: fkey}, &ch)
		if len(ch.Changes) != 10 || !ch.More || ch.Version != ch.Changes[9].V {
			t.Fatalf("first page: %d changes, more=%v, version %d", len(ch.Changes), ch.More, ch.Version)
		}
		seen := len(ch.Changes)
		for ch.More {
			e.must(200, req{method: "GET", path: "/v1/feed/changes?limit=10&since=" + itoa64(ch.Version), key: fkey}, &ch)
			seen += len(ch.Changes)
		}
		if seen != 30 || ch.Version != imp.Version {
			t.Errorf("paged through %d changes to version %d, want 30 to %d", seen, ch.Version, imp.Version)
		}
		e.must(204, req{method: "DELETE", path: "/v1/devices/d00", key: e.adminKey}, nil)
		if err := e.srv.pruneOnce(t.Context(), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		for _, since := range []string{"1", "999999"} {
			r := e.do(req{method: "GET", path: "/v1/feed/changes?since=" + since, key: fkey})
			if r.status != 410 || r.errCode() != "resync_required" {
				t.Errorf("since=%s after pruning: %d %s", since, r.status, r.body)
			}
		}
		// A new snapshot puts the follower past the horizon again.
		f := &follower{e: e, key: fkey}
		f.snapshot(t)
		if len(f.devices) != 29 {
			t.Errorf("snapshot after the delete: %d devices, want 29", len(f.devices))
		}
		f.poll(t, "0s")
	})
}

// TestPresence: reports from frontends show on the device; an older report
// does not overwrite a newer one (a device that moved between frontends);
// unknown devices are skipped.
func TestPresence(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		_, fkey := e.makeOperator("frontends", RoleFollower, "*")
		e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{"id": "p1"}}, nil)
		now := time.Now().UTC().Truncate(time.Millisecond)
		var out struct{ Received, Stored int }
		e.must(200, req{method: "POST", path: "/v1/feed/presence", key: fkey, body: map[string]any{"frontend": "fe-1", "reports": []map[string]any{
			{"id": "p1", "seen_at": now, "remote_addr": "10.0.0.1:4000", "connected": true},
			{"id": "ghost", "seen_at": now, "remote_addr": "10.0.0.9:4000", "connected": true},
		}}}, &out)
		if out.Received != 2 || out.Stored != 1 {
			t.Errorf("presence answer %+v", out)
		}
		e.must(200, req{method: "POST", path: "/v1/feed/presence", key: fkey, body: map[string]any{"frontend": "fe-0", "reports": []map[string]any{
			{"id": "p1", "seen_at": now.Add(-time.Minute), "remote_addr": "10.0.0.2:4000", "connected": false},
		}}}, nil)
		var d Device
		e.must(200, req{method: "GET", path: "/v1/devices/p1", key: e.adminKey}, &d)
		if d.Presence == nil || d.Presence.Frontend != "fe-1" || d.Presence.RemoteAddr != "10.0.0.1:4000" || !d.Presence.Connected ||
			!d.Presence.LastSeenAt.Equal(now) {
			t.Errorf("presence = %+v", d.Presence)
		}
		if r := e.do(req{method: "POST", path: "/v1/feed/presence", key: fkey, body: map[string]any{"frontend": "fe-1",
			"reports": []map[string]any{{"id": "bad id", "seen_at": now}}}}); r.status != 422 {
			t.Errorf("bad id in presence: %d %s", r.status, r.body)
		}
		if strings.Contains(string(e.do(req{method: "GET", path: "/v1/audit", key: e.adminKey}).body), "10.0.0.1") {
			t.Error("presence is audited (it is not a registry change)")
		}
	})
}

// TestFeedAcrossReplicas: two replicas on one PostgreSQL. They start
// together and create one bootstrap admin between them; a change made
// through one wakes a follower's long poll on the other within 2 s.
func TestFeedAcrossReplicas(t *testing.T) {
	url := testenv.Postgres(t).NewDatabase(t)
	cfg := func() Config {
		c := DefaultConfig()
		c.Listen, c.DataDir, c.Driver, c.PostgresURL = "127.0.0.1:0", t.TempDir(), DriverPostgres, url
		c.FeedPoll = 50 * time.Millisecond
		return c
	}
	envs := make([]*env, 2)
	var wg sync.WaitGroup
	for i := range envs {
		c := cfg()
		wg.Go(func() { envs[i] = runEnv(t, c) })
	}
	wg.Wait()
	a, b := envs[0], envs[1]
	key := a.adminKey
	if key == "" {
		key = b.adminKey
	}
	if a.adminKey != "" && b.adminKey != "" {
		t.Fatal("both replicas created a bootstrap admin")
	}
	a.adminKey, b.adminKey = key, key
	var ops listResponse[Operator]
	b.must(200, req{method: "GET", path: "/v1/operators", key: key}, &ops)
	if len(ops.Items) != 1 {
		t.Fatalf("%d operators after two first starts, want 1", len(ops.Items))
	}
	_, fkey := a.makeOperator("frontends", RoleFollower, "*")
	f := &follower{e: b, key: fkey}
	f.snapshot(t)
	done := make(chan FeedChanges, 1)
	go func() {
		var ch FeedChanges
		b.do(req{method: "GET", path: "/v1/feed/changes?wait=30s&since=" + itoa64(f.version), key: fkey}).json(t, &ch)
		done <- ch
	}()
	time.Sleep(100 * time.Millisecond)
	changed := time.Now()
	a.must(201, req{method: "POST", path: "/v1/devices", key: key, body: map[string]any{"id": "via-a"}}, nil)
	select {
	case ch := <-done:
		if lag := time.Since(changed); lag > 2*time.Second || len(ch.Changes) != 1 || ch.Changes[0].ID != "via-a" {
			t.Errorf("replica b answered %+v after %v", ch, lag)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a change on replica a never woke a long poll on replica b")
	}
}
