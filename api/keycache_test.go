package api

import (
	"database/sql"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/drover-telemetry/drover/internal/testenv"
)

// TestKeyCacheRules: what the cache holds and when it lets go, without a
// server: off means bypassed; a read that began before an eviction is not
// cached after it; an operator's eviction takes its keys only; max age and
// the size limit.
func TestKeyCacheRules(t *testing.T) {
	m, _ := newMetrics(nil)
	c := newKeyCache(30*time.Second, 2, false, m.keyLookups, m.keyEvictions)
	now := time.Now()
	entry := func(op string) cachedKey {
		return cachedKey{hash: hashSecret("s"), p: newPrincipal(op, op, "k", RoleViewer, []string{"*"}), at: now}
	}
	_, ok, gen := c.get("k1", now)
	c.put("k1", entry("op1"), gen)
	if _, ok2, _ := c.get("k1", now); ok || ok2 || c.len() != 0 {
		t.Fatalf("an off cache served or kept a key")
	}
	if n := testutil.ToFloat64(m.keyLookups.WithLabelValues("bypass")); n != 2 {
		t.Errorf("bypass lookups %v, want 2", n)
	}

	c.setOn(true)
	_, _, gen = c.get("k1", now)
	c.put("k1", entry("op1"), gen)
	if _, ok, _ := c.get("k1", now); !ok {
		t.Fatal("a key put is not served")
	}
	// A read that began before an eviction (of any key) is not cached.
	_, _, gen = c.get("k2", now)
	c.evict(evictRevoke, []string{"k2"}, nil)
	c.put("k2", entry("op2"), gen)
	if _, ok, _ := c.get("k2", now); ok {
		t.Fatal("a read that began before a revoke was cached after it")
	}
	_, _, gen = c.get("k2", now)
	c.put("k2", entry("op2"), gen)
	c.evict(evictOperator, nil, []string{"op2"})
	if _, ok, _ := c.get("k2", now); ok {
		t.Error("the operator's key survived its eviction")
	}
	if _, ok, _ := c.get("k1", now); !ok {
		t.Error("another operator's key was evicted")
	}
	if _, ok, _ := c.get("k1", now.Add(30*time.Second)); ok {
		t.Error("a key older than the max age was served")
	}
	if n := testutil.ToFloat64(m.keyEvictions.WithLabelValues(evictMaxAge)); n != 1 {
		t.Errorf("max age evictions %v, want 1", n)
	}
	for _, id := range []string{"a", "b", "c"} {
		_, _, gen = c.get(id, now)
		c.put(id, entry("op"), gen)
	}
	if c.len() != 1 {
		t.Errorf("at the size limit of 2 after 3 puts the cache holds %d, want 1 (emptied, then the third)", c.len())
	}
	c.setOn(false)
	if c.len() != 0 {
		t.Error("turned off, the cache still holds keys")
	}
	off := newKeyCache(0, 10, true, m.keyLookups, m.keyEvictions) // -key-cache-max-age 0
	_, _, gen = off.get("k", now)
	off.put("k", entry("op"), gen)
	if off.len() != 0 {
		t.Error("a cache of max age 0 kept a key")
	}
}

// me is GET /v1/me with key, on e: the status and the fleets it names.
func me(e *env, key string) (int, []string) {
	var out struct{ Fleets []string }
	r := e.do(req{method: "GET", path: "/v1/me", key: key})
	if r.status == 200 {
		r.json(e.t, &out)
	}
	return r.status, out.Fleets
}

// newKey makes another key of operator opID on e and returns it and its id.
func newKey(e *env, opID string) (key, id string) {
	var k APIKey
	e.must(201, req{method: "POST", path: "/v1/operators/" + opID + "/keys", key: e.adminKey, body: map[string]any{"name": "more"}}, &k)
	return k.Key, k.ID
}

// TestKeyCacheSQLiteEvictsAtCommit: one replica, SQLite. A warm key is
// served by the cache; a revoke, a re-scope, a disable and a delete
// answered by the api take effect on the very next request.
func TestKeyCacheSQLiteEvictsAtCommit(t *testing.T) {
	e := startEnv(t, backends[0])
	for _, f := range []string{"north", "south"} {
		e.makeFleet(f)
	}
	opID, key := e.makeOperator("ops", RoleOperator, "north")
	key2, key2ID := newKey(e, opID)
	for range 2 {
		if st, _ := me(e, key); st != 200 {
			t.Fatalf("GET /v1/me: %d", st)
		}
		if st, _ := me(e, key2); st != 200 {
			t.Fatalf("GET /v1/me: %d", st)
		}
	}
	if n := testutil.ToFloat64(e.srv.metrics.keyLookups.WithLabelValues("hit")); n < 2 {
		t.Fatalf("cache hits %v after warm requests, want >= 2", n)
	}

	e.must(204, req{method: "DELETE", path: "/v1/operators/" + opID + "/keys/" + key2ID, key: e.adminKey}, nil)
	if st, _ := me(e, key2); st != 401 {
		t.Errorf("a revoked key answered %d right after its revoke, want 401", st)
	}
	e.must(200, req{method: "PATCH", path: "/v1/operators/" + opID, key: e.adminKey, body: map[string]any{"fleets": []string{"south"}}}, nil)
	if st, fl := me(e, key); st != 200 || !slices.Equal(fl, []string{"south"}) {
		t.Errorf("re-scoped key: %d %v, want 200 [south]", st, fl)
	}
	e.must(200, req{method: "PATCH", path: "/v1/operators/" + opID, key: e.adminKey, body: map[string]any{"disabled": true}}, nil)
	if st, _ := me(e, key); st != 401 {
		t.Errorf("a disabled operator's key answered %d, want 401", st)
	}
	op2, key3 := e.makeOperator("gone", RoleViewer, "north")
	me(e, key3)
	me(e, key3)
	e.must(204, req{method: "DELETE", path: "/v1/operators/" + op2, key: e.adminKey}, nil)
	if st, _ := me(e, key3); st != 401 {
		t.Errorf("a deleted operator's key answered %d, want 401", st)
	}
	if n := testutil.ToFloat64(e.srv.metrics.keyEvictions.WithLabelValues(evictRevoke)); n != 1 {
		t.Errorf("revoke evictions %v, want 1", n)
	}
	if n := testutil.ToFloat64(e.srv.metrics.keyEvictions.WithLabelValues(evictOperator)); n < 2 {
		t.Errorf("operator evictions %v, want >= 2", n)
	}
}

// TestKeyCacheAcrossReplicas: two replicas on one PostgreSQL. A warm
// request on B reads no key from the database; a revoke, a re-scope and a
// disable made on A reach B's cache within NOTIFY's delivery; a change B
// was not told of (made by hand in SQL) is served from B's cache until
// B's listening connection is cut, and refused once B listens again.
func TestKeyCacheAcrossReplicas(t *testing.T) {
	url := testenv.Postgres(t).NewDatabase(t)
	cfg := func() Config {
		c := DefaultConfig()
		c.Listen, c.DataDir, c.Driver, c.PostgresURL = "127.0.0.1:0", t.TempDir(), DriverPostgres, url
		return c
	}
	a := runEnv(t, cfg())
	b := runEnv(t, cfg())
	b.adminKey = a.adminKey
	for _, f := range []string{"north", "south"} {
		a.makeFleet(f)
	}
	opID, key := a.makeOperator("ops", RoleOperator, "north")
	key2, key2ID := newKey(a, opID)
	for _, k := range []string{key, key2} {
		if st, _ := me(b, k); st != 200 {
			t.Fatalf("GET /v1/me on B: %d", st)
		}
	}
	reads := b.srv.db.pgCount.keyReads.Load()
	if st, _ := me(b, key); st != 200 {
		t.Fatalf("GET /v1/me on B: %d", st)
	}
	if n := b.srv.db.pgCount.keyReads.Load() - reads; n != 0 {
		t.Errorf("a warm request read its key %d times from PostgreSQL, want 0", n)
	}

	a.must(204, req{method: "DELETE", path: "/v1/operators/" + opID + "/keys/" + key2ID, key: a.adminKey}, nil)
	waitFor(t, 5*time.Second, "B refusing the key revoked on A", func() bool { st, _ := me(b, key2); return st == 401 })
	a.must(200, req{method: "PATCH", path: "/v1/operators/" + opID, key: a.adminKey, body: map[string]any{"fleets": []string{"south"}}}, nil)
	waitFor(t, 5*time.Second, "B re-scoping the key re-scoped on A", func() bool {
		st, fl := me(b, key)
		return st == 200 && slices.Equal(fl, []string{"south"})
	})
	a.must(200, req{method: "PATCH", path: "/v1/operators/" + opID, key: a.adminKey, body: map[string]any{"disabled": true}}, nil)
	waitFor(t, 5*time.Second, "B refusing the key of the operator disabled on A", func() bool { st, _ := me(b, key); return st == 401 })
	if n := testutil.ToFloat64(b.srv.metrics.keyEvictions.WithLabelValues(evictRemote)); n < 3 {
		t.Errorf("B's evictions notified by A: %v, want >= 3", n)
	}

	// A revoke B is not told of: served from B's cache (the max age is
	// 30 s) until B's listening connection is cut, never after.
	_, key3 := a.makeOperator("script", RoleViewer, "north")
	key3ID, _, _ := parseAPIKey(key3)
	me(b, key3)
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE api_keys SET revoked_at = 1 WHERE id = $1`, key3ID); err != nil {
		t.Fatal(err)
	}
	if st, _ := me(b, key3); st != 200 {
		t.Fatalf("B answered %d for a key revoked behind its back, want 200 from its cache (else this test proves nothing)", st)
	}
	if _, err := db.Exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query = $1
 AND pid <> pg_backend_pid()`, `LISTEN `+commandChannel); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "B refusing the key once its listening connection was cut", func() bool { st, _ := me(b, key3); return st == 401 })
	waitFor(t, 10*time.Second, "B listening again", func() bool {
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND query = $1`,
			`LISTEN `+commandChannel).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 2 && b.srv.listening.Load()
	})
	if st, _ := me(b, key3); st != 401 {
		t.Errorf("B answered %d for the key revoked behind its back once it listened again, want 401 (its cache emptied)", st)
	}
	if n := testutil.ToFloat64(b.srv.metrics.keyEvictions.WithLabelValues(evictListen)); n < 1 {
		t.Errorf("B's evictions for not listening: %v, want >= 1", n)
	}
}
