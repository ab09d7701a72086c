package clusterlink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/transport"
)

// schemes numbers the zmq4 transports registered by this process: zmq4's
// registry is global and never forgets, so each Security registers its own
// under a name of its own, and Close detaches it.
var schemes atomic.Uint64

// linkTransport is a zmq4 transport for one link of one Security: the
// network's transport (tcp, unix) with the handshakes of the link on top.
type linkTransport struct {
	name  string
	inner transport.Transport
	link  Link
	sec   atomic.Pointer[Security]
}

func (t *linkTransport) security() (*Security, error) {
	if s := t.sec.Load(); s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("clusterlink: %s: closed", t.name)
}

// Addr returns the address the network's transport makes of ep.
func (t *linkTransport) Addr(ep string) (string, error) { return t.inner.Addr(ep) }

// Dial connects and runs the client's handshake.
func (t *linkTransport) Dial(ctx context.Context, dialer transport.Dialer, addr string) (net.Conn, error) {
	s, err := t.security()
	if err != nil {
		return nil, err
	}
	raw, err := t.inner.Dial(ctx, dialer, addr)
	if err != nil {
		return nil, err // not counted: a peer that is down is refused this way
	}
	return s.clientHandshake(ctx, t.link, raw, addr)
}

// Listen binds addr; Accept returns connections whose handshake is done.
func (t *linkTransport) Listen(ctx context.Context, addr string) (net.Listener, error) {
	s, err := t.security()
	if err != nil {
		return nil, err
	}
	inner, err := t.inner.Listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	return s.newListener(t.link, inner), nil
}

var _ transport.Transport = (*linkTransport)(nil)

// Endpoint returns the endpoint to give zmq4's Dial or Listen for link in
// place of endpoint (tcp://host:port or ipc://path, as flags take them): the
// same address under a transport of this Security's, which runs the link's
// handshakes. inproc endpoints are returned as they are: they never leave
// the process. The component must have one of the link's roles.
func (s *Security) Endpoint(link Link, endpoint string) (string, error) {
	t, rest, err := s.transport(link, endpoint)
	if err != nil || t == nil {
		return endpoint, err
	}
	return t.name + "://" + rest, nil
}

// Listen binds endpoint (tcp://host:port or ipc://path) for link, as the
// link's server, for a socket written on zmq4.Open: Accept returns
// connections whose handshakes (TLS, and the first bytes of ZMTP) are done.
func (s *Security) Listen(link Link, endpoint string) (net.Listener, error) {
	t, rest, err := s.transport(link, endpoint)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, fmt.Errorf("clusterlink: %s: only tcp:// and ipc:// endpoints can be bound here", endpoint)
	}
	addr, err := t.Addr(rest)
	if err != nil {
		return nil, fmt.Errorf("clusterlink: %s: %w", endpoint, err)
	}
	return t.Listen(context.Background(), addr)
}

// Dial connects to endpoint (tcp://host:port or ipc://path) as the client
// of link and runs the TLS handshake (unless insecure), for code that
// speaks ZMTP itself on zmq4.Open.
func (s *Security) Dial(ctx context.Context, link Link, endpoint string) (net.Conn, error) {
	t, rest, err := s.transport(link, endpoint)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return nil, fmt.Errorf("clusterlink: %s: only tcp:// and ipc:// endpoints can be dialled here", endpoint)
	}
	addr, err := t.Addr(rest)
	if err != nil {
		return nil, fmt.Errorf("clusterlink: %s: %w", endpoint, err)
	}
	return t.Dial(ctx, &net.Dialer{Timeout: s.handshakeTimeout}, addr)
}

func (s *Security) transport(link Link, endpoint string) (*linkTransport, string, error) {
	if s.role != link.Server && s.role != link.Client {
		return nil, "", fmt.Errorf("clusterlink: a %s has no side on the %s link", s.role, link.Name)
	}
	scheme, rest, ok := strings.Cut(endpoint, "://")
	if !ok {
		return nil, "", fmt.Errorf("clusterlink: endpoint %q: want tcp://host:port or ipc://path", endpoint)
	}
	var network string
	switch scheme {
	case "tcp":
		network = "tcp"
	case "ipc":
		network = "unix"
	case "inproc":
		return nil, rest, nil
	default:
		return nil, "", fmt.Errorf("clusterlink: endpoint %q: unknown transport %q", endpoint, scheme)
	}
	key := link.Name + " " + scheme
	s.tmu.Lock()
	defer s.tmu.Unlock()
	if t := s.transports[key]; t != nil {
		return t, rest, nil
	}
	mode := "tls"
	if s.insecure {
		mode = "null"
	}
	t := &linkTransport{
		name:  fmt.Sprintf("%s+drover-%s-%s-%d", scheme, link.Name, mode, schemes.Add(1)),
		inner: transport.New(network),
		link:  link,
	}
	t.sec.Store(s)
	if err := zmq4.RegisterTransport(t.name, t); err != nil {
		return nil, "", fmt.Errorf("clusterlink: %w", err)
	}
	s.transports[key] = t
	return t, rest, nil
}

// clientHandshake runs TLS (unless insecure) over raw and returns the
// connection zmq4 opens ZMTP on.
func (s *Security) clientHandshake(ctx context.Context, link Link, raw net.Conn, addr string) (net.Conn, error) {
	watchdog := newWatchdog(s.handshakeTimeout, raw)
	conn := raw
	if !s.insecure {
		s.maybeReload()
		tc := tls.Client(raw, s.clientConfig(link))
		if err := tc.HandshakeContext(ctx); err != nil {
			watchdog.stop()
			_ = raw.Close()
			if ctx.Err() == nil {
				s.refuse(link, sideClient, addr, classify(err, watchdog.fired.Load()), err)
			}
			return nil, fmt.Errorf("cluster link %s: TLS handshake with %s: %w", link.Name, addr, err)
		}
		conn = tc
	}
	return s.wrap(link, sideClient, addr, conn, raw, watchdog), nil
}

func (s *Security) wrap(link Link, side, peer string, conn, raw net.Conn, watchdog *watchdog) *zmtpConn {
	z := newZMTPConn(conn, raw, watchdog, func(reason string, err error) { s.refuse(link, side, peer, reason, err) })
	z.onReady = func() { s.m.handshakes.WithLabelValues(link.Name, side).Inc() }
	z.maxMsg = s.maxMessage
	var once sync.Once
	report := func() {
		once.Do(func() {
			s.refuse(link, side, peer, "timeout", fmt.Errorf("ZMTP handshake not done within %s", s.handshakeTimeout))
		})
	}
	watchdog.report.Store(&report)
	if watchdog.fired.Load() && !z.ready.Load() {
		report() // fired while the TLS handshake was ending
	}
	return z
}

// serverHandshake runs TLS (unless insecure) over an accepted connection
// and waits for the ZMTP signature, so that zmq4, which opens connections
// one at a time, is handed only peers that did their part.
func (s *Security) serverHandshake(link Link, raw net.Conn) (net.Conn, error) {
	peer := hostOf(raw.RemoteAddr())
	watchdog := newWatchdog(s.handshakeTimeout, raw)
	conn := raw
	if !s.insecure {
		s.maybeReload()
		tc := tls.Server(raw, s.serverConfig(link))
		if err := tc.Handshake(); err != nil {
			watchdog.stop()
			_ = raw.Close()
			s.refuse(link, sideServer, peer, classify(err, watchdog.fired.Load()), err)
			return nil, err
		}
		conn = tc
	}
	z := s.wrap(link, sideServer, peer, conn, raw, watchdog)
	if err := z.peekSignature(); err != nil {
		_ = z.Close()
		var le *linkError
		if errors.As(err, &le) {
			s.refuse(link, sideServer, peer, "not_zmtp", err)
		} else if !watchdog.fired.Load() { // a timeout is reported by the watchdog
			s.refuse(link, sideServer, peer, classify(err, false), err)
		}
		return nil, err
	}
	return z, nil
}

// listener accepts connections and runs their handshakes concurrently (at
// most maxHandshakes at once), so that a peer that stalls its handshake
// holds up nobody; Accept returns those that completed.
type listener struct {
	net.Listener
	s     *Security
	link  Link
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	sem   chan struct{}
	wg    sync.WaitGroup

	mu      sync.Mutex
	pending map[net.Conn]struct{} // raw connections in their handshake
}

func (s *Security) newListener(link Link, inner net.Listener) *listener {
	l := &listener{
		Listener: inner, s: s, link: link,
		conns: make(chan net.Conn), done: make(chan struct{}),
		sem: make(chan struct{}, maxHandshakes), pending: map[net.Conn]struct{}{},
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *listener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, most likely: wait and go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if l.s.refusals.allow("accept " + l.link.Name) {
				l.s.log.Error("cluster link: accept failed; retrying", "link", l.link.Name, "err", err)
			}
			select {
			case <-time.After(backoff):
			case <-l.done:
				return
			}
			continue
		}
		backoff = 0
		select {
		case l.sem <- struct{}{}:
		default:
			_ = raw.Close()
			l.s.refuse(l.link, sideServer, hostOf(raw.RemoteAddr()), "too_many", errors.New("too many handshakes under way"))
			continue
		}
		l.mu.Lock()
		select {
		case <-l.done:
			l.mu.Unlock()
			_ = raw.Close()
			<-l.sem
			return
		default:
		}
		l.pending[raw] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.handshake(raw)
	}
}

func (l *listener) handshake(raw net.Conn) {
	defer l.wg.Done()
	defer func() { <-l.sem }()
	conn, err := l.s.serverHandshake(l.link, raw)
	l.mu.Lock()
	delete(l.pending, raw)
	l.mu.Unlock()
	if err != nil {
		return
	}
	select {
	case l.conns <- conn:
	case <-l.done:
		_ = conn.Close()
	}
}

// Accept returns the next connection whose handshake is done.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting, drops the connections still in their handshake,
// and waits for the goroutines of the listener.
func (l *listener) Close() error {
	var err error
	l.once.Do(func() {
		l.mu.Lock()
		close(l.done)
		for c := range l.pending {
			_ = c.Close()
		}
		l.mu.Unlock()
		err = l.Listener.Close()
		l.wg.Wait()
	})
	return err
}
