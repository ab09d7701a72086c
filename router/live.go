package router

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/go-zeromq/zmq4/security/null"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/clusterlink"
)

// LiveTopic is the first frame of every message of the live lane: exactly
// these five bytes. The second frame is a serialized telemetry.PublishBatch.
const LiveTopic = "live."

const (
	// liveStallTimeout: a live subscriber that has not taken one message
	// within it is disconnected (it reconnects and starts again from what
	// is new). It frees its buffer and goroutines for good.
	liveStallTimeout = 10 * time.Second
	// liveCloseGrace bounds how long a stopping router spends sending live
	// subscribers what their buffers hold.
	liveCloseGrace = time.Second
	// maxLiveSubscribers bounds the live subscribers served at once: each
	// holds up to a buffer of batches.
	maxLiveSubscribers = 256
	// maxLiveLabels bounds the subscriber label values of the live
	// metrics; past it, new subscribers are counted under "other".
	maxLiveLabels = 256
)

// live is the best-effort live lane: a ZeroMQ publisher of our own, written
// on zmq4.Open, because zmq4's PUB queues without bound and writes to its
// subscribers one after another, so one stalled subscriber held every
// other to its pace and grew the router's heap without limit.
//
// Each subscriber connection has its own bounded buffer (at most
// -live-buffer batches and -live-buffer-bytes bytes, plus the batch being
// written) and its own writer goroutine: offering a batch appends it to the
// buffer of every subscriber whose subscriptions match LiveTopic (prefix
// match, as a PUB does) and never blocks. A subscriber whose buffer is full
// loses its oldest batch (the newest matter most on a live map), counted
// per subscriber and in drover_router_live_dropped_total, and falls behind
// alone. One that takes nothing for liveStallTimeout is disconnected.
// Memory is therefore bounded by subscribers × (-live-buffer-bytes + two
// batches). The ZMTP handshake (and, with a cluster key, TLS) is done per
// connection, so zmq4 SUBs (livefeed) and libzmq SUBs (pyzmq, insecure
// links) subscribe as to any PUB.
type live struct {
	ln          net.Listener
	id          zmq4.SocketIdentity
	m           *metrics
	log         *slog.Logger
	buffer      int
	bufferBytes int64
	stall       time.Duration
	topic       []byte

	mu      sync.Mutex
	subs    map[*liveSubscriber]struct{}
	pending map[net.Conn]struct{} // connections in their ZMTP handshake
	labels  map[string]int        // subscribers per label
	closed  bool
	wg      sync.WaitGroup
}

// openLive binds the live lane at endpoint through sec and returns it with
// the address it is bound to.
func openLive(sec *clusterlink.Security, endpoint, id string, buffer int, bufferBytes int64, m *metrics, logger *slog.Logger) (*live, string, error) {
	ln, err := sec.Listen(clusterlink.LinkLive, endpoint)
	if err != nil {
		return nil, "", fmt.Errorf("router: live lane: listen on %s: %w", endpoint, err)
	}
	addr := endpoint
	if strings.HasPrefix(addr, "tcp://") {
		addr = "tcp://" + ln.Addr().String()
	}
	l := &live{
		ln: ln, id: zmq4.SocketIdentity(id), m: m, log: logger,
		buffer: buffer, bufferBytes: bufferBytes, stall: liveStallTimeout, topic: []byte(LiveTopic),
		subs: map[*liveSubscriber]struct{}{}, pending: map[net.Conn]struct{}{}, labels: map[string]int{},
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, addr, nil
}

func (l *live) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			// The cluster-link listener fails only once closed.
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = c.Close()
			return
		}
		if len(l.subs)+len(l.pending) >= maxLiveSubscribers {
			l.mu.Unlock()
			_ = c.Close()
			l.m.liveDisconnects.WithLabelValues("too_many").Inc()
			l.log.Warn("router: live subscriber refused: too many", "max", maxLiveSubscribers, "peer", c.RemoteAddr().String())
			continue
		}
		l.pending[c] = struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go l.serve(c)
	}
}

// serve opens ZMTP on c as a PUB and runs the subscriber until it goes
// away or the lane closes.
func (l *live) serve(c net.Conn) {
	defer l.wg.Done()
	zc, err := zmq4.Open(c, null.Security(), zmq4.Pub, l.id, true, nil)
	l.mu.Lock()
	delete(l.pending, c)
	if err != nil || l.closed {
		l.mu.Unlock()
		_ = c.Close()
		if err != nil {
			l.log.Debug("router: live subscriber handshake failed", "peer", c.RemoteAddr().String(), "err", err)
		}
		return
	}
	s := &liveSubscriber{
		l: l, conn: zc, nc: c, label: l.labelLocked(zc, c),
		topics: map[string]int{}, ring: make([][]byte, l.buffer), kick: make(chan struct{}, 1), closing: make(chan struct{}),
	}
	s.sent = l.m.liveSent.WithLabelValues(s.label)
	s.dropped = l.m.liveSubDropped.WithLabelValues(s.label)
	l.subs[s] = struct{}{}
	l.m.liveSubscribers.Set(float64(len(l.subs)))
	l.mu.Unlock()
	l.log.Info("router: live subscriber connected", "subscriber", s.label, "peer", c.RemoteAddr().String())

	readDone := make(chan struct{})
	go func() { defer close(readDone); s.readLoop() }()
	reason := s.writeLoop(readDone)
	_ = c.Close()
	<-readDone

	l.mu.Lock()
	delete(l.subs, s)
	l.labels[s.label]--
	l.m.liveSubscribers.Set(float64(len(l.subs)))
	l.mu.Unlock()
	s.mu.Lock()
	lost := s.n
	s.n, s.bytes = 0, 0
	clear(s.ring)
	s.mu.Unlock()
	if lost > 0 {
		s.dropped.Add(float64(lost))
		l.m.liveDropped.Add(float64(lost))
	}
	l.m.liveDisconnects.WithLabelValues(reason).Inc()
	switch reason {
	case "stalled":
		l.log.Warn("router: live subscriber disconnected: it took nothing for too long", "subscriber", s.label, "stall_timeout", l.stall, "batches_lost", lost)
	default:
		l.log.Info("router: live subscriber disconnected", "subscriber", s.label, "reason", reason, "batches_lost", lost)
	}
}

// labelLocked names a subscriber in metrics: its ZeroMQ identity (a
// livefeed's is its ID and router index), else its host.
func (l *live) labelLocked(zc *zmq4.Conn, c net.Conn) string {
	label := zc.Peer.Meta["Identity"]
	if label == "" {
		label = c.RemoteAddr().String()
		if h, _, err := net.SplitHostPort(label); err == nil {
			label = h
		}
	}
	if len(label) > 64 {
		label = label[:64]
	}
	if _, known := l.labels[label]; !known && len(l.labels) >= maxLiveLabels {
		label = "other"
	}
	l.labels[label]++
	return label
}

// offer gives one serialized PublishBatch to every subscriber. It never
// blocks.
func (l *live) offer(pb []byte) {
	l.m.livePublished.Inc()
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.subs {
		s.offer(pb)
	}
}

// close stops the lane: no new subscriber, what the buffers hold is sent
// for up to liveCloseGrace, then every connection is closed. Call it once,
// after the last offer.
func (l *live) close() {
	_ = l.ln.Close()
	l.mu.Lock()
	l.closed = true
	for c := range l.pending {
		_ = c.Close()
	}
	deadline := time.Now().Add(liveCloseGrace)
	for s := range l.subs {
		s.mu.Lock()
		s.stopAt = deadline
		_ = s.nc.SetWriteDeadline(deadline)
		s.mu.Unlock()
		close(s.closing)
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// liveSubscriber is one subscriber connection of the live lane.
type liveSubscriber struct {
	l       *live
	conn    *zmq4.Conn
	nc      net.Conn
	label   string
	kick    chan struct{}
	closing chan struct{}

	mu       sync.Mutex
	topics   map[string]int // subscriptions, counted as libzmq does
	match    bool           // a subscription is a prefix of LiveTopic
	ring     [][]byte       // queued batches: ring[head], ... (n of them)
	head, n  int
	bytes    int64
	dropping bool      // dropping since the buffer last emptied
	episode  int       // batches dropped in this episode
	stopAt   time.Time // set when the lane closes: the last write deadline

	sent, dropped prometheus.Counter
}

// offer queues pb, or drops the oldest queued batch to make room. Called
// with l.mu held.
func (s *liveSubscriber) offer(pb []byte) {
	s.mu.Lock()
	if !s.match {
		s.mu.Unlock()
		return
	}
	dropped := 0
	// Room by count and by bytes; a batch larger than the whole byte
	// budget still goes when nothing else is queued.
	for s.n > 0 && (s.n >= len(s.ring) || s.bytes+int64(len(pb)) > s.l.bufferBytes) {
		old := s.ring[s.head]
		s.ring[s.head] = nil
		s.head = (s.head + 1) % len(s.ring)
		s.n--
		s.bytes -= int64(len(old))
		dropped++
	}
	s.ring[(s.head+s.n)%len(s.ring)] = pb
	s.n++
	s.bytes += int64(len(pb))
	first := false
	if dropped > 0 {
		first = !s.dropping
		s.dropping = true
		s.episode += dropped
	}
	s.mu.Unlock()
	if dropped > 0 {
		for range dropped {
			s.dropped.Inc()
			s.l.m.liveDropped.Inc()
		}
		if first {
			s.l.log.Warn("router: live subscriber falling behind; dropping its oldest batches (it alone loses them)",
				"subscriber", s.label, "buffer", len(s.ring), "buffer_bytes", s.l.bufferBytes)
		}
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// pop takes the oldest queued batch.
func (s *liveSubscriber) pop() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		if s.dropping {
			s.dropping = false
			s.l.log.Info("router: live subscriber caught up", "subscriber", s.label, "batches_dropped", s.episode)
			s.episode = 0
		}
		return nil
	}
	pb := s.ring[s.head]
	s.ring[s.head] = nil
	s.head = (s.head + 1) % len(s.ring)
	s.n--
	s.bytes -= int64(len(pb))
	return pb
}

// writeLoop writes what is queued until the connection fails (or its
// reader ends: gone) or the lane closes and the buffer is empty; it returns
// why it stopped.
func (s *liveSubscriber) writeLoop(gone <-chan struct{}) string {
	for {
		closing := false
		select {
		case <-s.kick:
		case <-s.closing:
			closing = true
		case <-gone:
			return "closed"
		}
		for {
			pb := s.pop()
			if pb == nil {
				break
			}
			s.mu.Lock()
			if s.stopAt.IsZero() { // else close set the deadline
				_ = s.nc.SetWriteDeadline(time.Now().Add(s.l.stall))
			}
			s.mu.Unlock()
			if err := s.conn.SendMsg(zmq4.NewMsgFrom(s.l.topic, pb)); err != nil {
				var ne net.Error
				switch {
				case closing:
					return "stopping"
				case errors.As(err, &ne) && ne.Timeout():
					return "stalled"
				}
				return "closed"
			}
			s.sent.Inc()
		}
		if closing {
			return "stopping"
		}
		select {
		case <-s.closing:
			return "stopping"
		default:
		}
	}
}

// readLoop applies the subscriber's (un)subscriptions until its connection
// ends; anything else it sends is ignored, as a PUB does.
func (s *liveSubscriber) readLoop() {
	for {
		msg, err := s.conn.RecvMsg()
		if err != nil {
			_ = s.nc.Close() // ends the writer too
			return
		}
		if msg.Type == zmq4.CmdMsg || len(msg.Frames) != 1 || len(msg.Frames[0]) == 0 {
			continue
		}
		f := msg.Frames[0]
		topic := string(f[1:])
		s.mu.Lock()
		switch f[0] {
		case 1:
			s.topics[topic]++
		case 0:
			if s.topics[topic]--; s.topics[topic] <= 0 {
				delete(s.topics, topic)
			}
		}
		s.match = false
		for t := range s.topics {
			if strings.HasPrefix(LiveTopic, t) {
				s.match = true
				break
			}
		}
		s.mu.Unlock()
	}
}
