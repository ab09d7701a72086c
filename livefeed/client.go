package livefeed

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
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
	shown       map[string]int64       // vehicles the client has, with when each was last written (Unix ns)
	dueSince    int64                  // Unix ns since when due has not been emptied, 0 if empty
	stopping    bool
	closeCode   int
	closeText   string
	reason      string
	force       *time.Timer
	expiry      *time.Timer // closes the client when its token expires; nil: never
	released    bool        // the client has ended: no expiry timer any more
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
				if c.armed == 0 || at < c.armed {
					// The writer sleeps until its timer: wake it to
					// set an earlier one.
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
	slow := c.dueSince != 0 && now-c.dueSince > int64(c.f.cfg.SlowTimeout) && len(c.due) > c.f.cfg.SlowBacklog
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
	if due || wake {
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
// the time of the next held item to wake for (0: none) and whether the
// writer is to come back at once (a capped take).
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
	c.armed = t.next
}

// takeBuf is what one take hands the writer; reused between takes.
type takeBuf struct {
	controls [][]byte
	alerts   [][]byte
	snap     *snapshotOut
	items    []pendingItem
	next     int64
	more     bool
}

func (t *takeBuf) reset() {
	t.controls, t.alerts, t.snap, t.next, t.more = nil, nil, nil, 0, false
	clear(t.items)
	t.items = t.items[:0]
}

func (t *takeBuf) empty() bool {
	return len(t.controls) == 0 && len(t.alerts) == 0 && t.snap == nil && len(t.items) == 0
}

// writeLoop is the client's only writer of data messages: it writes what is
// due whenever it is woken, pings, and closes the connection when killed.
func (c *client) writeLoop() {
	defer c.finish()
	ping := time.NewTicker(c.f.cfg.PingInterval)
	defer ping.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var t takeBuf
	for {
		next, ok := c.flush(&t)
		if !ok {
			c.closeConn()
			return
		}
		if next != 0 {
			timer.Reset(time.Duration(next - time.Now().UnixNano()))
		}
		select {
		case <-c.stopCh:
			c.closeConn()
			return
		case <-c.wake:
		case <-timer.C:
		case <-ping.C:
			if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.f.cfg.WriteTimeout)); err != nil {
				c.writeFailed(err)
				c.closeConn()
				return
			}
		}
		timer.Stop()
	}
}

// flush writes everything due, in as many messages as it takes. It returns
// when the next held item is due (0: none), and false when the connection
// is to be closed.
func (c *client) flush(t *takeBuf) (next int64, ok bool) {
	for {
		select {
		case <-c.stopCh:
			return 0, false
		default:
		}
		c.take(time.Now().UnixNano(), t)
		if t.empty() {
			return t.next, true
		}
		for _, msg := range t.controls {
			if err := c.writeMessage(func(w io.Writer) error { _, err := w.Write(msg); return err }); err != nil {
				c.writeFailed(err)
				return 0, false
			}
		}
		if t.snap != nil {
			if err := c.writeMessage(t.snap.writeTo); err != nil {
				c.writeFailed(err)
				return 0, false
			}
			c.f.m.snapshotVehicles.Add(float64(len(t.snap.vehicles)))
		}
		for _, msg := range t.alerts {
			if err := c.writeMessage(func(w io.Writer) error { _, err := w.Write(msg); return err }); err != nil {
				c.writeFailed(err)
				return 0, false
			}
			c.f.m.alertsSent.Inc()
		}
		if len(t.items) > 0 {
			oldest := int64(0)
			for _, p := range t.items {
				if !p.gone && (oldest == 0 || p.v.ingestNs < oldest) {
					oldest = p.v.ingestNs
				}
			}
			if err := c.writeMessage(func(w io.Writer) error { return writeUpdate(w, t.items) }); err != nil {
				c.writeFailed(err)
				return 0, false
			}
			c.f.m.updatesSent.Add(float64(len(t.items)))
			if oldest != 0 {
				c.f.m.sendDelay.Observe(float64(time.Now().UnixNano()-oldest) / 1e9)
			}
		}
		// Look again at once: more may have come in while writing.
	}
}

// writeMessage writes one text message with the write timeout.
func (c *client) writeMessage(fill func(io.Writer) error) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(c.f.cfg.WriteTimeout))
	w, err := c.ws.NextWriter(websocket.TextMessage)
	if err != nil {
		return err
	}
	if err := fill(w); err != nil {
		_ = w.Close()
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	c.f.m.messagesSent.Inc()
	return nil
}

// writeUpdate writes an update message: the vehicles' latest states, and
// the ids of those the client is to remove.
func writeUpdate(w io.Writer, items []pendingItem) error {
	var b []byte
	b = append(b, `{"type":"update","vehicles":[`...)
	n := 0
	for _, p := range items {
		if p.gone {
			continue
		}
		if n > 0 {
			b = append(b, ',')
		}
		n++
		b = append(b, p.v.json...)
		if len(b) > 16<<10 {
			if _, err := w.Write(b); err != nil {
				return err
			}
			b = b[:0]
		}
	}
	b = append(b, ']')
	r := 0
	for _, p := range items {
		if !p.gone {
			continue
		}
		if r == 0 {
			b = append(b, `,"removed":[`...)
		} else {
			b = append(b, ',')
		}
		r++
		b = appendString(b, p.v.id)
	}
	if r > 0 {
		b = append(b, ']')
	}
	b = append(b, '}')
	_, err := w.Write(b)
	return err
}

// writeTo streams the snapshot message.
func (s *snapshotOut) writeTo(w io.Writer) error {
	b := append([]byte(nil), s.header...)
	for i, v := range s.vehicles {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, v.json...)
		if len(b) > 16<<10 {
			if _, err := w.Write(b); err != nil {
				return err
			}
			b = b[:0]
		}
	}
	b = append(b, "]}"...)
	_, err := w.Write(b)
	return err
}

// writeFailed ends the connection after a failed write.
func (c *client) writeFailed(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		if c.kill(0, "", reasonWriteTimeout) {
			c.log(slog.LevelWarn, "livefeed: write to client timed out; disconnecting it as slow", "write_timeout", c.f.cfg.WriteTimeout)
			c.f.m.slowDisconnects.Inc()
		}
		return
	}
	if c.kill(0, "", reasonWriteError) {
		c.log(slog.LevelDebug, "livefeed: write to client failed", "err", err)
	}
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

// readLoop reads the client's messages until the connection ends.
func (c *client) readLoop() {
	defer close(c.readDone)
	c.ws.SetReadLimit(maxClientMessage)
	c.extend()
	c.ws.SetPongHandler(func(string) error { c.extend(); return nil })
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			c.readFailed(err)
			return
		}
		c.extend()
		c.handle(data)
	}
}

func (c *client) extend() {
	_ = c.ws.SetReadDeadline(time.Now().Add(c.f.cfg.IdleTimeout))
}

// readFailed ends the connection after a failed read.
func (c *client) readFailed(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has sent 1009.
		c.log(slog.LevelInfo, "livefeed: client message over the size limit; closed 1009", "limit_bytes", maxClientMessage)
		c.kill(0, "", reasonTooBig)
	case errors.As(err, &ne) && ne.Timeout():
		c.kill(CloseIdleTimeout, "idle timeout", reasonIdle)
	default:
		// The client closed (gorilla has answered its close frame), or
		// the connection broke, or the writer closed it.
		c.kill(0, "", reasonClientClosed)
	}
}

// Messages clients send and receive (docs/live-api.md). Updates and
// snapshots are written by hand (see writeUpdate) for speed.
type (
	clientMsg struct {
		Type string `json:"type"`
		ID   string `json:"id,omitempty"`
	}
	errorMsg struct {
		Type    string `json:"type"`
		Code    string `json:"code"`
		Message string `json:"message"`
		ID      string `json:"id,omitempty"`
	}
	helloMsg struct {
		Type         string   `json:"type"`
		Client       string   `json:"client"`
		Fleets       []string `json:"fleets"`
		AllFleets    bool     `json:"all_fleets"`
		MaxRate      float64  `json:"max_rate_hz"`
		SnapshotMax  int      `json:"snapshot_max"`
		ServerTimeMs int64    `json:"server_time_ms"`
		// Devices and Area narrow what the token may see, when it was
		// issued so (control-plane tokens).
		Devices []string `json:"devices,omitempty"`
		Area    *BBox    `json:"area,omitempty"`
	}
	snapshotHeader struct {
		Type      string      `json:"type"`
		ID        string      `json:"id,omitempty"`
		TimeMs    int64       `json:"time_ms"`
		Total     int         `json:"total"`
		Truncated bool        `json:"truncated"`
		Filter    filterEcho  `json:"filter"`
		Vehicles  []*struct{} `json:"vehicles"` // always empty: the vehicles are streamed after it
	}
	filterEcho struct {
		Devices []string `json:"devices,omitempty"`
		Fleets  []string `json:"fleets,omitempty"`
		BBox    *BBox    `json:"bbox,omitempty"`
		MaxRate float64  `json:"max_rate_hz"`
	}
	unsubscribedMsg struct {
		Type string `json:"type"`
		ID   string `json:"id,omitempty"`
	}
)

// hello queues the first message of a connection: who the client is and
// what it may see.
func (c *client) hello() {
	sc := c.who.scope
	h := helloMsg{Type: "hello", Client: c.who.name, AllFleets: sc.all, MaxRate: c.f.cfg.MaxRate,
		SnapshotMax: c.f.cfg.SnapshotMax, ServerTimeMs: time.Now().UnixMilli()}
	if sc.all {
		h.Fleets = c.f.store.knownFleets()
	} else {
		h.Fleets = sc.list
	}
	h.Devices = sc.deviceList
	if sc.area != nil {
		h.Area = sc.area.bbox()
	}
	b, _ := json.Marshal(h)
	c.queueControl(b)
}

// handle acts on one message from the client.
func (c *client) handle(data []byte) {
	var m clientMsg
	if err := json.Unmarshal(data, &m); err != nil {
		c.sendError(&clientError{code: errCodeBadMessage, msg: "not a JSON object with a type: " + err.Error()})
		return
	}
	switch m.Type {
	case "subscribe":
		if !c.allowSubscribe() {
			c.f.m.subscribes.WithLabelValues("refused").Inc()
			c.sendError(&clientError{code: errCodeRateLimited, id: m.ID,
				msg: "too many subscribe messages; the subscription in force is unchanged (debounce viewport changes)"})
			return
		}
		var s subscribeMsg
		if err := json.Unmarshal(data, &s); err != nil {
			c.f.m.subscribes.WithLabelValues("refused").Inc()
			c.sendError(&clientError{code: errCodeBadSubscribe, id: m.ID, msg: err.Error()})
			return
		}
		sub, cerr := newSubscription(&s, c.who.scope, &c.f.cfg)
		if cerr != nil {
			c.f.m.subscribes.WithLabelValues("refused").Inc()
			c.sendError(cerr)
			return
		}
		c.f.m.subscribes.WithLabelValues("ok").Inc()
		c.subscribe(sub)
	case "unsubscribe":
		c.unsubscribe(m.ID)
	default:
		c.sendError(&clientError{code: errCodeBadMessage, id: m.ID, msg: "unknown message type " + quote(m.Type)})
	}
}

func quote(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return string(appendString(nil, s))
}

// allowSubscribe takes a token from the client's subscribe bucket.
func (c *client) allowSubscribe() bool {
	now := time.Now()
	c.tokens = min(subscribeBurst, c.tokens+now.Sub(c.tokensAt).Seconds()*subscribeRate)
	c.tokensAt = now
	if c.tokens < 1 {
		return false
	}
	c.tokens--
	return true
}

// subscribe puts sub in force: it holds updates, walks the vehicles for the
// snapshot, then queues the snapshot ahead of the updates that came in
// meanwhile (dropping those the snapshot already has).
func (c *client) subscribe(sub *subscription) {
	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return
	}
	if c.sub == nil {
		c.f.m.subscriptions.Inc()
	}
	c.gen++
	gen := c.gen
	c.sub, c.snapPending, c.snap = sub, true, nil
	clear(c.due)
	clear(c.held)
	clear(c.shown)
	c.heldNext, c.dueSince = 0, 0
	c.mu.Unlock()

	scope := c.who.scope
	limit := c.f.cfg.SnapshotMax
	var list []*vehicle
	total := 0
	if sub.devices != nil && len(sub.devices) < 64 {
		// A handful of devices: look them up rather than walk everything.
		for id := range sub.devices {
			if v := c.f.store.get(id); v != nil && scope.permits(v) && sub.match(v) {
				total++
				if len(list) < limit {
					list = append(list, v)
				}
			}
		}
	} else {
		c.f.store.each(func(v *vehicle) bool {
			if scope.permits(v) && sub.match(v) {
				total++
				if len(list) < limit {
					list = append(list, v)
				}
			}
			return true
		})
	}
	now := time.Now()
	h := snapshotHeader{Type: "snapshot", ID: sub.id, TimeMs: now.UnixMilli(), Total: total, Truncated: total > len(list),
		Filter: filterEcho{Devices: sub.deviceList, Fleets: sub.fleetList, MaxRate: sub.rate}, Vehicles: []*struct{}{}}
	if sub.box != nil {
		h.Filter.BBox = sub.box.bbox()
	}
	header, _ := json.Marshal(h)
	// header ends in "vehicles":[]} : cut to "vehicles":[ for streaming.
	header = header[:len(header)-2]
	if total > len(list) {
		c.f.m.dropped.WithLabelValues("snapshot_limit").Add(float64(total - len(list)))
	}

	// The maps are built before taking the lock, which ingest waits for.
	nowNs := now.UnixNano()
	shown := make(map[string]int64, len(list))
	inSnap := make(map[string]*vehicle, len(list))
	for _, v := range list {
		shown[v.id] = nowNs
		inSnap[v.id] = v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen || c.stopping {
		return
	}
	c.shown = shown
	for id, p := range c.due {
		if sv, ok := inSnap[id]; ok && !p.gone && p.v.olderOrSame(sv) {
			delete(c.due, id)
		}
	}
	c.snap = &snapshotOut{header: header, vehicles: list}
	c.snapPending = false
	// The alerts under way for these vehicles, after the snapshot: the
	// alert messages queued before it were for the old subscription.
	c.alerts = nil
	if msg := c.f.activeAlertsMsg(c, sub, sub.id); msg != nil {
		c.alerts = append(c.alerts, msg)
	}
	c.signal()
}

// unsubscribe stops updates until the next subscribe.
func (c *client) unsubscribe(id string) {
	c.mu.Lock()
	if c.sub != nil {
		c.f.m.subscriptions.Dec()
	}
	c.gen++
	c.sub, c.snapPending, c.snap = nil, false, nil
	clear(c.due)
	clear(c.held)
	clear(c.shown)
	c.heldNext, c.dueSince = 0, 0
	c.mu.Unlock()
	b, _ := json.Marshal(unsubscribedMsg{Type: "unsubscribed", ID: id})
	c.queueControl(b)
}
