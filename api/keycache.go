package api

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The API-key cache (docs/api.md, "Keys"). Every request authenticates;
// without a cache that is one SELECT of api_keys ⨝ operators per request,
// a round trip to PostgreSQL and more than a command's own statements
// cost it (docs/performance.md). The cache keeps, per key id, what that
// SELECT read of a key that was neither revoked nor disabled: the secret's
// hash, the expiry and the principal. What it does not replace:
//
//   - The secret is checked on every request (SHA-256 and a constant-time
//     compare against the cached hash), expiry against the clock.
//   - Invalidation is as strong as the read it replaces. Every write that
//     can make a key fail or change what it may do (revoke, an operator's
//     update — role, fleets, disabled, name — or delete) evicts at its
//     commit on this replica, and on PostgreSQL tells every replica with a
//     pg_notify in the same transaction (delivered when, and only if, it
//     commits; keyNote), on the command events' listening connection.
//   - While that connection is not listening (before the first LISTEN,
//     after it failed), the cache is off on PostgreSQL: emptied, every
//     request reads the database, and it is emptied again when the
//     connection listens again — an eviction notified meanwhile was heard
//     by no one here.
//   - A read that began before an eviction is not cached after it (gen):
//     a request that read the key just before a revoke committed cannot
//     put the unrevoked key back.
//   - Only keys that exist are cached (an unknown id costs a read each
//     time: an attacker cannot fill memory), at most KeyCacheSize of them
//     (at the limit the cache is emptied, not LRU: keys are few — one per
//     operator's script or service — so the limit is only ever reached by
//     something unusual, and emptying is simple and cheap), each for at
//     most KeyCacheMaxAge: a second line of defence against a change the
//     api did not make (an operator's SQL by hand) or a lost connection
//     not yet noticed.
//
// SQLite has one replica: the cache is on from the start and evicted at
// commit.

// Causes of key cache evictions (drover_api_key_cache_evictions_total).
const (
	evictRevoke   = "revoke"
	evictOperator = "operator_changed"
	evictRemote   = "other_replica"
	evictListen   = "not_listening"
	evictMaxAge   = "max_age"
	evictSize     = "size_limit"
)

// cachedKey is what lookupKey read of an active key.
type cachedKey struct {
	hash    string // hex SHA-256 of the secret
	expires int64  // unix ms; 0: never
	p       *principal
	at      time.Time // when it was read
}

// keyCache holds the active API keys a replica read, per key id.
type keyCache struct {
	maxAge time.Duration // 0: off
	size   int

	mu  sync.Mutex
	on  bool // false: bypassed (PostgreSQL, not listening)
	gen uint64
	m   map[string]cachedKey

	// hits, misses and bypasses are the lookups counter's children,
	// resolved once: get runs on every request.
	hits, misses, bypasses prometheus.Counter
	evictions              *prometheus.CounterVec
}

func newKeyCache(maxAge time.Duration, size int, on bool, lookups, evictions *prometheus.CounterVec) *keyCache {
	return &keyCache{maxAge: maxAge, size: size, on: on && maxAge > 0, m: map[string]cachedKey{},
		hits: lookups.WithLabelValues("hit"), misses: lookups.WithLabelValues("miss"),
		bypasses: lookups.WithLabelValues("bypass"), evictions: evictions}
}

// get returns the cached key of id, if any and not older than maxAge;
// gen is to be handed to put after a read of the database.
func (c *keyCache) get(id string, now time.Time) (e cachedKey, ok bool, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on {
		c.bypasses.Inc()
		return cachedKey{}, false, c.gen
	}
	e, ok = c.m[id]
	if ok && now.Sub(e.at) >= c.maxAge {
		delete(c.m, id)
		c.evictions.WithLabelValues(evictMaxAge).Inc()
		ok = false
	}
	if ok {
		c.hits.Inc()
	} else {
		c.misses.Inc()
	}
	return e, ok, c.gen
}

// put caches e as id's, unless the cache is off or anything was evicted
// since the get that returned gen (the read may predate the eviction).
func (c *keyCache) put(id string, e cachedKey, gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.on || gen != c.gen {
		return
	}
	if len(c.m) >= c.size {
		c.evictions.WithLabelValues(evictSize).Add(float64(len(c.m)))
		clear(c.m)
	}
	c.m[id] = e
}

// evict removes the keys ids and every key of the operators ops.
func (c *keyCache) evict(cause string, ids, ops []string) {
	if c == nil || len(ids)+len(ops) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	for _, id := range ids {
		if _, ok := c.m[id]; ok {
			delete(c.m, id)
			c.evictions.WithLabelValues(cause).Inc()
		}
	}
	if len(ops) == 0 {
		return
	}
	for id, e := range c.m { // operator changes are rare: a scan is fine
		for _, op := range ops {
			if e.p.OperatorID == op {
				delete(c.m, id)
				c.evictions.WithLabelValues(cause).Inc()
				break
			}
		}
	}
}

// setOn empties the cache and turns it on (listening) or off (not, or no
// longer, listening): either way what it held may have missed an
// eviction.
func (c *keyCache) setOn(on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.evictions.WithLabelValues(evictListen).Add(float64(len(c.m)))
	clear(c.m)
	c.on = on && c.maxAge > 0
}

// len is how many keys are cached.
func (c *keyCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
