package frontend

// Frames a device sent back to back: one group commit, one write of acks.
//
// A device keeps several frames in flight (its window) and, after an outage
// or while the frontend is busy, they wait in the socket one behind the
// other. Taken one at a time, each costs a wait for its own group commit (a
// park and a wake of the read loop) and a write(2) of its own ack, which on
// loopback also runs the device's TCP input inside the frontend's call: in
// the throughput run those writes were 23% of the frontend's CPU
// (docs/performance.md, "Frames read ahead").
//
// So the read loop begins a frame's append (queue.Begin) and, while further
// frames are already in the socket, reads and begins them too, up to
// maxAhead; then it settles the lot: waits for each append in order (they
// share group commits), and writes their acks in one write(2), still one
// ack per frame, in order, byte for byte what it wrote before
// (docs/ingest.md: "acks come back one per frame, in order"). Nothing waits
// on the network while frames are held: before a read would wait, the
// connection settles them first (aheadConn.Read), so a device that sent one
// frame and waits for its ack gets it as soon as it is durable, as before.
//
// The device's lock (device.mu) is held from the first frame begun until
// the settle, as it was held across each frame's append before: a newer
// connection of the same device waits, and a resend is stored once.
//
// A read that does not wait needs the socket (syscall.RawConn): aheadConn
// wraps the TCP connection, under gorilla for ws:// (the front door's
// Hijack) and under the *tls.Conn for wss:// (tlsserve.WrapConn), where the
// acks' TLS records go out in one write(2). Only the rare upgrade that
// net/http serves (a request head over 4 KiB) settles every frame at once,
// which is what all connections did before.

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// maxAhead is how many frames the read loop begins before it settles them:
// the window of a typical device, and a bound on what a connection holds
// (its entries, its device's lock) before its acks go out.
const maxAhead = 8

// aheadConn is a device's TCP connection as gorilla sees it.
type aheadConn struct {
	*net.TCPConn
	raw syscall.RawConn

	// Only the read loop reads, arms and calls these.
	settle func() error // the read loop's settle; set once at connect
	armed  bool         // frames are held: settle before a read waits
	// full: the last read filled the buffer it was given, so the socket
	// may hold more; handed: the bytes reads have returned (see mayHoldMore).
	full   bool
	handed int64
	// underTLS: a *tls.Conn reads this connection and keeps what it read
	// beyond a record, where neither of the above can see it.
	underTLS bool

	mu   sync.Mutex
	held *[]byte // writes gathered while acks are written together; nil otherwise
}

// newAheadConn wraps c, which gorilla reads, when it is a plain TCP
// connection; anything else (a *tls.Conn, whose own TCP connection is
// wrapped by newAheadConnUnderTLS) is returned as it is.
func newAheadConn(c net.Conn) net.Conn { return wrapAhead(c, false) }

// newAheadConnUnderTLS wraps c, which a *tls.Conn reads (tlsserve.WrapConn).
func newAheadConnUnderTLS(c net.Conn) net.Conn { return wrapAhead(c, true) }

func wrapAhead(c net.Conn, underTLS bool) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &aheadConn{TCPConn: tc, raw: raw, underTLS: underTLS}
}

// aheadOf is the aheadConn under a connection gorilla reads: the
// connection itself (ws://) or the one under its TLS (wss://); nil when
// there is none.
func aheadOf(c net.Conn) *aheadConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	a, _ := c.(*aheadConn)
	return a
}

// mayHoldMore reports whether more of the device's bytes may be waiting
// after the frames the read loop has taken, consumed bytes in all on the
// wire: so it holds the frames for the next read rather than settling at
// once. When the last read returned less than it was asked for, the socket
// was empty then, and gorilla's buffer holds nothing beyond what the loop
// took: a device sending one frame at a time then pays no extra read(2).
// Under TLS the TLS layer may hold whole records of later frames, unseen
// here: it always holds (a read that finds the socket empty settles).
// Wrong answers cost a read or a write, never an ack: a read that would
// wait settles first whatever this said.
func (a *aheadConn) mayHoldMore(consumed int64) bool {
	return a.underTLS || a.full || a.handed > consumed
}

// Read reads what the socket holds without waiting while frames are held;
// when it would have to wait (or the read fails, or the device closed), it
// settles them first, then reads as usual.
func (a *aheadConn) Read(p []byte) (int, error) {
	if !a.armed || len(p) == 0 {
		return a.read(p)
	}
	n, err := a.readNow(p)
	if n > 0 {
		a.full, a.handed = n == len(p), a.handed+int64(n)
		return n, nil
	}
	a.armed = false
	if serr := a.settle(); serr != nil {
		return 0, serr
	}
	if err != nil && !errors.Is(err, errWouldBlock) {
		return 0, err
	}
	return a.read(p)
}

// read is a read that waits, as net.Conn's.
func (a *aheadConn) read(p []byte) (int, error) {
	n, err := a.TCPConn.Read(p)
	a.full, a.handed = n == len(p), a.handed+int64(n)
	return n, err
}

// errWouldBlock: the socket holds nothing to read now.
var errWouldBlock = errors.New("frontend: nothing to read yet")

// readNow is one read(2) that does not wait for data.
func (a *aheadConn) readNow(p []byte) (int, error) {
	var n int
	var serr error
	rerr := a.raw.Read(func(fd uintptr) bool {
		for {
			n, serr = syscall.Read(int(fd), p)
			if serr != syscall.EINTR {
				return true
			}
		}
	})
	switch {
	case rerr != nil: // closed, or the read deadline passed (a stop, the idle timeout)
		return 0, rerr
	case serr == syscall.EAGAIN:
		return 0, errWouldBlock
	case serr != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: a.LocalAddr(), Addr: a.RemoteAddr(), Err: os.NewSyscallError("read", serr)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// heldBufs recycles the buffers acks are gathered in.
var heldBufs = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// Write writes p, or adds it to what is gathered.
func (a *aheadConn) Write(p []byte) (int, error) {
	a.mu.Lock()
	if a.held != nil {
		*a.held = append(*a.held, p...)
		a.mu.Unlock()
		return len(p), nil
	}
	a.mu.Unlock()
	return a.TCPConn.Write(p)
}

// gather starts gathering writes. The caller holds the connection's write
// lock (conn.wmu) until release, so no data frame of another goroutine
// comes between; a ping gorilla writes meanwhile is gathered too.
func (a *aheadConn) gather() {
	b := heldBufs.Get().(*[]byte)
	*b = (*b)[:0]
	a.mu.Lock()
	a.held = b
	a.mu.Unlock()
}

// release writes what was gathered, in one write(2), under the write
// deadline gorilla set for the last of them.
func (a *aheadConn) release() error {
	a.mu.Lock()
	b := a.held
	a.held = nil
	a.mu.Unlock()
	if b == nil {
		return nil
	}
	var err error
	if len(*b) > 0 {
		_, err = a.TCPConn.Write(*b)
	}
	if cap(*b) <= 4<<10 {
		heldBufs.Put(b)
	}
	return err
}
