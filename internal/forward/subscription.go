package forward

import (
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
)

// Timing of a durable subscriber's links to the routers' store lanes.
const (
	// SubscribeHeartbeat is how often a link sends TypeSubscribe, which
	// the router answers with a pong.
	SubscribeHeartbeat = time.Second
	// routerDownAfter is how long without a pong counts a router as down.
	routerDownAfter = 3 * SubscribeHeartbeat
	subSendTimeout  = 2 * time.Second
	subDialRetry    = 250 * time.Millisecond
)

// Subscription is a durable subscriber's side of the routers' store lanes
// (a storage writer's, the alerts engine's): one link per router endpoint,
// each a Dealer that subscribes under SubscriptionConfig.Name on connect
// and every heartbeat, tracks whether its router answers (the routers-up
// count), and hands each batch to SubscriptionConfig.Receive with the
// link's send for its answers. SetRouters follows the endpoint list as
// internal/endpoints resolves it.
//
// A router removed from the list is only one that no longer exists (the
// subscribers' Service lists every router pod, ready or not): what it had
// not delivered waits on its volume, and is sent when it is listed again.
// A batch being appended from a removed link is still appended, and its
// ack lost with the link: the router resends it, a duplicate the receiver
// drops by (router, sequence).
type Subscription struct {
	cfg   SubscriptionConfig
	mu    sync.Mutex
	links []*subLink
	stops sync.WaitGroup // links let go of, stopping
}

// SubscriptionConfig is what a Subscription needs of its subscriber.
type SubscriptionConfig struct {
	// Name is the durable subscriber's name: it subscribes under it, and
	// its sockets' identity derives from it.
	Name string
	// Component prefixes the log messages ("storage-writer", "alerts").
	Component string
	// Security secures the store links (clusterlink.LinkStore).
	Security *clusterlink.Security
	Logger   *slog.Logger
	// Receive takes a batch from a router; send answers it. It must not
	// block (a Receiver's Receive).
	Receive func(send func(Message), m Message)
	// Bad counts a message dropped, by reason: malformed, version,
	// unknown_type, unexpected_type. May be nil.
	Bad func(reason string)
	// RoutersUp is told how many routers answered their last heartbeats,
	// whenever that may have changed. May be nil.
	RoutersUp func(n int)
}

// subLink is a Subscription's connection to one router endpoint: a Dealer
// (a goroutine that receives and hands batches on; one that sends
// answers and subscribe heartbeats, so that receiving never waits on a
// socket write) and what is known of that router.
type subLink struct {
	s        *Subscription
	endpoint string
	log      *slog.Logger
	dl       *Dealer

	mu          sync.Mutex
	lastPong    time.Time
	router      string
	incarnation uint64
}

// NewSubscription returns a subscription to no router yet (SetRouters).
func NewSubscription(cfg SubscriptionConfig) *Subscription {
	return &Subscription{cfg: cfg}
}

// SetRouters makes the links those of eps: it subscribes to each new
// router and lets go of those no longer listed. Called at start and by the
// endpoint watcher, never after Stop.
func (s *Subscription) SetRouters(eps []string) {
	defer s.updateUp() // a router let go of is no longer up
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := s.links[:0:0]
	for _, l := range s.links {
		if slices.Contains(eps, l.endpoint) {
			keep = append(keep, l)
			continue
		}
		l.log.Info(s.cfg.Component + ": router removed from the endpoint list; unsubscribing")
		s.stops.Go(l.dl.Stop)
	}
	for _, ep := range eps {
		if slices.ContainsFunc(keep, func(l *subLink) bool { return l.endpoint == ep }) {
			continue
		}
		l, err := s.newLink(ep)
		if err != nil {
			// Static endpoints were checked by the subscriber's New; an
			// address from DNS that the link cannot use is skipped.
			s.cfg.Logger.Error(s.cfg.Component+": cannot use router endpoint", "endpoint", ep, "err", err)
			continue
		}
		keep = append(keep, l)
		l.dl.Start()
		l.log.Info(s.cfg.Component + ": subscribing to router")
	}
	s.links = keep
}

// Stop closes every link and waits for their goroutines, those let go of
// before included. Batches received before are still being appended:
// wait for the receiver after.
func (s *Subscription) Stop() {
	s.mu.Lock()
	links := s.links
	s.links = nil
	s.mu.Unlock()
	for _, l := range links {
		s.stops.Go(l.dl.Stop)
	}
	s.stops.Wait()
}

// Senders returns, for each link, the function that sends to its router.
func (s *Subscription) Senders() []func(Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]func(Message), len(s.links))
	for i, l := range s.links {
		out[i] = l.send
	}
	return out
}

// updateUp tells RoutersUp how many routers answered a recent heartbeat.
func (s *Subscription) updateUp() {
	if s.cfg.RoutersUp == nil {
		return
	}
	now := time.Now()
	n := 0
	s.mu.Lock()
	for _, l := range s.links {
		if l.up(now) {
			n++
		}
	}
	s.mu.Unlock()
	s.cfg.RoutersUp(n)
}

func (s *Subscription) newLink(endpoint string) (*subLink, error) {
	l := &subLink{s: s, endpoint: endpoint, log: s.cfg.Logger.With("router_endpoint", endpoint)}
	dl, err := NewDealer(DealerConfig{
		Endpoint:    endpoint,
		Link:        clusterlink.LinkStore,
		Security:    s.cfg.Security,
		Identity:    SocketIdentity(s.cfg.Name),
		SendTimeout: subSendTimeout,
		DialRetry:   subDialRetry,
		Heartbeat:   SubscribeHeartbeat,
		// subscribe, on connect and every heartbeat
		HeartbeatMessage: func() Message {
			s.updateUp()
			return Message{Type: TypeSubscribe, Name: s.cfg.Name, Nonce: uint64(time.Now().UnixNano())}
		},
		Receive: l.receive,
		Logger:  l.log,
	})
	if err != nil {
		return nil, err
	}
	l.dl = dl
	return l, nil
}

// send hands a message to the send goroutine; it never blocks. A message
// zmq4 drops is resent by the router, which does not see it acked.
func (l *subLink) send(m Message) {
	if err := l.dl.SendMessage(m); err != nil {
		l.log.Error(l.s.cfg.Component+": cannot encode message", "type", m.Type, "err", err)
	}
}

// up reports whether the router answered a recent heartbeat.
func (l *subLink) up(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.lastPong.IsZero() && now.Sub(l.lastPong) < routerDownAfter
}

func (l *subLink) receive(m Message, err error) {
	if err != nil {
		reason := "malformed"
		switch {
		case errors.Is(err, ErrVersion):
			reason = "version"
		case errors.Is(err, ErrUnknownType):
			reason = "unknown_type"
		}
		l.bad(reason)
		l.log.Debug(l.s.cfg.Component+": bad message from router", "err", err)
		return
	}
	switch m.Type {
	case TypePong:
		l.pong(m)
	case TypeBatch:
		l.s.cfg.Receive(l.send, m)
	default:
		l.bad("unexpected_type")
		l.log.Debug(l.s.cfg.Component+": unexpected message type from router", "type", m.Type)
	}
}

func (l *subLink) bad(reason string) {
	if l.s.cfg.Bad != nil {
		l.s.cfg.Bad(reason)
	}
}

// pong records a router's answer, and says when the router came up or
// was replaced (another router behind the endpoint, or a restart).
func (l *subLink) pong(m Message) {
	l.mu.Lock()
	wasUp := !l.lastPong.IsZero() && time.Since(l.lastPong) < routerDownAfter
	changed := l.router != m.Router || l.incarnation != m.Incarnation
	l.lastPong = time.Now()
	l.router, l.incarnation = m.Router, m.Incarnation
	l.mu.Unlock()
	if !wasUp || changed {
		l.log.Info(l.s.cfg.Component+": router up", "router", m.Router, "incarnation", m.Incarnation)
	}
	l.s.updateUp()
}
