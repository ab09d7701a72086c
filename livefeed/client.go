package livefeed

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Close codes of the 4000 range (private use, RFC 6455 section 7.4.2) that
// the livefeed sends; docs/live-api.md says what a client should do on each.
// The standard ones it uses are 1001 (the livefeed is stopping) and 1009
// (a client message over 64 KiB).
const (
	// CloseIdleTimeout: nothing (no message, no pong) came from the client
	// for the idle timeout. Reconnect.
	CloseIdleTimeout = 4001
	// CloseTooSlow: the client did not take its updates fast enough (see
	// Config.SlowBacklog). Reconnect, and subscribe to fewer vehicles or a
	// lower rate.
	CloseTooSlow = 4002
	// CloseRevoked: the client's token was removed from the clients file or
	// its fleets changed. Reconnect (with a valid token).
	CloseRevoked = 4003
	// CloseExpired: the client's token reached its expiry (the clients
	// file's "expires") while connected. Reconnect with a new token; the
	// old one is refused with 401.
	CloseExpired = 4004
)

const (
	// maxClientMessage bounds what a client may send in one message: a
	// subscribe with 1000 device ids fits.
	maxClientMessage = 64 << 10
	// maxUpdatesPerMessage bounds the vehicles of one update message; a
	// bigger backlog goes out in several, each taking the freshest state.
	maxUpdatesPerMessage = 1000
	// maxQueuedControls bounds the hello and error messages waiting for the
	// writer; past it more errors are dropped (a client sending garbage in a
	// loop gets no answer to each).
	maxQueuedControls = 32
	// closeLinger is how long a close the server starts waits for the
	// client's close frame before dropping the TCP connection.
	closeLinger = time.Second
	// killGrace is how long a writer stuck in a write gets, once its
	// client is to be closed, before the connection is cut under it.
	killGrace = 2 * time.Second
	// Subscribe messages are rate limited per client (each one costs a
	// snapshot): a burst, then this many per second.
	subscribeBurst = 10
	subscribeRate  = 4.0
)

// pendingItem is an update (or, gone, a removal) waiting for a client's
// writer.
type pendingItem struct {
	v    *vehicle
	gone bool
}

// snapshotOut is a snapshot waiting for the writer: the header and the
// vehicles it streams into one message.
type snapshotOut struct {
	header   []byte // {"type":"snapshot",...,"vehicles":[
	vehicles []*vehicle
}

// client is one client connection. It has two goroutines: readLoop, the only
// reader (subscribe messages, pongs, close), and writeLoop, the only writer of
// data messages. Ingest hands it updates with offer, which never blocks: an
// update goes into a map keyed by vehicle, replacing the one not yet written
// (conflation), and the writer takes what is due at its own pace.
type client struct {
	f      *Feed
	ws     *websocket.Conn
	who    *principal
	remote string

	wake     chan struct{} // capacity 1: something is due
	stopCh   chan struct{} // closed by kill
	readDone chan struct{} // closed when readLoop ends

	// Owned by readLoop.
	tokens   float64 // subscribe rate limit bucket
	tokensAt time.Time

	mu          sync.Mutex // guards the fields below
	sub         *subscription
	gen         uint64 // incremented by each subscribe
	snapPending bool   // a snapshot is being built: hold updates until it is queued
	snap        *snapshotOut
	controls    [][]byte
	alerts      [][]byte               // alert messages, after the snapshot and before updates
	due         map[string]pendingItem // to write as soon as the writer can
	held        map[string]pendingItem // held back by the rate limit
	heldNext    int64                  // Unix ns when the first held item is due, 0 if none
	heldScanned int64                  // Unix ns of the last scan of held
	armed       int64                  // Unix ns the writer's timer is set for, 0 if none
	pacedUntil  int64                  // Unix ns before which no update message is written (Config.SendInterval)
	shown       map[string]int64       // vehicles the client has, with when each was last written (Unix ns)
	dueSince    int64                  // Unix ns since when due has not been emptied, 0 if empty
	stopping    bool
	closeCode   int
	closeText   string
	reason      string
	force       *time.Timer
	expiry      *time.Timer // closes the client when its token expires; nil: never
	released    bool        // the client has ended: no expiry timer any more
	takes       uint64      // takes that handed out updates, numbering a stream's messages

	// Shared streams (stream.go). key and stream are written under
	// Feed.hubMu and c.mu, shared and the rest under c.mu.
	key         string      // streamKey of the subscription, "" without one
	stream      *stream     // the stream feeding the client; nil: its own path
	joinedAt    uint64      // the stream's takes when the client joined
	shared      []sharedRef // the stream's messages waiting for the writer
	sharedBytes int         // their payload bytes
	streamOf    *stream     // set on a stream's own conflation state, which has no connection
}

func newClient(f *Feed, ws *websocket.Conn, who *principal) *client {
	return &client{
		f:        f,
		ws:       ws,
		who:      who,
		remote:   ws.RemoteAddr().String(),
		wake:     make(chan struct{}, 1),
		stopCh:   make(chan struct{}),
		readDone: make(chan struct{}),
		tokens:   subscribeBurst,
		tokensAt: time.Now(),
		due:      make(map[string]pendingItem),
		held:     make(map[string]pendingItem),
		shown:    make(map[string]int64),
	}
}

func (c *client) log(level slog.Level, msg string, args ...any) {
	args = append([]any{"client", c.who.name, "remote", c.remote}, args...)
	c.f.logger.Log(context.Background(), level, msg, args...)
}

func (c *client) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// offer hands the client a run of changes, all of vehicles its scope may
// include or that it may be showing. Called by ingest: it takes the client's
// lock briefly and never waits for the network.
func (c *client) offer(changes []change, now int64) {
	var conflated, dropped int
	c.mu.Lock()
	if c.stopping || c.sub == nil {
		c.mu.Unlock()
		return
	}
	sub := c.sub
	scope := c.who.scope
	interval := int64(sub.interval)
	due, wake := false, false
	for i := range changes {
		ch := &changes[i]
		v := ch.v
		if !ch.gone && scope.permits(v) && sub.match(v) {
			if _, ok := c.held[v.id]; ok {
				delete(c.held, v.id)
				conflated++
			} else if p, ok := c.due[v.id]; ok {
				if p.gone {
					// Back in the filter before its removal went
					// out: the client keeps it.
					delete(c.due, v.id)
				} else {
					conflated++
				}
			}
			last, shown := c.shown[v.id]
			if !shown || now-last >= interval {
				c.due[v.id] = pendingItem{v: v}
				due = true
			} else {
				c.held[v.id] = pendingItem{v: v}
				at := last + interval
				if c.heldNext == 0 || at < c.heldNext {
					c.heldNext = at
				}
				if (c.armed == 0 || at < c.armed) && at >= c.pacedUntil {
					// The writer sleeps until its timer: wake it to
					// set an earlier one (while paced, its timer is
					// set for the end of the pacing window, when the
					// held items are looked at anyway).
					wake = true
				}
			}
			continue
		}
		// The vehicle is not (or no longer) for this client.
		if _, shown := c.shown[v.id]; shown {
			delete(c.held, v.id)
			c.due[v.id] = pendingItem{v: v, gone: true}
			due = true
			continue
		}
		if p, ok := c.due[v.id]; ok && !p.gone {
			delete(c.due, v.id)
			dropped++
		}
		if _, ok := c.held[v.id]; ok {
			delete(c.held, v.id)
			dropped++
		}
	}
	if due && c.dueSince == 0 {
		c.dueSince = now
	}
	// While the writer is paced its timer is set for the end of the
	// window, when it takes what is due: no wake-up before (see take).
	wake = wake || due && now >= c.pacedUntil
	slow := c.streamOf == nil && c.dueSince != 0 && now-c.dueSince > int64(c.f.cfg.SlowTimeout) && len(c.due) > c.f.cfg.SlowBacklog
	backlog := len(c.due)
	c.mu.Unlock()
	if conflated > 0 {
		c.f.m.conflated.Add(float64(conflated))
	}
	if dropped > 0 {
		// An update not yet written, superseded by the vehicle leaving
		// the filter: conflated into nothing.
		c.f.m.conflated.Add(float64(dropped))
	}
	if slow {
		if c.kill(CloseTooSlow, "too slow: updates not taken", reasonSlow) {
			c.log(slog.LevelWarn, "livefeed: client too slow; disconnecting", "backlog", backlog,
				"limit", c.f.cfg.SlowBacklog, "for_more_than", c.f.cfg.SlowTimeout)
		}
		return
	}
	if wake {
		c.signal()
	}
}

// queueControl queues a message (hello, error) for the writer to send before
// any update.
func (c *client) queueControl(msg []byte) {
	c.mu.Lock()
	if c.stopping || len(c.controls) >= maxQueuedControls {
		c.mu.Unlock()
		return
	}
	c.controls = append(c.controls, msg)
	c.mu.Unlock()
	c.signal()
}

// sendError queues an error message and counts it.
func (c *client) sendError(e *clientError) {
	c.f.m.clientErrors.WithLabelValues(e.code).Inc()
	b, _ := json.Marshal(errorMsg{Type: "error", Code: e.code, Message: e.msg, ID: e.id})
	c.queueControl(b)
}

// setExpiry closes the client with CloseExpired at t (zero: never),
// replacing an expiry set before: a token's expiry may move when the
// clients file is reloaded.
func (c *client) setExpiry(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expiry != nil {
		c.expiry.Stop()
		c.expiry = nil
	}
	if t.IsZero() || c.stopping || c.released {
		return
	}
	c.expiry = time.AfterFunc(time.Until(t), func() {
		if c.kill(CloseExpired, "token expired", reasonExpired) {
			c.log(slog.LevelInfo, "livefeed: client token expired; closing")
		}
	})
}

// stopExpiry stops the expiry timer of an ended client, for good: a
// reload racing with the end cannot set another.
func (c *client) stopExpiry() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released = true
	if c.expiry != nil {
		c.expiry.Stop()
		c.expiry = nil
	}
}

// kill asks the writer to close the connection with code and text (code 0:
// the client is gone, just drop it) and counts the reason. Safe from any
// goroutine, never blocks; the first call wins. If the writer is stuck in a
// write, the connection is cut under it after killGrace. It reports whether
// this call was the one that took effect.
func (c *client) kill(code int, text, reason string) bool {
	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return false
	}
	c.stopping = true
	c.closeCode, c.closeText, c.reason = code, text, reason
	netConn := c.ws.NetConn()
	grace := killGrace
	if reason == reasonShutdown {
		grace = c.f.cfg.ShutdownGrace
	}
	c.force = time.AfterFunc(grace, func() { _ = netConn.Close() })
	c.mu.Unlock()
	close(c.stopCh)
	return true
}

// take removes from the pending maps what the writer is to send now, at
// most maxUpdatesPerMessage updates, and records them as shown. It returns
// in t the time to wake for (0: none): the next held item, or the end of
// the pacing window.
//
// Pacing (Config.SendInterval): a take that hands out updates opens a
// window of SendInterval in which no further updates are handed out;
// controls, snapshots and alerts still are. What becomes due meanwhile is
// conflated as usual and goes out in one message when the window ends, so
// that a client costs at most one wake-up and one write(2) per window
// however many batches the routers send. While paced, the writer's timer
// is set for the end of the window and offer does not wake it: one
// wake-up per window, not one per batch.
func (c *client) take(now int64, t *takeBuf) {
	t.reset()
	c.mu.Lock()
	defer c.mu.Unlock()
	t.controls, c.controls = c.controls, nil
	if c.snap != nil {
		t.snap, c.snap = c.snap, nil
	}
	if c.snapPending || c.sub == nil {
		c.armed = 0
		return
	}
	t.alerts, c.alerts = c.alerts, nil
	// The two slices swap: the stream appends to the one the writer has
	// finished with, without allocating per message.
	t.shared, c.shared, c.sharedBytes = c.shared, t.shared, 0
	if now < c.pacedUntil {
		// Paced: no update until the window ends; the writer comes
		// back then.
		c.armed, t.next = c.pacedUntil, c.pacedUntil
		return
	}
	for id, p := range c.due {
		if len(t.items) >= maxUpdatesPerMessage {
			t.more = true
			break
		}
		t.items = append(t.items, p)
		delete(c.due, id)
		if p.gone {
			delete(c.shown, id)
		} else {
			c.shown[id] = now
		}
	}
	if !t.more {
		c.dueSince = 0
	}
	// The rate limit: held items are scanned when the first is due, but
	// not more often than a quarter of the interval (at most 250 ms), so
	// that a client with thousands of held vehicles does not rescan them
	// for each one.
	interval := int64(c.sub.interval)
	gap := min(max(interval/4, int64(5*time.Millisecond)), int64(250*time.Millisecond))
	if len(c.held) > 0 && !t.more && now >= c.heldNext && now >= c.heldScanned+gap {
		c.heldScanned = now
		c.heldNext = 0
		for id, p := range c.held {
			last := c.shown[id]
			if now-last >= interval && len(t.items) < maxUpdatesPerMessage {
				t.items = append(t.items, p)
				delete(c.held, id)
				c.shown[id] = now
				continue
			}
			at := max(last+interval, now+1)
			if c.heldNext == 0 || at < c.heldNext {
				c.heldNext = at
			}
		}
	}
	if len(c.held) > 0 {
		t.next = max(c.heldNext, c.heldScanned+gap)
	}
	if len(t.items) > 0 {
		c.takes++
		t.seq = c.takes
	}
	if len(t.items) > 0 && c.f.cfg.SendInterval > 0 {
		c.pacedUntil = now + int64(c.f.cfg.SendInterval)
		t.next = c.pacedUntil
	}
	c.armed = t.next
}

// closeConn closes the connection as kill asked: with a close frame (and,
// for a slow client, an error message first) and a short wait for the
// client's own close frame, or at once when the client is gone.
func (c *client) closeConn() {
	c.mu.Lock()
	code, text, reason := c.closeCode, c.closeText, c.reason
	c.mu.Unlock()
	if code != 0 {
		deadline := time.Now().Add(min(c.f.cfg.WriteTimeout, killGrace))
		if code == CloseTooSlow {
			c.f.m.clientErrors.WithLabelValues(errCodeTooSlow).Inc()
			b, _ := json.Marshal(errorMsg{Type: "error", Code: errCodeTooSlow, Message: "updates were not taken fast enough; " +
				"reconnect and subscribe to fewer vehicles or a lower rate"})
			_ = c.ws.SetWriteDeadline(deadline)
			_ = c.ws.WriteMessage(websocket.TextMessage, b)
		}
		if reason == reasonSlow {
			c.f.m.slowDisconnects.Inc()
		}
		msg := websocket.FormatCloseMessage(code, text)
		if err := c.ws.WriteControl(websocket.CloseMessage, msg, deadline); err == nil {
			c.linger()
		}
	}
	_ = c.ws.Close()
	<-c.readDone
}

// linger waits, at most closeLinger, for the client's answer to our close
// frame before the connection is dropped: closing at once with unread data
// from the client would reset the connection, and a TCP stack may then
// discard our close frame before the client reads it. While the read loop
// runs it sees the answer; once it has ended (gorilla fails every read after
// the first failure) what comes is drained from the TCP connection itself.
func (c *client) linger() {
	select {
	case <-c.readDone:
	default:
		select {
		case <-c.readDone:
		case <-time.After(closeLinger):
			return
		}
		return
	}
	nc := c.ws.NetConn()
	_ = nc.SetReadDeadline(time.Now().Add(closeLinger))
	var buf [512]byte
	for {
		if _, err := nc.Read(buf[:]); err != nil {
			return
		}
	}
}

// finish releases what the connection holds; the writer runs it last.
func (c *client) finish() {
	c.mu.Lock()
	if c.force != nil {
		c.force.Stop()
	}
	pending := len(c.due) + len(c.held)
	for _, r := range c.shared {
		pending += r.m.updates
	}
	releaseAll(c.shared)
	c.shared, c.sharedBytes = nil, 0
	subscribed := c.sub != nil
	reason := c.reason
	c.sub = nil
	c.mu.Unlock()
	if pending > 0 {
		c.f.m.dropped.WithLabelValues("client_closed").Add(float64(pending))
	}
	if subscribed {
		c.f.m.subscriptions.Dec()
	}
	c.f.m.disconnects.WithLabelValues(reason).Inc()
	c.log(slog.LevelDebug, "livefeed: client disconnected", "reason", reason)
	c.f.release(c)
}
