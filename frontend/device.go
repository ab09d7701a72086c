package frontend

import (
	"container/list"
	"sync"
	"time"
)

// device is what the frontend remembers of one device between frames and
// across its reconnections: the highest sequence it acked and the device's
// rate budgets. It lives in memory only (see devices): a restart, or
// eviction, forgets it, which costs nothing but a re-store of readings the
// device resends (the sinks drop duplicates by (device, seq)).
type device struct {
	id string

	// mu serialises the frames of this device from decode to append, across
	// connections: while an older connection finishes a frame, the newer one
	// waits, so a resend is seen as one and stored once. It is released
	// before the ack is written, so a slow socket holds back only itself.
	mu      sync.Mutex
	acked   uint64 // highest seq stored and acked; guarded by mu
	live    bucket // guarded by mu
	backlog bucket // guarded by mu

	// Guarded by devices.mu.
	conn *conn         // the connection in force; nil when disconnected
	idle *list.Element // position in devices.idle while disconnected
	flap flapState
}

// flapState counts a device's connections for the flapping limit
// (AdmissionConfig.FlapConnects): kept with the rest of the device's
// state, so that it costs a few words per device and is forgotten with
// the device.
type flapState struct {
	windowStart time.Time // start of the current counting window
	count       int       // connections in the window
	until       time.Time // held back until then
	strikes     int       // holds so far, for the doubling
}

// bucket is a token bucket of readings. The zero bucket is full.
type bucket struct {
	tokens float64
	last   time.Time
}

// level returns the tokens the bucket holds at now.
func (b *bucket) level(now time.Time, rate float64, burst int) float64 {
	if b.last.IsZero() {
		return float64(burst)
	}
	t := b.tokens + now.Sub(b.last).Seconds()*rate
	return min(t, float64(burst))
}

// admit takes live and old readings from the device's two buckets if both
// hold enough, and takes nothing otherwise: a frame is admitted whole or not
// at all. Call with d.mu held.
func (d *device) admit(live, old int, now time.Time, lim *Config) bool {
	lt := d.live.level(now, lim.Rate, lim.RateBurst)
	bt := d.backlog.level(now, lim.BacklogRate, lim.BacklogBurst)
	if float64(live) > lt || float64(old) > bt {
		return false
	}
	d.live = bucket{tokens: lt - float64(live), last: now}
	d.backlog = bucket{tokens: bt - float64(old), last: now}
	return true
}

// devices is the set of device states, bounded: every connected device, plus
// at most maxIdle disconnected ones, the least recently connected dropped
// first. At ~150 bytes a device, the default 100,000 idle devices cost ~15 MB.
type devices struct {
	mu      sync.Mutex
	byID    map[string]*device
	idle    *list.List // of *device, most recently disconnected first
	maxIdle int
	onSize  func(n int)
}

func newDevices(maxIdle int, onSize func(int)) *devices {
	return &devices{byID: make(map[string]*device), idle: list.New(), maxIdle: maxIdle, onSize: onSize}
}

// attach makes c the connection in force for its device, sets c.dev, and
// returns the device and the connection it replaces, if any (the caller
// closes that one). c.dev is set under the lock that connOf and connected
// take, so that who finds c through them sees its device.
func (ds *devices) attach(id string, c *conn) (*device, *conn) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	d := ds.byID[id]
	if d == nil {
		d = &device{id: id}
		ds.byID[id] = d
		ds.onSize(len(ds.byID))
	}
	c.dev = d
	if d.idle != nil {
		ds.idle.Remove(d.idle)
		d.idle = nil
	}
	old := d.conn
	d.conn = c
	return d, old
}

// flapping reports whether the device id is held back for reconnecting too
// often at now, and for how much longer.
func (ds *devices) flapping(id string, now time.Time) (time.Duration, bool) {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	d := ds.byID[id]
	if d == nil || !now.Before(d.flap.until) {
		return 0, false
	}
	return d.flap.until.Sub(now), true
}

// countConnect counts a connection of d at now towards the flapping limit
// a; when it is the one past the limit, d is held back and countConnect
// returns for how long (each hold twice the last, up to a.FlapMaxBlock; a
// device that stayed calm for a whole window and the longest hold starts
// afresh).
func (ds *devices) countConnect(d *device, now time.Time, a *AdmissionConfig) time.Duration {
	if a.FlapConnects <= 0 {
		return 0
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	f := &d.flap
	if now.Sub(f.windowStart) > a.FlapWindow {
		if now.Sub(f.windowStart) > a.FlapWindow+a.FlapMaxBlock {
			f.strikes = 0
		}
		f.windowStart, f.count = now, 0
	}
	f.count++
	if f.count <= a.FlapConnects {
		return 0
	}
	f.strikes++
	hold := a.FlapBlock
	for i := 1; i < f.strikes && hold < a.FlapMaxBlock; i++ {
		hold *= 2
	}
	hold = min(hold, a.FlapMaxBlock)
	f.until = now.Add(hold)
	f.windowStart, f.count = now, 0
	return hold
}

// detach records that c has ended. If c was the device's connection in
// force, the device becomes idle, and the oldest idle devices beyond maxIdle
// are forgotten; it reports whether c was.
func (ds *devices) detach(d *device, c *conn) bool {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if d.conn != c {
		return false // replaced: the newer connection owns the device now
	}
	d.conn = nil
	d.idle = ds.idle.PushFront(d)
	for ds.idle.Len() > ds.maxIdle {
		e := ds.idle.Back()
		old := e.Value.(*device)
		ds.idle.Remove(e)
		old.idle = nil
		delete(ds.byID, old.id)
	}
	ds.onSize(len(ds.byID))
	return true
}

// connOf returns the connection in force of the device id, nil if none.
func (ds *devices) connOf(id string) *conn {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if d := ds.byID[id]; d != nil {
		return d.conn
	}
	return nil
}

// connected returns the connections in force, for the presence refresh.
func (ds *devices) connected() []*conn {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	out := make([]*conn, 0, len(ds.byID)-ds.idle.Len())
	for _, d := range ds.byID {
		if d.conn != nil {
			out = append(out, d.conn)
		}
	}
	return out
}
