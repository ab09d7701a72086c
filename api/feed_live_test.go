package api

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestFeedLiveTokens: the livefeed's feed answers the whole set of tokens
// in force once one changed, with hash and scopes; a long poll wakes at a
// creation or a revocation, not at a device change; revoked and expired
// tokens are not in the set; a since beyond the database answers 410.
func TestFeedLiveTokens(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		e := startEnv(t, b)
		e.makeFleet("acme")
		_, fkey := e.makeOperator("livefeeds", RoleFollower, "*")
		e.must(201, req{method: "POST", path: "/v1/devices", key: e.adminKey, body: map[string]any{"id": "t1", "fleet": "acme"}}, nil)

		var lf LiveTokenFeed
		e.must(200, req{method: "GET", path: "/v1/feed/live-tokens?since=0", key: fkey}, &lf)
		if !lf.Changed || len(lf.Tokens) != 0 || lf.Feed == "" {
			t.Fatalf("first answer: %+v", lf)
		}
		since := lf.Version

		// A device change does not wake it: the wait ends with no change.
		done := make(chan LiveTokenFeed, 1)
		go func() {
			var got LiveTokenFeed
			e.must(200, req{method: "GET", path: "/v1/feed/live-tokens?wait=600ms&since=" + itoa64(since), key: fkey}, &got)
			done <- got
		}()
		time.Sleep(100 * time.Millisecond)
		e.must(200, req{method: "PATCH", path: "/v1/devices/t1", key: e.adminKey, body: map[string]any{"name": "renamed"}}, nil)
		if got := <-done; got.Changed || len(got.Tokens) != 0 || got.Version <= since {
			t.Errorf("after a device change only: %+v (want unchanged, version past %d)", got, since)
		} else {
			since = got.Version
		}

		// A creation wakes it, well within 2 s.
		go func() {
			var got LiveTokenFeed
			e.must(200, req{method: "GET", path: "/v1/feed/live-tokens?wait=30s&since=" + itoa64(since), key: fkey}, &got)
			done <- got
		}()
		time.Sleep(100 * time.Millisecond)
		created := time.Now()
		var lt LiveToken
		e.must(201, req{method: "POST", path: "/v1/live-tokens", key: e.adminKey, body: map[string]any{
			"name": "wall", "fleets": []string{"acme"}, "devices": []string{"t1"},
			"area": map[string]float64{"min_lat": -27, "min_lon": 27, "max_lat": -25, "max_lon": 29}}}, &lt)
		select {
		case got := <-done:
			if lag := time.Since(created); lag > 2*time.Second {
				t.Errorf("long poll answered %v after the creation", lag)
			}
			if !got.Changed || len(got.Tokens) != 1 {
				t.Fatalf("after a creation: %+v", got)
			}
			tok := got.Tokens[0]
			if tok.ID != lt.ID || tok.Name != "wall" || tok.H != hashSecret(lt.Token) || strings.Join(tok.Fleets, ",") != "acme" ||
				strings.Join(tok.Devices, ",") != "t1" || tok.Area == nil || tok.Area.MinLat != -27 || tok.Area.MaxLon != 29 ||
				tok.ExpiresAt != lt.ExpiresAt.UnixMilli() {
				t.Errorf("token in the feed %+v, created %+v", tok, lt)
			}
			since = got.Version
		case <-time.After(10 * time.Second):
			t.Fatal("a live token creation did not wake the long poll")
		}

		// A token about to expire is in the set, then not.
		var short LiveToken
		e.must(201, req{method: "POST", path: "/v1/live-tokens", key: e.adminKey, body: map[string]any{
			"name": "short", "fleets": []string{"acme"}, "expires_in_seconds": 1}}, &short)
		e.must(200, req{method: "GET", path: "/v1/feed/live-tokens?since=" + itoa64(since), key: fkey}, &lf)
		if len(lf.Tokens) != 2 {
			t.Fatalf("with a second token: %+v", lf)
		}
		time.Sleep(time.Until(short.ExpiresAt) + 50*time.Millisecond)

		// A revocation wakes it; neither the revoked nor the expired token
		// is in the set.
		e.must(204, req{method: "DELETE", path: "/v1/live-tokens/" + lt.ID, key: e.adminKey}, nil)
		e.must(200, req{method: "GET", path: "/v1/feed/live-tokens?wait=5s&since=" + itoa64(since), key: fkey}, &lf)
		if !lf.Changed || len(lf.Tokens) != 0 {
			t.Errorf("after the revocation and the expiry: %+v", lf)
		}

		// A since beyond this database: resync.
		if r := e.do(req{method: "GET", path: "/v1/feed/live-tokens?since=99999999", key: fkey}); r.status != 410 || r.errCode() != "resync_required" {
			t.Errorf("since beyond the database: %d %s", r.status, r.body)
		}
	})
}

// TestFeedID: the snapshot and the changes name one feed id, the same
// after the database is opened again; another database has another.
func TestFeedID(t *testing.T) {
	e := startEnv(t, backends[0])
	_, fkey := e.makeOperator("frontends", RoleFollower, "*")
	f := &follower{e: e, key: fkey}
	f.snapshot(t)
	var ch FeedChanges
	e.must(200, req{method: "GET", path: "/v1/feed/changes?since=0", key: fkey}, &ch)
	if ch.Feed == "" || ch.Feed != e.srv.db.feedID {
		t.Fatalf("changes feed %q, server's %q", ch.Feed, e.srv.db.feedID)
	}
	again, err := e.srv.db.ensureFeedID(t.Context())
	if err != nil || again != ch.Feed {
		t.Errorf("feed id read again: %q, %v; want %q", again, err, ch.Feed)
	}
	other := startEnv(t, backends[0])
	if other.srv.db.feedID == ch.Feed {
		t.Error("two databases have one feed id")
	}
}

// TestFollowerKeyFile: -follower-key-file holds a working follower key
// after a start; the key is kept while it works and replaced, with the
// file, once it was revoked.
func TestFollowerKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "follower-key")
	e := startEnv(t, backends[0], func(c *Config) { c.FollowerKeyFile = path })
	read := func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
			t.Errorf("follower key file mode %v, want 0600", st.Mode().Perm())
		}
		return strings.TrimSpace(string(b))
	}
	key := read()
	e.must(200, req{method: "GET", path: "/v1/feed/changes?since=0", key: key}, nil)
	var me map[string]any
	e.must(200, req{method: "GET", path: "/v1/me", key: key}, &me)
	if me["role"] != RoleFollower {
		t.Errorf("the key file's key is a %v", me["role"])
	}
	if r := e.do(req{method: "GET", path: "/v1/devices", key: key}); r.status != 403 {
		t.Errorf("the follower key lists devices: %d", r.status)
	}
	if err := e.srv.ensureFollowerKey(t.Context()); err != nil {
		t.Fatal(err)
	}
	if read() != key {
		t.Error("a working key was replaced at a start")
	}
	keyID, _, _ := parseAPIKey(key)
	e.must(204, req{method: "DELETE", path: "/v1/operators/" + me["operator_id"].(string) + "/keys/" + keyID, key: e.adminKey}, nil)
	if err := e.srv.ensureFollowerKey(t.Context()); err != nil {
		t.Fatal(err)
	}
	fresh := read()
	if fresh == key {
		t.Fatal("a revoked key was kept")
	}
	e.must(200, req{method: "GET", path: "/v1/feed/changes?since=0", key: fresh}, nil)
	var ops listResponse[Operator]
	e.must(200, req{method: "GET", path: "/v1/operators", key: e.adminKey}, &ops)
	n := 0
	for _, op := range ops.Items {
		if op.Name == followerOperatorName {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d follower operators, want 1 (reused for the new key)", n)
	}
}

// TestSeed: Config.Seed creates the devices that do not exist, with their
// fleets, classes and regions; a later start leaves existing devices as
// an operator changed them.
func TestSeed(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		seed := []ImportRow{
			{ID: "sim-1", Fleet: "sim-fleet", Class: "truck", Region: "gauteng", TokenSHA256: hashSecret("tok-1")},
			{ID: "sim-2", Fleet: "sim-fleet", TokenSHA256: hashSecret("tok-2")},
		}
		e := startEnv(t, b, func(c *Config) { c.Seed = seed })
		var d Device
		e.must(200, req{method: "GET", path: "/v1/devices/sim-1", key: e.adminKey}, &d)
		if d.Fleet != "sim-fleet" || d.Class != "truck" || d.Region != "gauteng" || d.State != StateActive || !d.Credential.HasToken {
			t.Fatalf("seeded device %+v", d)
		}
		e.must(200, req{method: "POST", path: "/v1/devices/sim-2/state", key: e.adminKey, body: map[string]any{"state": "suspended"}}, nil)
		e.srv.cfg.Seed = append(seed, ImportRow{ID: "sim-3", Fleet: "sim-fleet"})
		if err := e.srv.seed(t.Context()); err != nil {
			t.Fatal(err)
		}
		e.must(200, req{method: "GET", path: "/v1/devices/sim-2", key: e.adminKey}, &d)
		if d.State != StateSuspended {
			t.Errorf("a seed undid an operator's suspension: %+v", d)
		}
		e.must(200, req{method: "GET", path: "/v1/devices/sim-3", key: e.adminKey}, nil)
	})
}
