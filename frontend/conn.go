package frontend

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/telemetry"
)

// Close codes of the 4000 range (private use, RFC 6455 section 7.4.2) that
// the frontend sends. The standard ones it uses are 1001, 1007, 1008, 1009,
// 1011 and 1013; docs/ingest.md says what a device should do on each.
const (
	// CloseReplaced: the device opened a newer connection, which is now the
	// one in force. Do not reconnect from this one.
	CloseReplaced = 4000
	// CloseIdleTimeout: nothing (no frame, no pong) arrived for the idle
	// timeout. Reconnect.
	CloseIdleTimeout = 4001
)

const (
	closeGoingAway      = websocket.CloseGoingAway               // 1001: the frontend is stopping
	closeInvalidFrame   = websocket.CloseInvalidFramePayloadData // 1007
	closePolicy         = websocket.ClosePolicyViolation         // 1008: rate limit
	closeInternal       = websocket.CloseInternalServerErr       // 1011
	closeTryAgainLater  = websocket.CloseTryAgainLater           // 1013: queue or disk full
	reasonTextReplaced  = "replaced by a newer connection"
	reasonTextGoingAway = "going away"
)

// closeLinger is how long a connection the server closes waits for the
// device's close frame before dropping the TCP connection. Closing at once
// with unread data from the device would reset the connection, and some
// TCP stacks then discard the close frame before the device reads it.
const closeLinger = time.Second

// pastDeadline is a read deadline in the past: it wakes a blocked reader.
var pastDeadline = time.Unix(1, 0)

// frameBufs recycles the buffers frames are read into: an idle connection
// holds none, and a busy frontend reuses a few.
var frameBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// refBufs recycles the slices a frame's readings are listed in.
var refBufs = sync.Pool{New: func() any { return new([]telemetry.ReadingRef) }}

// conn is one device connection. Its read loop (readLoop) is the only
// goroutine that reads from it and the only one that writes data messages
// (gorilla's one-reader, one-writer rule); pings are control frames written
// from a timer, which gorilla allows concurrently. An idle connection costs
// its gorilla Conn with a 256-byte read buffer, this struct, one goroutine
// parked in a read, and one timer.
type conn struct {
	f   *Frontend
	ws  *websocket.Conn
	dev *device

	mu         sync.Mutex
	stopCode   int    // close requested by another goroutine (shutdown, replacement)
	stopReason string // its reason text
	closing    bool   // the read loop is closing: deadlines are no longer extended
	readBroken bool   // a read failed: gorilla fails every later read at once
	done       bool   // the read loop has ended
	byCert     bool   // authenticated by a client certificate (set at creation; tls.go)
	ping       *time.Timer

	// heard is when the device's last data frame arrived (monotonic, as
	// sinceStart): a device that sent one within the ping interval is not
	// pinged.
	heard atomic.Int64

	// wmu serialises data frames: acks from the read loop, commands and
	// report acks from the commander (commands.go).
	wmu sync.Mutex
	// text: the device's last frame was a text (JSON) frame; what the
	// commander writes follows it.
	text atomic.Bool

	// ahead is the TCP connection under gorilla (ws://) or under the TLS
	// (wss://) when it can read ahead (ahead.go), else nil. pend lists the
	// frames begun and not yet acked; while it is not nil the read loop
	// holds dev.mu (settle.go). wireBytes counts the frames read as they
	// were on the wire (header, mask, payload), for aheadConn.mayHoldMore.
	// Only the read loop uses them.
	ahead     *aheadConn
	pend      *[]pendingAck
	wireBytes int64

	cred   registry.Grant // what the authentication granted (registry.go)
	expiry *time.Timer    // checks cred again when its overlap ends; nil when none
	client string         // the client's address (behind trusted proxies, theirs), for presence
	// firmware is the version the device named at connect (X-Drover-Firmware), for presence.
	firmware string
}

// log logs an event of this connection with its device and remote address.
// They are added per event rather than kept in a logger with attributes,
// which would cost every idle connection a few hundred bytes.
func (c *conn) log(level slog.Level, msg string, args ...any) {
	ctx := context.Background()
	if !c.f.logger.Enabled(ctx, level) {
		return
	}
	args = append([]any{"device", c.dev.id, "remote", c.ws.RemoteAddr().String()}, args...)
	c.f.logger.Log(ctx, level, msg, args...)
}

// stop asks the read loop to close the connection with code and reason once
// the frame it is storing, if any, is stored and acked. It wakes the loop if
// it waits for a frame. The first request wins. Safe from any goroutine.
func (c *conn) stop(code int, reason string) {
	c.mu.Lock()
	if c.stopCode == 0 && !c.closing {
		c.stopCode, c.stopReason = code, reason
	}
	// Under mu, so that extend cannot push the deadline out again after it.
	_ = c.ws.SetReadDeadline(pastDeadline)
	c.mu.Unlock()
}

// stopped returns the close requested by stop, code 0 if none.
func (c *conn) stopped() (int, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopCode, c.stopReason
}

// extend pushes the read deadline to now + IdleTimeout, unless the
// connection is being stopped or closed. It runs on every message and pong.
func (c *conn) extend() {
	c.mu.Lock()
	if c.stopCode == 0 && !c.closing {
		_ = c.ws.SetReadDeadline(time.Now().Add(c.f.cfg.IdleTimeout))
	}
	c.mu.Unlock()
}

// startPing arms the keepalive timer. A timer rather than a goroutine per
// connection: it costs ~100 bytes while idle, and its function runs only
// every PingInterval.
func (c *conn) startPing() {
	c.heard.Store(sinceStart(time.Now()))
	c.mu.Lock()
	c.ping = time.AfterFunc(c.f.cfg.PingInterval, c.sendPing)
	c.mu.Unlock()
}

// processStart anchors sinceStart.
var processStart = time.Now()

// sinceStart is t on the monotonic clock, in ns since the process started:
// a wall-clock step does not move it.
func sinceStart(t time.Time) int64 { return int64(t.Sub(processStart)) }

// sendPing writes a ping when the device has sent no data frame for a ping
// interval, and re-arms the timer. A device that sends frames proves the
// connection alive and keeps NAT mappings open by itself (MQTT's keepalive
// rule: a PINGREQ only when nothing else was sent); pinging it anyway cost a
// write, a pong read and a deadline update per device per interval (with
// devices reporting every 10 s, 500 of each a second per frontend of 15,000
// beside 1,500 frames; skipping them took the servers' CPU per frame from
// 325 to 266 µs: docs/performance.md, "Per frame at 30,000 devices").
// A ping that fails is not retried: the read loop sees the broken
// connection, or the idle timeout closes it.
func (c *conn) sendPing() {
	c.mu.Lock()
	if c.closing || c.done {
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	next := c.f.cfg.PingInterval
	if quiet := time.Duration(sinceStart(time.Now()) - c.heard.Load()); quiet < next {
		next -= quiet
		c.f.m.pingsSkipped.Inc()
	} else {
		if err := c.ws.WriteControl(websocket.PingMessage, nil, time.Now().Add(c.f.cfg.WriteTimeout)); err != nil {
			return
		}
		c.f.m.pingsSent.Inc()
	}
	c.mu.Lock()
	if !c.closing && !c.done {
		c.ping.Reset(next)
	}
	c.mu.Unlock()
}

// readLoop serves the connection until it ends, then releases it.
func (c *conn) readLoop() {
	defer c.finish()
	for {
		if code, reason := c.stopped(); code != 0 {
			if c.settleNow() {
				c.closeWith(code, reason)
			}
			return
		}
		typ, r, err := c.ws.NextReader()
		if err != nil {
			c.readFailed(err)
			return
		}
		recv := time.Now()
		c.heard.Store(sinceStart(recv))
		c.extend()
		buf := frameBufs.Get().(*bytes.Buffer)
		buf.Reset()
		_, err = buf.ReadFrom(r)
		if err != nil {
			frameBufs.Put(buf)
			c.readFailed(err)
			return
		}
		c.wireBytes += wireLen(buf.Len())
		c.text.Store(typ == websocket.TextMessage)
		ok := c.handleFrame(typ == websocket.TextMessage, buf.Bytes(), recv)
		frameBufs.Put(buf)
		if !ok {
			return
		}
	}
}

// pongReceived is gorilla's pong handler: a pong proves the device alive.
// It runs in the read loop, as the ping handler below.
func (c *conn) pongReceived(data string) error {
	c.wireBytes += wireLen(len(data))
	c.extend()
	return nil
}

// pingReceived answers a device's ping as gorilla does, and counts it.
func (c *conn) pingReceived(data string) error {
	c.wireBytes += wireLen(len(data))
	err := c.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(c.f.cfg.WriteTimeout))
	var ne net.Error
	if errors.Is(err, websocket.ErrCloseSent) || errors.As(err, &ne) {
		return nil // the read that follows sees the connection's end
	}
	return err
}

// closeReceived is gorilla's close handler: the frames the device sent
// before its close are acked before the close is answered, as they were
// when every frame was acked before the next was read.
func (c *conn) closeReceived(code int, _ string) error {
	if err := c.settle(); err != nil {
		return err
	}
	msg := websocket.FormatCloseMessage(code, "")
	_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.f.cfg.WriteTimeout))
	return nil
}

// wireLen is the size on the wire of a device's unfragmented data frame
// of n bytes: header, length, mask key, payload; pings and pongs are
// counted by their handlers. The rare fragmented message's extra headers
// are not: they only make mayHoldMore say yes when it could say no.
func wireLen(n int) int64 {
	h := 2 + 4
	switch {
	case n > 65535:
		h += 8
	case n > 125:
		h += 2
	}
	return int64(h + n)
}

// readFailed ends the connection after a failed read: a requested stop, a
// frame over the read limit, the idle timeout, or the device gone.
func (c *conn) readFailed(err error) {
	c.mu.Lock()
	c.readBroken = true
	c.mu.Unlock()
	// Frames held when the read failed are settled first: by aheadConn
	// before it returned a failure of its own, here after one gorilla found
	// in what was read (a close frame, a frame over the limit).
	// A failure to write their acks is not one more reason to close: the
	// read failed already, and below says how.
	var se *settleError
	if errors.As(err, &se) && se.code != 0 {
		c.settleFailed(se)
		return
	}
	if se := c.settle(); se != nil && se.code != 0 {
		c.settleFailed(se)
		return
	}
	if code, reason := c.stopped(); code != 0 {
		c.closeWith(code, reason)
		return
	}
	var ne net.Error
	var ce *websocket.CloseError
	switch {
	case errors.Is(err, websocket.ErrReadLimit):
		// gorilla has already sent 1009 (without reason text: it refuses
		// at the frame header, before reading the payload).
		c.f.m.refusals.WithLabelValues(reasonFrameTooLarge).Inc()
		c.f.m.connectionsClosed.WithLabelValues(strconv.Itoa(websocket.CloseMessageTooBig)).Inc()
		c.log(slog.LevelWarn, "frontend: frame over the size limit; closed 1009", "limit_bytes", c.f.cfg.MaxFrameBytes)
		c.linger()
	case errors.As(err, &ne) && ne.Timeout():
		c.log(slog.LevelDebug, "frontend: connection idle; closing", "idle_timeout", c.f.cfg.IdleTimeout)
		c.closeWith(CloseIdleTimeout, "idle timeout")
	case errors.As(err, &ce):
		c.log(slog.LevelDebug, "frontend: device closed the connection", "code", ce.Code, "text", ce.Text)
		c.f.m.connectionsClosed.WithLabelValues("none").Inc()
	default:
		c.log(slog.LevelDebug, "frontend: connection lost", "err", err)
		c.f.m.connectionsClosed.WithLabelValues("none").Inc()
	}
}

// handleFrame validates, stores and acks one frame. It returns false when it
// closed the connection.
func (c *conn) handleFrame(text bool, data []byte, recv time.Time) bool {
	f := c.f
	f.m.framesReceived.Inc()
	rp := refBufs.Get().(*[]telemetry.ReadingRef)
	defer func() {
		clear(*rp) // drop the references into the frame's buffer
		refBufs.Put(rp)
	}()
	// The fast path: a binary frame of readings, checked on the wire and stored as received
	// (telemetry.ScanUplink). Anything it is not sure of takes the full decode, whose verdict
	// and error are the reference.
	var refs []telemetry.ReadingRef
	ok := false
	if !text {
		refs, ok = telemetry.ScanUplink(data, recv, f.limits, (*rp)[:0])
	}
	if !ok {
		up, err := telemetry.DecodeUplink(data, text, recv, f.limits)
		if err != nil {
			var fe *telemetry.FrameError
			if errors.As(err, &fe) {
				c.refuse(closeInvalidFrame, fe.CloseReason(), fe.Kind.String(), err)
			} else {
				c.refuse(closeInternal, "internal error", reasonInternal, err)
			}
			return false
		}
		if len(up.Reports) > 0 {
			// Reports draw on the live rate budget like readings: each costs the
			// control plane a write.
			d := c.dev
			if c.pend == nil { // else held already (settle.go)
				d.mu.Lock()
			}
			ok := d.admit(len(up.Reports), 0, recv, &f.cfg)
			c.unlockDevice()
			if !ok {
				c.refuse(closePolicy, "rate limit exceeded", reasonRateLimit, nil)
				return false
			}
			f.commands.take(d.id, up.Reports, recv)
			if len(up.Readings) == 0 {
				return true // reports only: answered by report_ack once stored
			}
		}
		if refs, err = telemetry.AppendReadingRefs((*rp)[:0], up.Readings); err != nil {
			c.refuse(closeInternal, "internal error", reasonInternal, err)
			return false
		}
	}
	*rp = refs
	n := len(refs)
	f.m.readingsReceived.Add(float64(n))
	cutoff := recv.Add(-f.cfg.BacklogAge).UnixMilli()
	old := 0
	for i := range refs {
		if refs[i].TimeMs < cutoff {
			old++
		}
	}
	f.m.readingsBacklog.Add(float64(old))

	// While frames are held, the read loop holds the device's lock
	// already (settle.go); the seqs they store count as stored.
	d := c.dev
	if c.pend == nil {
		d.mu.Lock()
	}
	if !d.admit(n-old, old, recv, &f.cfg) {
		c.unlockDevice()
		c.refuse(closePolicy, "rate limit exceeded", reasonRateLimit, nil)
		return false
	}
	acked := max(d.acked, c.heldSeq())
	// Seqs strictly increase within a valid frame: the new readings, if
	// any, are a suffix.
	first := n
	for i := range refs {
		if refs[i].Seq > acked {
			first = i
			break
		}
	}
	f.m.readingsDuplicate.Add(float64(first))
	if first == n {
		f.m.framesDuplicate.Inc()
		c.hold(pendingAck{seq: acked, text: text, recv: recv})
		return c.holdOrSettle()
	}
	// The entry is a Batch of Records, written byte by byte around each
	// reading's encoding: what proto.Marshal would write, with no reading
	// decoded or re-encoded (telemetry.AppendRecords).
	fresh := refs[first:]
	recvMs := recv.UnixMilli()
	entry := telemetry.AppendRecords(make([]byte, 0, telemetry.RecordsSize(d.id, recvMs, fresh)), d.id, recvMs, fresh)
	p, err := f.q.Begin(entry)
	if err != nil {
		c.unlockDevice()
		e := appendFailed(err)
		c.refuse(e.code, e.text, e.reason, e.err)
		return false
	}
	// seqs increase: the last is the highest
	c.hold(pendingAck{p: p, stored: n - first, seq: refs[n-1].Seq, text: text, recv: recv})
	return c.holdOrSettle()
}

// unlockDevice releases the device's lock taken for a frame, unless frames
// are held (then settle releases it).
func (c *conn) unlockDevice() {
	if c.pend == nil {
		c.dev.mu.Unlock()
	}
}

// refuse counts and logs a refusal, the one log line it gets, and closes
// the connection with code and text. err may be nil.
func (c *conn) refuse(code int, text, reason string, err error) {
	// The frames held before this one are stored: they are acked first
	// (a failure there only means fewer acks before the close).
	_ = c.settle()
	c.f.m.refusals.WithLabelValues(reason).Inc()
	attrs := []any{"code", code, "reason", reason, "text", text}
	if err != nil {
		attrs = append(attrs, "err", err)
	}
	switch code {
	case closeInternal:
		c.log(slog.LevelError, "frontend: frame not stored; closing", attrs...)
	case closeTryAgainLater:
		c.log(slog.LevelWarn, "frontend: queue refuses appends; closing, nothing acked", attrs...)
	default:
		c.log(slog.LevelWarn, "frontend: frame refused; closing", attrs...)
	}
	c.closeWith(code, text)
}

// closeWith sends a close frame, waits briefly for the device's own (see
// closeLinger), and lets finish drop the connection.
func (c *conn) closeWith(code int, text string) {
	c.f.m.connectionsClosed.WithLabelValues(strconv.Itoa(code)).Inc()
	msg := websocket.FormatCloseMessage(code, text)
	if err := c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(c.f.cfg.WriteTimeout)); err != nil {
		return
	}
	c.linger()
}

// linger reads and discards until the device's close frame arrives (or it
// closes the TCP connection), or closeLinger passes: closing at once with
// unread data from the device would reset the connection, and a TCP stack
// may then drop our close frame before the device reads it. Once a read has
// failed, gorilla fails every read at once, so the rest is drained from the
// TCP connection itself.
func (c *conn) linger() {
	c.mu.Lock()
	c.closing = true
	broken := c.readBroken
	stopping := c.stopCode != 0
	c.mu.Unlock()
	wait := closeLinger
	if stopping {
		// Shutting down or replaced: a forced stop cuts this short anyway.
		wait = min(closeLinger, c.f.cfg.WriteTimeout)
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(wait))
	if broken {
		var buf [256]byte
		for {
			if _, err := c.ws.NetConn().Read(buf[:]); err != nil {
				return
			}
		}
	}
	for {
		if _, _, err := c.ws.NextReader(); err != nil {
			return
		}
	}
}

// finish releases everything the connection holds.
func (c *conn) finish() {
	// Every exit settles what it held; this is the net under them.
	_ = c.settle()
	c.mu.Lock()
	c.closing, c.done = true, true
	if c.ping != nil {
		c.ping.Stop()
	}
	if c.expiry != nil {
		c.expiry.Stop()
	}
	c.mu.Unlock()
	_ = c.ws.Close()
	c.f.release(c)
}
