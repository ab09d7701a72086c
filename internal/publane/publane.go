// Package publane is drover's bounded publisher: a ZeroMQ PUB as its
// subscribers see it (zmq4 or libzmq SUB sockets, topic-filtered), written
// on zmq4.Open because zmq4's own PUB queues without bound and writes to its
// subscribers one after another, so one stalled subscriber holds every
// other to its pace and grows the publisher's heap without limit
// (measured: docs/design.md, "The live lane").
//
// Each subscriber connection has its own bounded buffer (at most
// Config.Buffer messages and Config.BufferBytes bytes, plus the one being
// written) and its own writer goroutine: Offer appends a message to the
// buffer of every subscriber whose subscriptions match the topic (prefix
// match, counted subscribe/unsubscribe, as a PUB does) and never blocks. A
// subscriber whose buffer is full loses its oldest message (the newest
// matter most to a live view), counted, and falls behind alone. One that
// takes nothing for Config.Stall is disconnected. Memory is therefore
// bounded by subscribers × (BufferBytes + two messages). The ZMTP handshake
// (and, with a cluster key, TLS) is done per connection.
//
// The router's live lane (router/live.go) and the alert engine's alert
// lane (alerts/) are each one Publisher.
package publane

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

// Config is a publisher's shape.
type Config struct {
	// Topic is the first frame of every message; subscriptions are matched
	// against it.
	Topic string
	// Buffer and BufferBytes bound what waits for one subscriber.
	Buffer      int
	BufferBytes int64
	// Stall: a subscriber that takes nothing for this long is disconnected.
	Stall time.Duration
	// CloseGrace bounds how long Close spends sending what buffers hold.
	CloseGrace time.Duration
	// MaxSubscribers bounds the subscribers served at once, MaxLabels the
	// subscriber label values of the metrics (past it: "other").
	MaxSubscribers, MaxLabels int
	// Name starts log messages ("router: live").
	Name string
}

// Metrics are the publisher's metrics, made and registered by its owner
// (names are the owner's: drover_router_live_*, drover_alerts_lane_*).
type Metrics struct {
	Published   prometheus.Counter     // messages offered
	Dropped     prometheus.Counter     // messages dropped for a subscriber, summed
	Sent        *prometheus.CounterVec // by subscriber
	SubDropped  *prometheus.CounterVec // by subscriber
	Subscribers prometheus.Gauge
	Disconnects *prometheus.CounterVec // by reason
}

// Publisher is one bound publisher endpoint.
type Publisher struct {
	ln    net.Listener
	id    zmq4.SocketIdentity
	m     Metrics
	log   *slog.Logger
	cfg   Config
	topic []byte

	mu      sync.Mutex
	stall   time.Duration
	subs    map[*subscriber]struct{}
	pending map[net.Conn]struct{} // connections in their ZMTP handshake
	labels  map[string]int        // subscribers per label
	closed  bool
	wg      sync.WaitGroup
}

// Open binds a publisher at endpoint over link through sec (its server
// side), and returns it with the address it is bound to. A nil logger
// discards.
func Open(sec *clusterlink.Security, link clusterlink.Link, endpoint, id string, cfg Config, m Metrics, logger *slog.Logger) (*Publisher, string, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, err := sec.Listen(link, endpoint)
	if err != nil {
		return nil, "", fmt.Errorf("%s: listen on %s: %w", cfg.Name, endpoint, err)
	}
	addr := endpoint
	if strings.HasPrefix(addr, "tcp://") {
		addr = "tcp://" + ln.Addr().String()
	}
	p := &Publisher{
		ln: ln, id: zmq4.SocketIdentity(id), m: m, log: logger, cfg: cfg, topic: []byte(cfg.Topic), stall: cfg.Stall,
		subs: map[*subscriber]struct{}{}, pending: map[net.Conn]struct{}{}, labels: map[string]int{},
	}
	p.wg.Add(1)
	go p.acceptLoop()
	return p, addr, nil
}

// SetStall changes the stall timeout of subscribers that connect from now
// on (tests).
func (p *Publisher) SetStall(d time.Duration) {
	p.mu.Lock()
	p.stall = d
	p.mu.Unlock()
}

// Subscribers returns the subscribers connected, and how many of them have
// a subscription that matches the topic.
func (p *Publisher) Subscribers() (connected, matching int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := range p.subs {
		s.mu.Lock()
		if s.match {
			matching++
		}
		s.mu.Unlock()
	}
	return len(p.subs), matching
}

func (p *Publisher) acceptLoop() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			// The cluster-link listener fails only once closed.
			return
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			return
		}
		if len(p.subs)+len(p.pending) >= p.cfg.MaxSubscribers {
			p.mu.Unlock()
			_ = c.Close()
			p.m.Disconnects.WithLabelValues("too_many").Inc()
			p.log.Warn(p.cfg.Name+" subscriber refused: too many", "max", p.cfg.MaxSubscribers, "peer", c.RemoteAddr().String())
			continue
		}
		p.pending[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(c)
	}
}

// serve opens ZMTP on c as a PUB and runs the subscriber until it goes
// away or the publisher closes.
func (p *Publisher) serve(c net.Conn) {
	defer p.wg.Done()
	zc, err := zmq4.Open(c, null.Security(), zmq4.Pub, p.id, true, nil)
	p.mu.Lock()
	delete(p.pending, c)
	if err != nil || p.closed {
		p.mu.Unlock()
		_ = c.Close()
		if err != nil {
			p.log.Debug(p.cfg.Name+" subscriber handshake failed", "peer", c.RemoteAddr().String(), "err", err)
		}
		return
	}
	s := &subscriber{
		p: p, conn: zc, nc: c, label: p.labelLocked(zc, c), stall: p.stall,
		topics: map[string]int{}, ring: make([][]byte, p.cfg.Buffer), kick: make(chan struct{}, 1), closing: make(chan struct{}),
	}
	s.sent = p.m.Sent.WithLabelValues(s.label)
	s.dropped = p.m.SubDropped.WithLabelValues(s.label)
	p.subs[s] = struct{}{}
	p.m.Subscribers.Set(float64(len(p.subs)))
	p.mu.Unlock()
	p.log.Info(p.cfg.Name+" subscriber connected", "subscriber", s.label, "peer", c.RemoteAddr().String())

	readDone := make(chan struct{})
	go func() { defer close(readDone); s.readLoop() }()
	reason := s.writeLoop(readDone)
	_ = c.Close()
	<-readDone

	p.mu.Lock()
	delete(p.subs, s)
	p.labels[s.label]--
	p.m.Subscribers.Set(float64(len(p.subs)))
	p.mu.Unlock()
	s.mu.Lock()
	lost := s.n
	s.n, s.bytes = 0, 0
	clear(s.ring)
	s.mu.Unlock()
	if lost > 0 {
		s.dropped.Add(float64(lost))
		p.m.Dropped.Add(float64(lost))
	}
	p.m.Disconnects.WithLabelValues(reason).Inc()
	switch reason {
	case "stalled":
		p.log.Warn(p.cfg.Name+" subscriber disconnected: it took nothing for too long", "subscriber", s.label, "stall_timeout", s.stall, "lost", lost)
	default:
		p.log.Info(p.cfg.Name+" subscriber disconnected", "subscriber", s.label, "reason", reason, "lost", lost)
	}
}

// labelLocked names a subscriber in metrics: its ZeroMQ identity, else
// its host.
func (p *Publisher) labelLocked(zc *zmq4.Conn, c net.Conn) string {
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
	if _, known := p.labels[label]; !known && len(p.labels) >= p.cfg.MaxLabels {
		label = "other"
	}
	p.labels[label]++
	return label
}

// Offer gives one message (the frame after the topic) to every subscriber.
// It never blocks.
func (p *Publisher) Offer(msg []byte) {
	p.m.Published.Inc()
	p.mu.Lock()
	defer p.mu.Unlock()
	for s := range p.subs {
		s.offer(msg)
	}
}

// Close stops the publisher: no new subscriber, what the buffers hold is
// sent for up to CloseGrace, then every connection is closed. Call it
// once, after the last Offer.
func (p *Publisher) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	p.closed = true
	for c := range p.pending {
		_ = c.Close()
	}
	deadline := time.Now().Add(p.cfg.CloseGrace)
	for s := range p.subs {
		s.mu.Lock()
		s.stopAt = deadline
		_ = s.nc.SetWriteDeadline(deadline)
		s.mu.Unlock()
		close(s.closing)
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// subscriber is one subscriber connection.
type subscriber struct {
	p       *Publisher
	conn    *zmq4.Conn
	nc      net.Conn
	label   string
	stall   time.Duration
	kick    chan struct{}
	closing chan struct{}

	mu       sync.Mutex
	topics   map[string]int // subscriptions, counted as libzmq does
	match    bool           // a subscription is a prefix of the topic
	ring     [][]byte       // queued messages: ring[head], ... (n of them)
	head, n  int
	bytes    int64
	dropping bool      // dropping since the buffer last emptied
	episode  int       // messages dropped in this episode
	stopAt   time.Time // set when the publisher closes: the last write deadline

	sent, dropped prometheus.Counter
}

// offer queues msg, or drops the oldest queued message to make room.
// Called with p.mu held.
func (s *subscriber) offer(msg []byte) {
	s.mu.Lock()
	if !s.match {
		s.mu.Unlock()
		return
	}
	dropped := 0
	// Room by count and by bytes; a message larger than the whole byte
	// budget still goes when nothing else is queued.
	for s.n > 0 && (s.n >= len(s.ring) || s.bytes+int64(len(msg)) > s.p.cfg.BufferBytes) {
		old := s.ring[s.head]
		s.ring[s.head] = nil
		s.head = (s.head + 1) % len(s.ring)
		s.n--
		s.bytes -= int64(len(old))
		dropped++
	}
	s.ring[(s.head+s.n)%len(s.ring)] = msg
	s.n++
	s.bytes += int64(len(msg))
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
			s.p.m.Dropped.Inc()
		}
		if first {
			s.p.log.Warn(s.p.cfg.Name+" subscriber falling behind; dropping its oldest messages (it alone loses them)",
				"subscriber", s.label, "buffer", len(s.ring), "buffer_bytes", s.p.cfg.BufferBytes)
		}
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// pop takes the oldest queued message.
func (s *subscriber) pop() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 {
		if s.dropping {
			s.dropping = false
			s.p.log.Info(s.p.cfg.Name+" subscriber caught up", "subscriber", s.label, "dropped", s.episode)
			s.episode = 0
		}
		return nil
	}
	msg := s.ring[s.head]
	s.ring[s.head] = nil
	s.head = (s.head + 1) % len(s.ring)
	s.n--
	s.bytes -= int64(len(msg))
	return msg
}

// writeLoop writes what is queued until the connection fails (or its
// reader ends: gone) or the publisher closes and the buffer is empty; it
// returns why it stopped.
func (s *subscriber) writeLoop(gone <-chan struct{}) string {
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
			msg := s.pop()
			if msg == nil {
				break
			}
			s.mu.Lock()
			if s.stopAt.IsZero() { // else Close set the deadline
				_ = s.nc.SetWriteDeadline(time.Now().Add(s.stall))
			}
			s.mu.Unlock()
			if err := s.conn.SendMsg(zmq4.NewMsgFrom(s.p.topic, msg)); err != nil {
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
func (s *subscriber) readLoop() {
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
			if strings.HasPrefix(s.p.cfg.Topic, t) {
				s.match = true
				break
			}
		}
		s.mu.Unlock()
	}
}
