package frontend

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/internal/tlsserve"
)

// The device listener's front door. net/http gives every connection a 4 KiB
// reader and a 4 KiB writer from its pools, and a handler that hijacks the
// connection (a WebSocket upgrade) never gives them back: Hijack hands the
// reader over and allocates a third buffer for the writer. Every device
// connection cost 8–12 KiB of garbage that way, half of what a connection
// allocated (docs/performance.md, "Where a wss:// connection's CPU goes"),
// and the heap the GC keeps for it after a stampede is most of the RSS above
// the live memory of idle connections.
//
// So the listener reads each new connection's request head itself, into a
// pooled buffer. A WebSocket upgrade of IngestPath whose head fits in it is
// served here: the request is parsed with http.ReadRequest, serveIngest
// answers as under net/http (refusals through upgradeResponse, the upgrade
// through its Hijack), and the buffers go back to their pools. Anything else —
// firmware downloads, other paths, a head too large for the buffer — goes to
// net/http with the bytes read so far in front of the connection, so those
// requests are served exactly as before (the TLS state is handed over with
// ConnContext, since net/http sees the wrapper, not the *tls.Conn).

// headBufSize is the buffer the request head is read into: a device's upgrade
// request is a few hundred bytes. Larger heads go to net/http, which takes up
// to its MaxHeaderBytes.
const headBufSize = 4 << 10

var (
	headReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, headBufSize) }}
	// The upgrade's response is written from this buffer (gorilla writes
	// its 101 from the hijacked writer's buffer); 512 bytes hold it.
	headWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 512) }}
	headEnd     = []byte("\r\n\r\n")
)

// upgradeListener is the listener net/http serves: it returns only the
// connections that are not the fast path's.
type upgradeListener struct {
	inner  net.Listener
	f      *Frontend
	toHTTP chan net.Conn
	done   chan struct{}
	once   sync.Once
	err    error // why the accept loop ended; read after done is closed
	wg     sync.WaitGroup

	mu      sync.Mutex
	reading map[net.Conn]struct{} // connections whose head is being read
}

func newUpgradeListener(f *Frontend, inner net.Listener) *upgradeListener {
	l := &upgradeListener{inner: inner, f: f, toHTTP: make(chan net.Conn), done: make(chan struct{}),
		reading: make(map[net.Conn]struct{})}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// acceptLoop takes connections from the inner listener and routes each in a
// goroutine of its own, as net/http does.
func (l *upgradeListener) acceptLoop() {
	defer l.wg.Done()
	var delay time.Duration
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if tlsserve.Retryable(err) {
				// Out of file descriptors and the like: back off as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(delay):
					continue
				case <-l.done:
				}
			}
			l.stop(err)
			return
		}
		delay = 0
		l.wg.Add(1)
		go l.route(c)
	}
}

// Accept returns the next connection for net/http.
func (l *upgradeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.toHTTP:
		return c, nil
	case <-l.done:
		return nil, l.err
	}
}

// Close stops accepting and closes the connections whose head is still being
// read; those being upgraded finish (serveIngest refuses them once the
// frontend is closing).
func (l *upgradeListener) Close() error {
	err := l.inner.Close()
	l.stop(net.ErrClosed)
	l.mu.Lock()
	for c := range l.reading {
		_ = c.Close()
	}
	l.mu.Unlock()
	return err
}

func (l *upgradeListener) stop(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
	})
}

// Addr is the inner listener's address.
func (l *upgradeListener) Addr() net.Addr { return l.inner.Addr() }

// wait returns once every routed connection has left the listener: upgraded,
// refused, or handed to net/http.
func (l *upgradeListener) wait() { l.wg.Wait() }

// route reads c's request head and serves it on the fast path or hands it to
// net/http.
func (l *upgradeListener) route(c net.Conn) {
	defer l.wg.Done()
	l.mu.Lock()
	select {
	case <-l.done:
		l.mu.Unlock()
		_ = c.Close()
		return
	default:
	}
	l.reading[c] = struct{}{}
	l.mu.Unlock()
	// net/http's ReadHeaderTimeout, the same bound.
	_ = c.SetReadDeadline(time.Now().Add(l.f.cfg.WriteTimeout))
	br := headReaders.Get().(*bufio.Reader)
	br.Reset(c)
	fast, err := peekHead(br)
	l.mu.Lock()
	delete(l.reading, c)
	l.mu.Unlock()
	if !fast {
		prefix := bytes.Clone(peekBuffered(br))
		br.Reset(nil)
		headReaders.Put(br)
		if err != nil && len(prefix) == 0 {
			_ = c.Close() // closed, timed out or reset before a byte of request
			return
		}
		select {
		case l.toHTTP <- &prefixConn{Conn: c, prefix: prefix}:
			l.f.m.handedToHTTP.Inc()
		case <-l.done:
			_ = c.Close()
		}
		return
	}
	defer func() { br.Reset(nil); headReaders.Put(br) }()
	req, err := http.ReadRequest(br)
	if err != nil {
		// peekHead saw a whole head, so this is a malformed one.
		l.f.m.refusals.WithLabelValues(reasonBadUpgrade).Inc()
		l.f.m.connectionsRefused.Inc()
		_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"))
		_ = c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	req.RemoteAddr = c.RemoteAddr().String()
	if tc, ok := c.(*tls.Conn); ok {
		st := tc.ConnectionState()
		req.TLS = &st
	}
	bw := headWriters.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() { bw.Reset(nil); headWriters.Put(bw) }()
	w := &upgradeResponse{c: c, br: br, bw: bw, header: make(http.Header, 4)}
	l.f.serveIngest(w, req)
	if !w.hijacked {
		w.finish(l.f.cfg.WriteTimeout)
	}
}

// peekHead fills br until it holds a whole request head, consuming nothing,
// and reports whether that head is the fast path's: a WebSocket upgrade of
// IngestPath. A head larger than br's buffer is not.
func peekHead(br *bufio.Reader) (bool, error) {
	from := 0
	for {
		b := peekBuffered(br)
		if i := bytes.Index(b[from:], headEnd); i >= 0 {
			return isIngestUpgrade(b[:from+i+len(headEnd)]), nil
		}
		if len(b) == br.Size() {
			return false, nil
		}
		from = max(0, len(b)-len(headEnd)+1)
		if _, err := br.Peek(len(b) + 1); err != nil {
			return false, err
		}
	}
}

// peekBuffered returns what br holds without reading or consuming.
func peekBuffered(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	return b
}

// isIngestUpgrade reports whether head is "GET IngestPath[?...] HTTP/1.x"
// with an Upgrade header naming websocket. It only routes: serveIngest and
// gorilla check the request as under net/http.
func isIngestUpgrade(head []byte) bool {
	line, rest, ok := bytes.Cut(head, []byte("\r\n"))
	if !ok {
		return false
	}
	target, ok := bytes.CutPrefix(line, []byte("GET "+IngestPath))
	if !ok || len(target) == 0 || (target[0] != ' ' && target[0] != '?') {
		return false
	}
	for len(rest) > 0 {
		line, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Upgrade")) &&
			bytes.Contains(bytes.ToLower(value), []byte("websocket")) {
			return true
		}
	}
	return false
}

// upgradeResponse is the http.ResponseWriter of a fast-path request: it
// hijacks for the upgrade, and writes a refusal as one response with
// Connection: close.
type upgradeResponse struct {
	c        net.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	header   http.Header
	status   int
	body     []byte
	hijacked bool
}

func (w *upgradeResponse) Header() http.Header { return w.header }

func (w *upgradeResponse) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *upgradeResponse) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	w.body = append(w.body, p...)
	return len(p), nil
}

// Hijack hands the connection to gorilla with the head's buffers; they go
// back to their pools when route returns (gorilla keeps neither: the
// frontend gives it its own read buffer size and write buffer pool).
func (w *upgradeResponse) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.status != 0 {
		return nil, nil, errors.New("frontend: hijack after the response began")
	}
	w.hijacked = true
	return newAheadConn(w.c), bufio.NewReadWriter(w.br, w.bw), nil
}

// finish writes the response and closes the connection, as net/http does for
// a request that asked to upgrade and was refused.
func (w *upgradeResponse) finish(timeout time.Duration) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.header.Set("Connection", "close")
	w.header.Set("Content-Length", strconv.Itoa(len(w.body)))
	_ = w.c.SetWriteDeadline(time.Now().Add(timeout))
	fmt.Fprintf(w.bw, "HTTP/1.1 %03d %s\r\n", w.status, http.StatusText(w.status))
	_ = w.header.Write(w.bw)
	_, _ = w.bw.WriteString("\r\n")
	_, _ = w.bw.Write(w.body)
	_ = w.bw.Flush()
	// The device sent nothing but the head, which route consumed: closing
	// does not reset the connection before it reads the response.
	_ = w.c.Close()
}

// prefixConn is a connection handed to net/http with the bytes the listener
// read from it first.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) > 0 {
		n := copy(b, p.prefix)
		p.prefix = p.prefix[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

// tlsConnKey carries a handed-over connection's *tls.Conn to withTLSState.
type tlsConnKey struct{}

// connContext is net/http's ConnContext: it remembers the *tls.Conn under a
// prefixConn, which net/http cannot see.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*prefixConn); ok {
		if tc, ok := pc.Conn.(*tls.Conn); ok {
			return context.WithValue(ctx, tlsConnKey{}, tc)
		}
	}
	return ctx
}

// withTLSState sets r.TLS for requests of handed-over TLS connections, as
// net/http would have.
func withTLSState(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			if tc, ok := r.Context().Value(tlsConnKey{}).(*tls.Conn); ok {
				st := tc.ConnectionState()
				r.TLS = &st
			}
		}
		h.ServeHTTP(w, r)
	})
}
