package livefeed

// A client's writer: what a take hands it, the messages it writes, its failures.

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// takeBuf is what one take hands the writer; reused between takes.
type takeBuf struct {
	controls [][]byte
	alerts   [][]byte
	snap     *snapshotOut
	shared   []sharedRef // a stream's messages, for a member
	items    []pendingItem
	seq      uint64 // the take's number, when it hands out items
	next     int64
	more     bool
}

func (t *takeBuf) reset() {
	t.controls, t.alerts, t.snap, t.seq, t.next, t.more = nil, nil, nil, 0, 0, false
	clear(t.items)
	t.items = t.items[:0]
	clear(t.shared)
	t.shared = t.shared[:0]
}

func (t *takeBuf) empty() bool {
	return len(t.controls) == 0 && len(t.alerts) == 0 && t.snap == nil && len(t.shared) == 0 && len(t.items) == 0
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
		c.f.tryJoin(c)
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
			if err := c.writeData(msg); err != nil {
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
			if err := c.writeData(msg); err != nil {
				c.writeFailed(err)
				return 0, false
			}
			c.f.m.alertsSent.Inc()
		}
		for i, r := range t.shared {
			m := r.m
			_ = c.ws.SetWriteDeadline(time.Now().Add(c.f.cfg.WriteTimeout))
			err := c.ws.WritePreparedMessage(m.pm)
			if err != nil {
				releaseAll(t.shared[i:])
				c.writeFailed(err)
				return 0, false
			}
			r.release()
			c.f.m.messagesSent.Inc()
			c.f.m.updatesSent.Add(float64(m.updates))
			if m.oldest != 0 {
				c.f.m.sendDelay.Observe(float64(time.Now().UnixNano()-m.oldest) / 1e9)
			}
		}
		if len(t.items) > 0 {
			oldest := int64(0)
			for _, p := range t.items {
				if !p.gone && (oldest == 0 || p.v.ingestNs < oldest) {
					oldest = p.v.ingestNs
				}
			}
			bp := updateBufs.Get().(*[]byte)
			*bp = appendUpdate((*bp)[:0], t.items)
			err := c.writeData(*bp)
			if cap(*bp) <= maxPooledUpdate {
				updateBufs.Put(bp)
			}
			if err != nil {
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

// writeData writes msg as one text message with the write timeout. The
// frame header and msg leave in one writev(2) (gorilla's server-side
// WriteMessage), whatever msg's size.
func (c *client) writeData(msg []byte) error {
	_ = c.ws.SetWriteDeadline(time.Now().Add(c.f.cfg.WriteTimeout))
	if err := c.ws.WriteMessage(websocket.TextMessage, msg); err != nil {
		return err
	}
	c.f.m.messagesSent.Inc()
	return nil
}

// writeMessage writes one text message, streamed by fill, with the write
// timeout: for snapshots, which may be megabytes.
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

// updateBufs holds the buffers update messages are built in, shared by
// every client's writer: a buffer is held only while its message is
// written, so memory grows with the writes under way, not with the
// clients. One larger than maxPooledUpdate (a capped take of 1,000
// vehicles is ~350 KB) is left to the collector.
var updateBufs = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledUpdate = 1 << 20

// appendUpdate appends an update message: the vehicles' latest states,
// and the ids of those the client is to remove. Each state's JSON was
// encoded once, when the livefeed applied it (state.go), and is copied
// here.
func appendUpdate(b []byte, items []pendingItem) []byte {
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
	return append(b, '}')
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
