package frontend

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/telemetry"
)

// The frames a read loop has begun to store and not yet acked (ahead.go
// says why it holds several).

// pendingAck is one frame begun and not yet acked.
type pendingAck struct {
	p      queue.Pending // its append; unset when stored is 0
	stored int           // readings it stores; 0: a duplicate, acked only
	seq    uint64        // the ack it gets once it and every frame before it are durable
	text   bool          // the frame's encoding, the ack's
	recv   time.Time
}

// pendBufs recycles the lists of held frames: an idle connection holds none.
var pendBufs = sync.Pool{New: func() any { s := make([]pendingAck, 0, maxAhead); return &s }}

// settleError is why a settle ended the connection: a frame the queue did not
// store (code, text and reason of the close to send), or acks not written
// (code 0: the connection is gone).
type settleError struct {
	code         int
	text, reason string
	err          error
}

func (e *settleError) Error() string {
	if e.err == nil {
		return e.text
	}
	return e.text + ": " + e.err.Error()
}

func (e *settleError) Unwrap() error { return e.err }

// hold adds a frame to the held list, locking nothing: the caller holds
// c.dev.mu, which stays held until settle.
func (c *conn) hold(pa pendingAck) {
	if c.pend == nil {
		c.pend = pendBufs.Get().(*[]pendingAck)
	}
	*c.pend = append(*c.pend, pa)
}

// heldSeq is the highest seq the held frames store or ack: the last one's,
// since each ack is at least the one before it (0 when none is held).
func (c *conn) heldSeq() uint64 {
	if c.pend == nil {
		return 0
	}
	return (*c.pend)[len(*c.pend)-1].seq
}

// holdOrSettle leaves the held frames for the next read to settle when the
// connection can read ahead, more may be waiting (aheadConn.mayHoldMore)
// and it holds fewer than maxAhead; otherwise it settles them now. It
// returns false when the connection was closed.
func (c *conn) holdOrSettle() bool {
	if c.ahead != nil && c.ahead.mayHoldMore(c.wireBytes) && len(*c.pend) < maxAhead {
		c.ahead.armed = true
		return true
	}
	return c.settleNow()
}

// settleNow settles the held frames, if any, and closes the connection if
// that failed. It returns false when it did.
func (c *conn) settleNow() bool {
	if err := c.settle(); err != nil {
		c.settleFailed(err)
		return false
	}
	return true
}

// settleInRead is aheadConn's settle: inside gorilla's read, so a failure
// only returns (gorilla then fails the read, and readFailed closes).
func (c *conn) settleInRead() error {
	if err := c.settle(); err != nil {
		return err
	}
	return nil
}

// settle waits for the held frames' appends in order, records what is
// durable, releases the device, and writes the acks of every frame up to
// the first that failed, in one write when it can. A frame after one that
// failed is not acked even if it is stored (an ack is cumulative: it would
// cover the failed one): its device resends it and it is stored once.
func (c *conn) settle() *settleError {
	if c.ahead != nil {
		c.ahead.armed = false
	}
	pend := c.pend
	if pend == nil {
		return nil
	}
	c.pend = nil
	f, d := c.f, c.dev
	var fail *settleError
	durable := 0
	for i := range *pend {
		pa := &(*pend)[i]
		if pa.stored > 0 {
			// Every append begun is waited for, failed or not.
			if _, err := pa.p.Wait(f.appendCtx); err != nil && fail == nil {
				fail = appendFailed(err)
			}
		}
		if fail != nil {
			continue
		}
		durable = i + 1
		if pa.stored > 0 {
			d.acked = max(d.acked, pa.seq)
			f.m.framesStored.Inc()
			f.m.readingsStored.Add(float64(pa.stored))
		}
	}
	d.mu.Unlock()
	if werr := c.writeAcks((*pend)[:durable]); werr != nil && fail == nil {
		fail = werr
	}
	clear(*pend)
	*pend = (*pend)[:0]
	pendBufs.Put(pend)
	return fail
}

// appendFailed is the close for a frame the queue did not store.
func appendFailed(err error) *settleError {
	if queue.Retryable(err) {
		return &settleError{code: closeTryAgainLater, text: "try again later", reason: reasonOverloaded, err: err}
	}
	return &settleError{code: closeInternal, text: "internal error", reason: reasonInternal, err: err}
}

// writeAcks writes one ack per frame, in order and in each frame's encoding,
// gathered into one write(2) on a connection that reads ahead.
func (c *conn) writeAcks(list []pendingAck) *settleError {
	if len(list) == 0 {
		return nil
	}
	c.wmu.Lock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(c.f.cfg.WriteTimeout))
	gathered := c.ahead != nil && len(list) > 1
	if gathered {
		c.ahead.gather()
	}
	var err, encErr error
	for i := range list {
		var buf [16]byte
		msg, typ := telemetry.AppendAck(buf[:0], list[i].seq), websocket.BinaryMessage
		if list[i].text {
			if msg, encErr = telemetry.EncodeDownlink(telemetry.NewAck(list[i].seq), true); encErr != nil {
				break
			}
			typ = websocket.TextMessage
		}
		if err = c.ws.WriteMessage(typ, msg); err != nil {
			break
		}
	}
	if gathered {
		if rerr := c.ahead.release(); err == nil {
			err = rerr
		}
	}
	c.wmu.Unlock()
	switch {
	case encErr != nil:
		return &settleError{code: closeInternal, text: "internal error", reason: reasonInternal, err: encErr}
	case err != nil:
		// The readings are stored; the device will resend them and be
		// acked then, without storing them twice.
		return &settleError{err: err}
	}
	c.f.m.ackWrites.Inc()
	for i := range list {
		c.f.m.ackLatency.Observe(time.Since(list[i].recv).Seconds())
	}
	return nil
}

// settleFailed closes the connection after a failed settle: with the close
// a frame the queue refused calls for, or quietly when the acks could not
// be written (the connection is gone).
func (c *conn) settleFailed(err error) {
	var se *settleError
	if !errors.As(err, &se) || se.code == 0 {
		c.log(slog.LevelDebug, "frontend: ack not delivered", "err", err)
		c.f.m.connectionsClosed.WithLabelValues("none").Inc()
		return
	}
	c.refuse(se.code, se.text, se.reason, se.err)
}
