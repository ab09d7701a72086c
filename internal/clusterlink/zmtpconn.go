package clusterlink

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Bounds on what a peer may send, enforced before zmq4 allocates anything.
const (
	// MaxMessageBytes bounds one ZeroMQ message (all its frames): zmq4
	// allocates each frame at the size its header claims, so a header of
	// 2^62 bytes would end the process. drover's largest message (a batch
	// of at most -max-batch-bytes, 4 MiB by default, or a store-lane batch)
	// is far below.
	MaxMessageBytes = 64 << 20
	// maxHandshakeCommand bounds the peer's READY command (its metadata:
	// socket type and identity, a few hundred bytes).
	maxHandshakeCommand = 16 << 10
	// readBuffer is each connection's read buffer: zmq4 reads every frame
	// header with its own read call; the buffer turns those into one read
	// per buffer, and holds a whole READY command for checking.
	readBuffer  = 64 << 10
	greetingLen = 64
	sigLen      = 10
)

// watchdog closes a connection whose handshakes have not ended in time,
// and reports it once the connection is far enough to be reported.
type watchdog struct {
	timer  *time.Timer
	fired  atomic.Bool
	raw    net.Conn
	report atomic.Pointer[func()]
}

func newWatchdog(d time.Duration, raw net.Conn) *watchdog {
	w := &watchdog{raw: raw}
	w.timer = time.AfterFunc(d, w.fire)
	return w
}

func (w *watchdog) fire() {
	w.fired.Store(true)
	_ = w.raw.Close()
	if f := w.report.Load(); f != nil {
		(*f)()
	}
}

func (w *watchdog) stop() { w.timer.Stop() }

// linkError is an error of a link that zmq4 treats as a broken connection:
// it closes a connection on EOF and on a net.Error that is not a timeout.
type linkError struct{ msg string }

func (e *linkError) Error() string   { return e.msg }
func (e *linkError) Timeout() bool   { return false }
func (e *linkError) Temporary() bool { return false }

var _ net.Error = (*linkError)(nil)

// zmtpConn is a link connection as zmq4 sees it: the TLS connection (or
// the TCP one when insecure) with a parser of the ZMTP stream in each
// direction.
//
// Reading, it refuses a frame whose header announces more than
// MaxMessageBytes for its message, a malformed flags byte, and a READY
// command whose metadata does not parse (zmq4 v0.17.0 indexes it without
// bounds checks: a crafted READY panics the process), before zmq4 sees the
// bytes; and it closes the connection when the ZMTP handshake has not
// ended within the handshake timeout (zmq4 neither times it out nor closes
// a connection whose handshake failed).
//
// Writing, it holds the bytes of a message until its last frame and then
// writes them with one call under a lock. zmq4 writes a message in several
// calls (header, body, per frame) and lets a Send that timed out go on in
// the background while the next Send starts: on a TCP connection its
// writev(2) kept messages whole, but a TLS connection takes each call
// separately, and two messages could interleave. One write per message
// also makes one TLS record (not two) of a small frame.
type zmtpConn struct {
	net.Conn          // the TLS connection, or raw when insecure
	raw      net.Conn // what Close closes: no close_notify, which could block
	br       *bufio.Reader
	watchdog *watchdog
	ready    atomic.Bool // the peer's READY has been read
	// refuse is told why the connection is being dropped; onReady that the
	// ZMTP handshake ended.
	refuse  func(reason string, err error)
	onReady func()

	// Read side: zmq4 reads from one goroutine at a time.
	rstate   int
	rleft    int // bytes left of the greeting, the header or the body
	rbody    int // body size of the current frame
	rmore    bool
	rcmd     bool
	rmessage int // bytes of the current message so far
	maxMsg   int // MaxMessageBytes, or less in tests
	rerr     error

	// Write side.
	wmu      sync.Mutex
	wbuf     []byte
	wflushTo int // wbuf[:wflushTo] holds whole messages
	wstate   int
	wleft    int
	whdr     [9]byte
	whdrN    int
	wmore    bool
	wcmd     bool
	werr     error
}

const (
	stGreeting = iota
	stHeader
	stHeaderBytes
	stBody
)

// newZMTPConn wraps conn (raw, or a TLS connection over raw). The watchdog,
// if any, closes raw unless the ZMTP handshake ends first.
func newZMTPConn(conn, raw net.Conn, watchdog *watchdog, refuse func(string, error)) *zmtpConn {
	return &zmtpConn{
		Conn: conn, raw: raw, br: bufio.NewReaderSize(conn, readBuffer), watchdog: watchdog, refuse: refuse,
		rleft: greetingLen, wleft: greetingLen, maxMsg: MaxMessageBytes,
	}
}

// Close closes the TCP connection without a TLS close_notify: that alert
// is a write, which blocks when the peer does not read.
func (c *zmtpConn) Close() error {
	if c.watchdog != nil {
		c.watchdog.stop()
	}
	return c.raw.Close()
}

// peekSignature waits for the first 10 bytes of the peer's greeting (a
// libzmq peer sends them before anything else) and checks them, without
// consuming them.
func (c *zmtpConn) peekSignature() error {
	sig, err := c.br.Peek(sigLen)
	if err != nil {
		return err
	}
	if sig[0] != 0xFF || sig[sigLen-1]&0x01 != 0x01 {
		return &linkError{"clusterlink: not a ZMTP peer (bad greeting signature)"}
	}
	return nil
}

func (c *zmtpConn) Read(p []byte) (int, error) {
	if c.rerr != nil {
		return 0, c.rerr
	}
	if len(p) == 0 {
		return 0, nil
	}
	if c.rstate == stHeader {
		if err := c.readHeader(); err != nil {
			return 0, c.fail(err)
		}
	}
	n, err := c.br.Read(p[:min(len(p), c.rleft)])
	c.rleft -= n
	if c.rleft == 0 {
		switch c.rstate {
		case stGreeting:
			c.rstate = stHeader
		case stHeaderBytes:
			c.rstate, c.rleft = stBody, c.rbody
			if c.rleft == 0 {
				c.endFrame()
			}
		case stBody:
			c.endFrame()
		}
	}
	if err != nil {
		return n, c.fail(err)
	}
	return n, nil
}

// fail remembers a read error; before the handshake ended it also closes
// the connection, which zmq4 would leave open after a failed handshake.
func (c *zmtpConn) fail(err error) error {
	c.rerr = err
	if !c.ready.Load() {
		_ = c.Close()
	}
	return err
}

// readHeader looks at the next frame's header before any of it is
// delivered, and refuses what zmq4 must not see.
func (c *zmtpConn) readHeader() error {
	h, err := c.br.Peek(2)
	if err != nil {
		return err
	}
	flags := h[0]
	if flags&^0x07 != 0 {
		return c.refused("protocol", "clusterlink: malformed ZMTP frame (reserved flag bits set)")
	}
	more, long, cmd := flags&0x01 != 0, flags&0x02 != 0, flags&0x04 != 0
	hlen, size := 2, uint64(h[1])
	if long {
		if h, err = c.br.Peek(9); err != nil {
			return err
		}
		hlen, size = 9, binary.BigEndian.Uint64(h[1:9])
	}
	if cmd && more {
		return c.refused("protocol", "clusterlink: malformed ZMTP command (more flag set)")
	}
	if size > uint64(c.maxMsg-c.rmessage) {
		return c.refused("too_large", fmt.Sprintf("clusterlink: ZeroMQ message larger than %d bytes refused", c.maxMsg))
	}
	if cmd && !c.ready.Load() {
		if size > maxHandshakeCommand {
			return c.refused("protocol", "clusterlink: handshake command too large")
		}
		b, err := c.br.Peek(hlen + int(size))
		if err != nil {
			return err
		}
		if err := checkReady(b[hlen:]); err != nil {
			return c.refused("protocol", err.Error())
		}
	}
	c.rstate, c.rleft, c.rbody, c.rmore, c.rcmd = stHeaderBytes, hlen, int(size), more, cmd
	c.rmessage += int(size)
	return nil
}

func (c *zmtpConn) refused(reason, msg string) error {
	err := &linkError{msg}
	if c.refuse != nil {
		c.refuse(reason, err)
	}
	_ = c.Close()
	return err
}

func (c *zmtpConn) endFrame() {
	if c.rcmd && !c.ready.Load() {
		// The peer's READY: the handshake is over (zmq4 sent its own READY
		// before reading this one).
		if c.watchdog != nil {
			c.watchdog.stop()
		}
		c.ready.Store(true)
		if c.onReady != nil {
			c.onReady()
		}
	}
	if !c.rmore {
		c.rmessage = 0
	}
	c.rstate, c.rleft = stHeader, 0
}

// checkReady checks the body of the peer's first command: the NULL
// mechanism's READY, a name and properties (name length, name, value
// length, value), each within the body.
func checkReady(b []byte) error {
	if len(b) == 0 || int(b[0]) > len(b)-1 {
		return errors.New("clusterlink: malformed handshake command")
	}
	if string(b[1:1+int(b[0])]) != "READY" {
		return errors.New("clusterlink: unexpected handshake command (drover links use the NULL mechanism)")
	}
	for p := b[1+int(b[0]):]; len(p) > 0; {
		k := int(p[0])
		if k == 0 || len(p) < 1+k+4 {
			return errors.New("clusterlink: malformed handshake metadata")
		}
		v := binary.BigEndian.Uint32(p[1+k:])
		p = p[1+k+4:]
		if uint64(v) > uint64(len(p)) {
			return errors.New("clusterlink: malformed handshake metadata")
		}
		p = p[v:]
	}
	return nil
}

func (c *zmtpConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return 0, c.werr
	}
	base := len(c.wbuf)
	c.wbuf = append(c.wbuf, p...)
	for i := 0; i < len(p); {
		switch c.wstate {
		case stGreeting, stBody:
			n := min(c.wleft, len(p)-i)
			i += n
			c.wleft -= n
			if c.wleft > 0 {
				continue
			}
			if c.wstate == stGreeting || !c.wmore || c.wcmd {
				c.wflushTo = base + i // a whole greeting, command or message
			}
			c.wstate = stHeader
		case stHeader:
			c.whdr[c.whdrN] = p[i]
			c.whdrN++
			i++
			need := 2
			if c.whdr[0]&0x02 != 0 {
				need = 9
			}
			if c.whdrN < need {
				continue
			}
			size := uint64(c.whdr[1])
			if need == 9 {
				size = binary.BigEndian.Uint64(c.whdr[1:9])
			}
			c.wmore, c.wcmd = c.whdr[0]&0x01 != 0, c.whdr[0]&0x04 != 0
			c.whdrN, c.wstate, c.wleft = 0, stBody, int(size)
			if size == 0 {
				if !c.wmore || c.wcmd {
					c.wflushTo = base + i
				}
				c.wstate = stHeader
			}
		}
	}
	if c.wflushTo == 0 {
		return len(p), nil
	}
	_, err := c.Conn.Write(c.wbuf[:c.wflushTo])
	rest := copy(c.wbuf, c.wbuf[c.wflushTo:])
	c.wbuf, c.wflushTo = c.wbuf[:rest], 0
	if rest == 0 && cap(c.wbuf) > 1<<20 {
		c.wbuf = nil // do not keep the largest message's buffer forever
	}
	if err != nil {
		c.werr = err
		return 0, err
	}
	return len(p), nil
}
