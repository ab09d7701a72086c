package livefeed

// Shared streams: clients that follow the same filter and keep up are fed
// one stream of update messages, built and framed once.

import (
	"maps"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// maxSharedBehind bounds the bytes of shared messages a member of a
	// stream may have waiting for its writer; past it the member leaves
	// the stream for its own conflating path (see stream.publish). It is
	// also the most a member holds of the stream's messages: they are
	// shared, so what it holds is what the slowest member keeps alive.
	maxSharedBehind = 4 << 20
	// maxRound bounds how long a stream waits, after handing out a
	// message, for the members that were keeping up to write it before it
	// takes the next (stream.flush): the wait that makes a busy stream send
	// fewer, larger messages, never longer than this for a member that
	// stalls.
	maxRound = 50 * time.Millisecond
	// Reasons of drover_livefeed_stream_leaves_total.
	leaveBehind      = "behind"      // fell behind the stream
	leaveResubscribe = "resubscribe" // subscribed again or unsubscribed
	leaveClosed      = "closed"      // the connection ended
)

// stream is the shared stream of the clients of one key (same scope, same
// filter, same rate: streamKey). Its conflation state is a client's, with
// no connection (c: offered by dispatch as any client, taken by run); what
// it takes is built into one message, framed once (a gorilla
// PreparedMessage: also compressed once for the clients that negotiated
// permessage-deflate) and handed to every member, whose writer writes the
// same bytes. A member costs one wake-up and one write(2) per message and
// nothing per vehicle.
//
// A client joins when its own path is drained (snapshot written, nothing
// due or held) and another subscribed client has its key; it leaves when
// it falls maxSharedBehind behind, and then resumes on its own path with
// the latest state of every vehicle the stream may have told it about
// (conflation, as for any client that falls behind), or when it subscribes
// again or ends. members and a client's stream field are guarded by
// Feed.hubMu.
type stream struct {
	key     string
	c       *client
	members map[*client]struct{}
}

// sharedMsg is one message of a stream, as its members write it.
type sharedMsg struct {
	pm      *websocket.PreparedMessage
	seq     uint64   // the stream's take that built it (client.takes)
	size    int      // bytes of the message's payload
	updates int      // vehicle updates and removals in it
	oldest  int64    // ingest time (Unix ns) of its oldest update, 0 if none
	removed []string // vehicles it removes: for a member that drops it
	// pending counts the members that were keeping up when it was handed
	// out (nothing of the stream's waiting for them) and have not yet
	// written or dropped it, plus the publisher's own hold until it has
	// handed it to every member; written is closed when it reaches 0.
	pending atomic.Int32
	written chan struct{}
}

// done says that one holder of m has written or dropped it.
func (m *sharedMsg) done() {
	if m.pending.Add(-1) == 0 {
		close(m.written)
	}
}

// sharedRef is a stream's message in a member's queue; counted says the
// member was keeping up when it got it, so the stream waits for it.
type sharedRef struct {
	m       *sharedMsg
	counted bool
}

// release says the member has written or dropped the message.
func (r sharedRef) release() {
	if r.counted {
		r.m.done()
	}
}

// releaseAll releases refs (a member's queue it drops).
func releaseAll(refs []sharedRef) {
	for _, r := range refs {
		r.release()
	}
}

// streamKey says which clients may share a stream: those with the same
// scope and the same subscription criteria and rate. The subscription's id
// is not in it: update messages do not carry it.
func streamKey(sc *scope, sub *subscription) string {
	var b strings.Builder
	list := func(tag string, l []string, set bool) {
		b.WriteString(tag)
		if !set {
			b.WriteString("-")
			return
		}
		for _, s := range l {
			b.WriteString(strconv.Quote(s))
		}
	}
	area := func(tag string, a *box) {
		b.WriteString(tag)
		if a != nil {
			for _, n := range []int32{a.west, a.south, a.east, a.north} {
				b.WriteString(strconv.FormatInt(int64(n), 10))
				b.WriteByte(',')
			}
		}
	}
	list("S", sc.list, true)
	list("D", sc.deviceList, sc.devices != nil)
	area("A", sc.area)
	list("d", sub.deviceList, sub.devices != nil)
	list("f", sub.fleetList, sub.fleets != nil)
	area("b", sub.box)
	b.WriteString("r")
	b.WriteString(strconv.FormatUint(math.Float64bits(sub.rate), 16))
	return b.String()
}

// rekey records the key of c's subscription (empty: none), takes c out of
// its stream if it is in one, and counts the clients of each key: a stream
// is made only for a key two clients have.
func (f *Feed) rekey(c *client, key string) {
	f.hubMu.Lock()
	defer f.hubMu.Unlock()
	if c.stream != nil {
		f.leaveLocked(c, leaveResubscribe)
		f.hubAdd(c)
	}
	f.unkeyLocked(c)
	c.key = key
	if key != "" {
		f.keys[key]++
	}
}

// unkeyLocked takes c's key out of the count of each key's clients. The
// caller holds hubMu.
func (f *Feed) unkeyLocked(c *client) {
	if c.key == "" {
		return
	}
	if f.keys[c.key]--; f.keys[c.key] <= 0 {
		delete(f.keys, c.key)
	}
	c.key = ""
}

// tryJoin puts c in its key's stream if c's own path is drained and its
// key has a stream or another client. Its writer calls it when idle.
func (f *Feed) tryJoin(c *client) {
	if !f.cfg.SharedStreams || !c.drained() {
		return
	}
	// Its writer calls this at every wake-up: a client alone with its key
	// (a filter of its own) must not take the write lock that ingest's
	// dispatch waits for each time.
	f.hubMu.RLock()
	possible := c.stream == nil && c.key != "" && (f.streams[c.key] != nil || f.keys[c.key] >= 2)
	f.hubMu.RUnlock()
	if !possible {
		return
	}
	f.hubMu.Lock()
	defer f.hubMu.Unlock()
	if c.stream != nil || c.key == "" {
		return
	}
	s := f.streams[c.key]
	if s == nil {
		if f.keys[c.key] < 2 {
			return
		}
		s = f.newStream(c)
	}
	s.c.mu.Lock()
	c.mu.Lock()
	ok := c.drainedLocked() && !c.stopping
	if ok {
		// The stream may have to remove what c shows: it takes c's
		// vehicles as shown (a removal c does not need is harmless).
		for id, at := range c.shown {
			if _, shown := s.c.shown[id]; !shown {
				s.c.shown[id] = at
			}
		}
		c.shown = make(map[string]int64)
		c.stream = s
		// A message the stream took before now has nothing c's own path
		// did not write, and may have older states than it did.
		c.joinedAt = s.c.takes
	}
	c.mu.Unlock()
	s.c.mu.Unlock()
	if ok {
		s.members[c] = struct{}{}
		f.hubRemove(c)
		f.m.streamJoins.Inc()
		f.m.streamClients.Inc()
	} else if len(s.members) == 0 {
		f.dropStream(s)
	}
}

// newStream makes the stream of c's key, registers it in the hub and starts
// it. The caller holds hubMu.
func (f *Feed) newStream(c *client) *stream {
	c.mu.Lock()
	sub := c.sub
	c.mu.Unlock()
	sc := &client{
		f:      f,
		who:    &principal{name: "stream", scope: c.who.scope},
		wake:   make(chan struct{}, 1),
		stopCh: make(chan struct{}),
		due:    make(map[string]pendingItem),
		held:   make(map[string]pendingItem),
		shown:  make(map[string]int64),
		sub:    sub,
	}
	s := &stream{key: c.key, c: sc, members: make(map[*client]struct{})}
	sc.streamOf = s
	f.streams[c.key] = s
	f.hubAdd(sc)
	f.m.streams.Inc()
	go s.run()
	return s
}

// dropStream ends a stream without members. The caller holds hubMu.
func (f *Feed) dropStream(s *stream) {
	if f.streams[s.key] != s {
		return
	}
	delete(f.streams, s.key)
	f.hubRemove(s.c)
	s.c.mu.Lock()
	s.c.stopping = true
	s.c.mu.Unlock()
	close(s.c.stopCh)
	f.m.streams.Dec()
}

// leaveLocked takes c out of its stream, dropping the shared messages it
// has not written, and ends the stream if c was its last member. The
// caller holds hubMu and puts c back in the hub if it is to be offered
// updates itself.
func (f *Feed) leaveLocked(c *client, reason string) {
	s := c.stream
	c.mu.Lock()
	c.stream = nil
	releaseAll(c.shared)
	c.shared, c.sharedBytes = nil, 0
	c.mu.Unlock()
	delete(s.members, c)
	f.m.streamLeaves.WithLabelValues(reason).Inc()
	f.m.streamClients.Dec()
	if len(s.members) == 0 {
		f.dropStream(s)
	}
}

// detach moves a member that fell behind to its own path: the shared
// messages it has not written (and extra, which it did not get) are
// dropped, and it is due the latest state of every vehicle the stream has
// shown, has due or holds, or removed in those messages: an update if the
// vehicle is still for it, else a removal. What it then shows is what the
// stream shows.
func (f *Feed) detach(c *client, s *stream, extra *sharedMsg) {
	f.hubMu.Lock()
	defer f.hubMu.Unlock()
	if c.stream != s {
		return
	}
	s.c.mu.Lock()
	ids := make(map[string]struct{}, len(s.c.shown)+len(s.c.due)+len(s.c.held))
	for _, m := range []map[string]pendingItem{s.c.due, s.c.held} {
		for id := range m {
			ids[id] = struct{}{}
		}
	}
	for id := range s.c.shown {
		ids[id] = struct{}{}
	}
	shown := maps.Clone(s.c.shown)
	s.c.mu.Unlock()

	c.mu.Lock()
	removed := extra.removed
	for _, r := range c.shared {
		removed = append(removed, r.m.removed...)
	}
	releaseAll(c.shared)
	dropped := len(c.shared) + 1
	for _, id := range removed {
		ids[id] = struct{}{}
	}
	c.shared, c.sharedBytes, c.stream = nil, 0, nil
	clear(c.due)
	clear(c.held)
	c.heldNext = 0
	c.shown = shown
	if c.sub != nil {
		for id := range ids {
			if v := f.store.get(id); v != nil && c.who.scope.permits(v) && c.sub.match(v) {
				c.due[id] = pendingItem{v: v}
			} else {
				if v == nil {
					v = &vehicle{id: id}
				}
				c.due[id] = pendingItem{v: v, gone: true}
			}
		}
	}
	if len(c.due) > 0 {
		c.dueSince = time.Now().UnixNano()
	}
	c.mu.Unlock()
	delete(s.members, c)
	f.hubAdd(c)
	f.m.streamLeaves.WithLabelValues(leaveBehind).Inc()
	f.m.streamClients.Dec()
	f.m.streamDropped.Add(float64(dropped))
	if len(s.members) == 0 {
		f.dropStream(s)
	}
	c.signal()
}

// run is the stream's writer: it takes what is due as a client's writer
// does, builds the message once and hands it to the members.
func (s *stream) run() {
	c := s.c
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var t takeBuf
	round := time.NewTimer(maxRound)
	round.Stop()
	defer round.Stop()
	for {
		next := s.flush(&t, round)
		if next != 0 {
			timer.Reset(time.Duration(next - time.Now().UnixNano()))
		}
		select {
		case <-c.stopCh:
			return
		case <-c.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// flush takes and publishes everything due; it returns when the next held
// item is due (0: none). After each message it waits, up to maxRound, for
// the members that were keeping up to write it: what arrives meanwhile goes
// into the next message. An idle stream's message goes out at once and its
// members write it in well under a millisecond each, so the wait is short
// when the livefeed has CPU to spare; when it has not, a round of writes
// takes longer, and the stream sends fewer, larger messages instead of a
// write per member per batch received (hundreds of writes for each of
// hundreds of batches a second on the same core as the ingest).
func (s *stream) flush(t *takeBuf, round *time.Timer) int64 {
	for {
		select {
		case <-s.c.stopCh:
			return 0
		default:
		}
		s.c.take(time.Now().UnixNano(), t)
		if len(t.items) == 0 {
			return t.next
		}
		m := &sharedMsg{seq: t.seq, updates: len(t.items), written: make(chan struct{})}
		for _, p := range t.items {
			if p.gone {
				m.removed = append(m.removed, p.v.id)
			} else if m.oldest == 0 || p.v.ingestNs < m.oldest {
				m.oldest = p.v.ingestNs
			}
		}
		b := appendUpdate(make([]byte, 0, updateSize(t.items)), t.items)
		m.size = len(b)
		pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
		if err != nil { // only for a bad message type
			s.c.f.logger.Error("livefeed: prepare a stream message", "err", err)
			return 0
		}
		m.pm = pm
		s.c.f.m.streamMessages.Inc()
		m.pending.Store(1) // the publisher's hold
		s.publish(m)
		m.done()
		round.Reset(maxRound) // Go 1.23+: a Reset timer delivers no stale tick
		select {
		case <-m.written:
		case <-round.C:
			s.c.f.m.streamRoundsCut.Inc()
		case <-s.c.stopCh:
			round.Stop()
			return 0
		}
		round.Stop()
	}
}

// updateSize is the size appendUpdate's message of items will have, at
// most.
func updateSize(items []pendingItem) int {
	n := 64
	for _, p := range items {
		if p.gone {
			n += len(p.v.id) + 8
		} else {
			n += len(p.v.json) + 1
		}
	}
	return n
}

// publish hands m to every member that joined before it was taken; a member
// with maxSharedBehind bytes waiting leaves the stream (detach). It never
// waits for a member's connection.
func (s *stream) publish(m *sharedMsg) {
	f := s.c.f
	limit := maxSharedBehind
	if f.cfg.sharedBehind != 0 {
		limit = f.cfg.sharedBehind
	}
	var behind []*client
	f.hubMu.RLock()
	for c := range s.members {
		c.mu.Lock()
		give := c.stream == s && !c.stopping && m.seq > c.joinedAt
		if give && c.sharedBytes+m.size > limit {
			behind = append(behind, c)
			give = false
		}
		if give {
			// A member with nothing of the stream's waiting is keeping
			// up: the stream waits for it to write m (flush). One that
			// is behind is not waited for.
			r := sharedRef{m: m, counted: len(c.shared) == 0}
			if r.counted {
				m.pending.Add(1)
			}
			c.shared = append(c.shared, r)
			c.sharedBytes += m.size
		}
		c.mu.Unlock()
		if give {
			c.signal()
		}
	}
	f.hubMu.RUnlock()
	for _, c := range behind {
		f.detach(c, s, m)
	}
}

// drained reports whether c's own path has nothing left to write: the
// condition for joining a stream.
func (c *client) drained() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.drainedLocked()
}

func (c *client) drainedLocked() bool {
	return c.stream == nil && !c.stopping && c.sub != nil && !c.snapPending && c.snap == nil &&
		len(c.due) == 0 && len(c.held) == 0 && len(c.controls) == 0 && len(c.alerts) == 0
}
