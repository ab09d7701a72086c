package sim

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/telemetry"
)

// slowTickEvery is how often a device whose window is full takes its readings due.
const slowTickEvery = 100 * time.Millisecond

// sendAvailable sends frames while the window and the outbox allow, and reports whether it
// stopped because the window is full. Several frames ready at once go to the socket in one
// write (batchConn).
func (d *device) sendAvailable(conn *websocket.Conn) (windowFull bool, err error) {
	f, cfg := d.f, d.f.cfg
	msgType := websocket.BinaryMessage
	if cfg.JSON {
		msgType = websocket.TextMessage
	}
	bc, _ := conn.NetConn().(*batchConn)
	held := false
	d.sending = d.sending[:0]
	for {
		d.mu.Lock()
		if len(d.frames) >= cfg.Window || d.next >= d.out.len() {
			windowFull = len(d.frames) >= cfg.Window
			d.mu.Unlock()
			break
		}
		if bc != nil && len(d.sending) == 0 {
			ready := min(cfg.Window-len(d.frames), (d.out.len()-d.next+cfg.FrameReadings-1)/cfg.FrameReadings)
			if held = ready > 1; held {
				bc.hold()
			}
		}
		k := min(cfg.FrameReadings, d.out.len()-d.next)
		if err := d.encodeFrame(d.next, k); err != nil {
			d.mu.Unlock()
			f.c.errors.Add(1)
			d.release(bc, held)
			return false, err
		}
		// The send time is taken once the frame is encoded, just before it goes to the socket
		// (with the frames held with it, a few µs later); a resent reading keeps its first.
		fr := sentFrame{now: int64(f.since()) + 1, first: d.out.at(d.next).seq, k: k, bytes: len(d.wbuf)}
		for i := range k {
			s := d.out.at(d.next + i)
			if s.sentNs == 0 {
				s.sentNs = fr.now
			} else {
				fr.resent++
			}
		}
		if len(d.frames) == 0 {
			d.progressAt = f.since()
		}
		d.frames = append(d.frames, d.out.at(d.next+k-1).seq)
		d.next += k
		f.c.inFlight.Add(int64(k))
		d.mu.Unlock()

		_ = conn.SetWriteDeadline(time.Now().Add(cfg.WriteTimeout))
		err := conn.WriteMessage(msgType, d.wbuf)
		d.sending = append(d.sending, fr)
		if err != nil {
			d.release(bc, held)
			return false, fmt.Errorf("write frame: %w", err)
		}
		if !held {
			d.sent()
		}
	}
	if held {
		if err := bc.flush(); err != nil {
			d.release(bc, false)
			return false, fmt.Errorf("write frames: %w", err)
		}
		d.sent()
	}
	return windowFull, nil
}

// sentFrame is a frame handed to the socket: its send time, first seq, readings (of which
// resent had been sent before) and size.
type sentFrame struct {
	now       int64
	first     uint64
	k, resent int
	bytes     int
}

// sent counts the frames of d.sending, which reached the socket.
func (d *device) sent() {
	c := &d.f.c
	for _, fr := range d.sending {
		c.sent.Add(uint64(fr.k))
		c.frames.Add(1)
		c.bytes.Add(uint64(fr.bytes))
		if fr.resent > 0 {
			c.resent.Add(uint64(fr.resent))
		}
	}
	d.sending = d.sending[:0]
}

// release gives up the frames of d.sending, which did not reach the socket (the session ends):
// their readings were never sent. held: the connection holds them, and drops them.
func (d *device) release(bc *batchConn, held bool) {
	if held {
		bc.discard()
	}
	for _, fr := range d.sending {
		d.unstamp(fr.first, fr.k, fr.now)
	}
	d.sending = d.sending[:0]
}

// encodeFrame encodes the k outbox readings from index i as one uplink frame into d.wbuf:
// binary straight from the samples (frame.go), JSON through protobuf-go. Called under mu.
func (d *device) encodeFrame(i, k int) error {
	if !d.f.cfg.JSON {
		d.wbuf = appendUplink(d.wbuf[:0], d.out, i, k)
		return nil
	}
	for len(d.scratch) < k {
		d.scratch = append(d.scratch, newFrameReading())
	}
	d.uplink.Readings = d.uplink.Readings[:0]
	for j := range k {
		d.uplink.Readings = append(d.uplink.Readings, d.scratch[j].fill(d.out.at(i+j)))
	}
	var err error
	d.wbuf, err = telemetry.AppendUplink(d.wbuf[:0], &d.uplink, d.f.cfg.JSON)
	return err
}

// unstamp forgets the send time of the k readings from seq first whose first send was the one
// stamped at, which failed: they were never sent.
func (d *device) unstamp(first uint64, k int, at int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.out.len() == 0 {
		return
	}
	// Seqs in the outbox are contiguous: the reading of seq s is at s - (seq of the oldest).
	head := d.out.at(0).seq
	for seq := max(first, head); seq < first+uint64(k) && seq-head < uint64(d.out.len()); seq++ {
		if s := d.out.at(int(seq - head)); s.sentNs == at {
			s.sentNs = 0
		}
	}
}

// batchConn is a device's connection under its WebSocket. While the writer holds it (several
// frames ready at once: a window opened by more than a frame), writes collect in a buffer and
// go to the socket in one write at flush: one syscall, not one per frame, for the same bytes.
// Outside a hold, writes go straight through. Writes from the reader (pongs) while held wait
// for the flush, a few µs.
type batchConn struct {
	net.Conn
	mu   sync.Mutex
	held bool
	buf  *[]byte // while held, from batchBufs
}

// batchBufs are the held writes' buffers, shared by every device: a device holds one only
// while it sends.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// wrapBatch wraps a dial function's connections in batchConns.
func wrapBatch(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	if dial == nil {
		return nil
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &batchConn{Conn: c}, nil
	}
}

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.held {
		return c.Conn.Write(p)
	}
	*c.buf = append(*c.buf, p...)
	return len(p), nil
}

// hold starts collecting writes.
func (c *batchConn) hold() {
	c.mu.Lock()
	c.held, c.buf = true, batchBufs.Get().(*[]byte)
	c.mu.Unlock()
}

// flush writes what was collected, in one write, and ends the hold.
func (c *batchConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.Conn.Write(*c.buf)
	c.put()
	return err
}

// discard ends the hold and drops what was collected.
func (c *batchConn) discard() {
	c.mu.Lock()
	c.put()
	c.mu.Unlock()
}

func (c *batchConn) put() {
	if cap(*c.buf) <= 256<<10 {
		*c.buf = (*c.buf)[:0]
		batchBufs.Put(c.buf)
	}
	c.held, c.buf = false, nil
}
