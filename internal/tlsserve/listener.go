package tlsserve

import (
	"context"
	"crypto/tls"
	"errors"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Listener accepts TCP connections and returns them as *tls.Conn whose
// handshake is done, so that an http.Server serving it sees TLS
// connections (r.TLS is set) and does no handshake of its own. The
// handshakes run here, under the server's Limits:
//
//   - accepted connections wait in a FIFO backlog of Limits.Backlog. While
//     it is full, the listener accepts no more: new connections wait in the
//     kernel's accept queue (the listen backlog, net.core.somaxconn) and,
//     past it, the kernel drops their SYNs and the clients' TCP sends them
//     again (after 1 s, 3 s, ...). Closing them instead would fail their
//     handshakes: a Go client then forgets its session ticket, comes back
//     with a full handshake, and the retries of a stampede cost accepts and
//     ClientHellos for nothing. A connection that waited longer than half of
//     Limits.HandshakeTimeout in the backlog is closed when its turn comes,
//     and so is one whose client has closed it meanwhile (given up while it
//     waited, here or in the kernel's queue): a handshake for nobody is the
//     waste this is here to avoid;
//   - a connection's handshake starts when the budget holds a full
//     handshake (Limits.HandshakeRate a second, times the factor set by
//     [Listener.SetRateFactor]) and fewer than Limits.MaxHandshakes are in
//     progress. A full handshake is charged at start, and what the
//     handshake did not cost (HandshakeCost) is refunded once it is done,
//     so that the budget counts what the CPU actually did.
//
// Closing a connection before its handshake is the only refusal possible
// there (an HTTP answer needs TLS first), and only one that waited too
// long or whose client left is closed: one that found no room is left
// waiting in the kernel. Admission with an answer (503 and
// Retry-After) is the HTTP handler's, after the handshake.
type Listener struct {
	inner  net.Listener
	s      *Server
	lim    Limits
	m      *metrics
	bucket bucket

	pending chan pendingConn
	// room holds a token for each place taken in the backlog: connections
	// accepted and not yet started (or refused), the one the dispatcher
	// holds included. The accept loop takes one before each accept.
	room  chan struct{}
	ready chan *tls.Conn
	sem   chan struct{}

	closeOnce sync.Once // Close
	stopOnce  sync.Once // closing closed: by Close, or by a failed accept
	closed    chan struct{}
	ctx       context.Context // ends when the listener closes: aborts handshakes
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	acceptErr atomic.Pointer[error]
	wrap      func(net.Conn) net.Conn // WrapConn's; nil: none
}

// ListenerOption changes what NewListener builds.
type ListenerOption func(*Listener)

// WrapConn has TLS run over wrap(c) for each accepted connection c, from its
// handshake on (the frontend's aheadConn, which reads the socket without
// waiting while frames are held, lives under the *tls.Conn this way). The
// connection the listener's own checks look at stays c; wrap may return c.
func WrapConn(wrap func(net.Conn) net.Conn) ListenerOption {
	return func(l *Listener) { l.wrap = wrap }
}

type pendingConn struct {
	c  net.Conn
	at time.Time
}

// NewListener serves TLS over inner under the server's configuration and
// limits. Close closes inner too.
func (s *Server) NewListener(inner net.Listener, opts ...ListenerOption) *Listener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Listener{
		inner:   inner,
		s:       s,
		lim:     s.cfg.Limits,
		m:       s.m,
		pending: make(chan pendingConn, s.cfg.Backlog),
		room:    make(chan struct{}, s.cfg.Backlog),
		ready:   make(chan *tls.Conn),
		sem:     make(chan struct{}, s.cfg.MaxHandshakes),
		closed:  make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
	}
	for _, o := range opts {
		o(l)
	}
	l.bucket.init(s.cfg.HandshakeRate)
	l.m.rate.Set(s.cfg.HandshakeRate)
	queued := func() int { return acceptQueueLen(inner) }
	l.m.acceptQueue.Store(&queued)
	l.wg.Add(2)
	go l.acceptLoop()
	go l.dispatch()
	return l
}

// SetRateFactor scales the handshake budget: admission control lowers it
// while the connections already open need the CPU (f < 1) and gives it
// back (f = 1). No effect without a budget.
func (l *Listener) SetRateFactor(f float64) {
	if l.lim.HandshakeRate <= 0 {
		return
	}
	f = min(max(f, 0.01), 1)
	r := l.lim.HandshakeRate * f
	l.bucket.setRate(r)
	l.m.rate.Set(r)
}

// Accept returns the next connection whose handshake succeeded.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.closed:
		if p := l.acceptErr.Load(); p != nil {
			return nil, *p
		}
		return nil, net.ErrClosed
	}
}

// Close stops accepting, closes the connections waiting for a handshake
// and aborts the handshakes in progress. Connections already returned by
// Accept are the caller's.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.stop()
		l.m.acceptQueue.Store(nil)
		err = l.inner.Close()
		l.wg.Wait()
	})
	return err
}

// stop ends accepting and handshaking.
func (l *Listener) stop() {
	l.stopOnce.Do(func() {
		close(l.closed)
		l.cancel()
	})
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// acceptLoop accepts TCP connections into the backlog until the listener
// closes, each once the backlog has room for it: until then the kernel
// holds it. An error that is not the close (too many open files) is
// retried after a pause, as net/http does, rather than ending the
// listener.
func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	var pause time.Duration
	for {
		select {
		case l.room <- struct{}{}:
		case <-l.closed:
			return
		}
		c, err := l.inner.Accept()
		if err != nil {
			<-l.room
			select {
			case <-l.closed:
				return
			default:
			}
			if Retryable(err) {
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				select {
				case <-time.After(pause):
					continue
				case <-l.closed:
					return
				}
			}
			l.acceptErr.Store(&err)
			l.stop()
			return
		}
		pause = 0
		l.m.waiting.Inc()
		l.pending <- pendingConn{c: c, at: time.Now()} // never blocks: at most Backlog are in it
	}
}

// leave gives back the backlog place of a connection that started its
// handshake or was closed.
func (l *Listener) leave() {
	<-l.room
	l.m.waiting.Dec()
}

// Retryable reports whether an Accept error is a passing shortage (out of
// file descriptors or buffers, a connection aborted before it was taken)
// after which a listener should wait and accept again.
func Retryable(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// dispatch starts the handshakes of the backlog in order, each when the
// budget and a slot allow, until the listener closes; then it closes what
// still waits and lets the handshakes in progress end.
func (l *Listener) dispatch() {
	defer l.wg.Done()
	var hs sync.WaitGroup
	defer func() {
		for {
			select {
			case p := <-l.pending:
				l.leave()
				_ = p.c.Close()
			default:
				hs.Wait()
				return
			}
		}
	}()
	maxWait := l.lim.HandshakeTimeout / 2
	for {
		var p pendingConn
		select {
		case p = <-l.pending:
		case <-l.closed:
			return
		}
		if time.Since(p.at) > maxWait {
			l.leave()
			l.m.refused.WithLabelValues(refusedWait).Inc()
			_ = p.c.Close()
			continue
		}
		if !l.bucket.take(l.closed) {
			l.leave()
			_ = p.c.Close()
			return
		}
		select {
		case l.sem <- struct{}{}:
		case <-l.closed:
			l.leave()
			l.bucket.refund(1)
			_ = p.c.Close()
			return
		}
		l.leave()
		if waited := time.Since(p.at) > maxWait; waited || peerGone(p.c) {
			// It waited for the budget or a slot too long, or its
			// client has left.
			<-l.sem
			l.bucket.refund(1)
			reason := refusedGone
			if waited {
				reason = refusedWait
			}
			l.m.refused.WithLabelValues(reason).Inc()
			_ = p.c.Close()
			continue
		}
		l.m.inProgress.Inc()
		hs.Go(func() { l.handshake(p.c) })
	}
}

// handshake runs one handshake and hands the connection to Accept.
func (l *Listener) handshake(c net.Conn) {
	defer func() {
		l.m.inProgress.Dec()
		<-l.sem
	}()
	start := time.Now()
	if l.wrap != nil {
		c = l.wrap(c)
	}
	tc := tls.Server(c, l.s.base)
	ctx, cancel := context.WithTimeout(l.ctx, l.lim.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	l.m.seconds.Observe(time.Since(start).Seconds())
	if err != nil {
		l.m.handshakes.WithLabelValues(resultFailed).Inc()
		_ = tc.Close()
		return
	}
	cs := tc.ConnectionState()
	l.bucket.refund(1 - HandshakeCost(cs))
	if cs.DidResume {
		l.m.handshakes.WithLabelValues(resultResumed).Inc()
	} else {
		l.m.handshakes.WithLabelValues(resultFull).Inc()
	}
	select {
	case l.ready <- tc:
	case <-l.closed:
		_ = tc.Close()
	}
}

// HandshakeCost is what a handshake costs the server's CPU, in full
// handshakes, as BenchmarkHandshake measured it (ECDSA P-256, Go's default
// key exchange; server CPU per handshake, TCP accept and close included):
// a TLS 1.3 handshake, full or resumed, ~275-300 µs, because a TLS 1.3
// resumption still does a fresh key exchange (psk_dhe_ke, the only mode Go
// serves: forward secrecy) and the key exchange, not the certificate's
// signature, is most of the cost; a TLS 1.2 full handshake ~260 µs; a TLS
// 1.2 resumption, which skips the key exchange, ~80 µs. So only a TLS 1.2
// resumption is charged less. (Resumption still spares the device its
// certificate chain verification and the chain's bytes over the air.)
func HandshakeCost(cs tls.ConnectionState) float64 {
	if cs.DidResume && cs.Version < tls.VersionTLS13 {
		return 0.3
	}
	return 1
}

// bucket is a token bucket of handshakes, in full handshakes, refilled at
// rate a second up to a tenth of a second's worth (at least one). A rate
// of 0 or less is no limit.
type bucket struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func (b *bucket) init(rate float64) {
	b.rate = rate
	b.burst = max(1, rate/10)
	b.tokens = b.burst
	b.last = time.Now()
}

func (b *bucket) setRate(rate float64) {
	b.mu.Lock()
	b.refill(time.Now())
	b.rate = rate
	b.burst = max(1, rate/10)
	b.tokens = min(b.tokens, b.burst)
	b.mu.Unlock()
}

// refill adds what the time since the last refill earned. Call with mu.
func (b *bucket) refill(now time.Time) {
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
}

// take waits until the bucket holds one full handshake and takes it; false
// when stop closed first.
func (b *bucket) take(stop <-chan struct{}) bool {
	for {
		b.mu.Lock()
		if b.rate <= 0 {
			b.mu.Unlock()
			return true
		}
		b.refill(time.Now())
		if b.tokens >= 1 {
			b.tokens--
			b.mu.Unlock()
			return true
		}
		wait := time.Duration(math.Ceil((1 - b.tokens) / b.rate * float64(time.Second)))
		b.mu.Unlock()
		t := time.NewTimer(max(wait, 100*time.Microsecond))
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return false
		}
	}
}

// refund gives back n full handshakes (a resumption cost less than its
// charge, or a handshake never started).
func (b *bucket) refund(n float64) {
	b.mu.Lock()
	if b.rate > 0 {
		b.refill(time.Now())
		b.tokens = min(b.burst, b.tokens+n)
	}
	b.mu.Unlock()
}
