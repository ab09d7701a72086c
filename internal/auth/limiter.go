package auth

import (
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// LimitConfig configures a [Limiter].
type LimitConfig struct {
	// Failures is how many failures of one key within Window block it; 0
	// turns the limiter off.
	Failures int
	// Window is the period over which failures are counted.
	Window time.Duration
	// Block is how long a key is blocked the first time; each time it is
	// blocked again before it was forgotten, the block doubles, up to
	// MaxBlock.
	Block    time.Duration
	MaxBlock time.Duration
	// MaxKeys bounds the keys remembered; past it, the least recently
	// failed key is forgotten (and counted in [Limiter.Evictions]).
	MaxKeys int
}

// Validate reports every problem of the configuration at once; name
// prefixes each message (a flag prefix such as "auth-").
func (c LimitConfig) Validate(name string) error {
	var errs []error
	if c.Failures < 0 {
		errs = append(errs, fmt.Errorf("%sfailures: %d: want 0 (off) or more", name, c.Failures))
	}
	if c.Failures == 0 {
		return errors.Join(errs...)
	}
	if c.Window <= 0 {
		errs = append(errs, fmt.Errorf("%swindow: %v: want more than 0", name, c.Window))
	}
	if c.Block <= 0 {
		errs = append(errs, fmt.Errorf("%sblock: %v: want more than 0", name, c.Block))
	}
	if c.MaxBlock < c.Block {
		errs = append(errs, fmt.Errorf("%sblock-max: %v: want at least the block (%v)", name, c.MaxBlock, c.Block))
	}
	if c.MaxKeys < limiterShards {
		errs = append(errs, fmt.Errorf("%skeys: %d: want at least %d", name, c.MaxKeys, limiterShards))
	}
	return errors.Join(errs...)
}

// limiterShards spreads keys over this many locks, so that a flood of
// failures from many sources does not serialise every connection on one.
const limiterShards = 16

// maxKeyBytes bounds the bytes of a key kept in memory: a longer key (an
// id longer than any valid one) is cut; two such keys then share an entry,
// which only blocks sooner.
const maxKeyBytes = 128

// Limiter blocks keys (client addresses, device ids) that fail to
// authenticate too often. Only failures create state; a blocked key is
// answered from memory without doing the work it would cost. Memory is
// bounded by MaxKeys entries of at most a few hundred bytes each. It is
// safe for concurrent use.
type Limiter struct {
	cfg       LimitConfig
	seed      maphash.Seed
	shards    [limiterShards]limiterShard
	evictions atomic.Uint64
	blocks    atomic.Uint64
}

type limiterShard struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, *failures]
}

// failures is what the limiter remembers of one key.
type failures struct {
	windowStart time.Time // start of the current counting window
	count       int       // failures in the current window
	last        time.Time // last failure
	until       time.Time // blocked until then
	strikes     int       // blocks so far, for the backoff
}

// NewLimiter returns a limiter; with cfg.Failures 0 it never blocks and
// remembers nothing.
func NewLimiter(cfg LimitConfig) *Limiter {
	l := &Limiter{cfg: cfg, seed: maphash.MakeSeed()}
	if cfg.Failures == 0 {
		return l
	}
	per := max(1, cfg.MaxKeys/limiterShards)
	for i := range l.shards {
		l.shards[i].lru, _ = simplelru.NewLRU[string, *failures](per, func(string, *failures) {
			l.evictions.Add(1)
		})
	}
	return l
}

func (l *Limiter) shard(key string) (*limiterShard, string) {
	if len(key) > maxKeyBytes {
		key = key[:maxKeyBytes]
	}
	return &l.shards[maphash.String(l.seed, key)%limiterShards], key
}

// Blocked reports whether key is blocked at now, and for how much longer.
func (l *Limiter) Blocked(key string, now time.Time) (time.Duration, bool) {
	if l.cfg.Failures == 0 {
		return 0, false
	}
	s, key := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.lru.Peek(key) // a look does not make a key recent: only failures do
	if !ok || !now.Before(f.until) {
		return 0, false
	}
	return f.until.Sub(now), true
}

// Fail records a failure of key at now. When it is the one that reaches
// Failures within Window, the key is blocked and Fail returns how long
// for; otherwise it returns 0.
func (l *Limiter) Fail(key string, now time.Time) time.Duration {
	if l.cfg.Failures == 0 {
		return 0
	}
	s, key := l.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.lru.Get(key)
	// A key quiet for longer than the longest block and a window is
	// forgotten, backoff included: a device that fixed its token starts
	// afresh.
	if !ok || now.Sub(f.last) > l.cfg.MaxBlock+l.cfg.Window {
		f = &failures{windowStart: now}
		s.lru.Add(key, f)
	}
	f.last = now
	if now.Sub(f.windowStart) > l.cfg.Window {
		f.windowStart, f.count = now, 0
	}
	f.count++
	if f.count < l.cfg.Failures {
		return 0
	}
	f.strikes++
	d := l.cfg.Block
	for i := 1; i < f.strikes && d < l.cfg.MaxBlock; i++ {
		d *= 2
	}
	d = min(d, l.cfg.MaxBlock)
	f.until = now.Add(d)
	f.windowStart, f.count = now, 0
	l.blocks.Add(1)
	return d
}

// Len returns the keys remembered.
func (l *Limiter) Len() int {
	if l.cfg.Failures == 0 {
		return 0
	}
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += s.lru.Len()
		s.mu.Unlock()
	}
	return n
}

// Evictions returns how many keys were forgotten to keep within MaxKeys.
func (l *Limiter) Evictions() uint64 { return l.evictions.Load() }

// Blocks returns how many times a key was blocked.
func (l *Limiter) Blocks() uint64 { return l.blocks.Load() }
