package storagewriter

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
)

// Timing of the store lane.
const (
	// heartbeat is how often a link sends TypeSubscribe (which the router
	// answers with a pong).
	heartbeat = time.Second
	// routerDownAfter is how long without a pong counts a router as down.
	routerDownAfter = 3 * heartbeat
	sendTimeout     = 2 * time.Second
	dialRetry       = 250 * time.Millisecond
)

// link is the writer's connection to one router endpoint: a
// forward.Dealer (the socket; a goroutine that receives and hands batches
// to appenders; one that sends acks, busy answers and subscribe
// heartbeats, so that receiving never waits on a socket write or an fsync)
// and what the writer knows of that router.
type link struct {
	w        *Writer
	endpoint string
	log      *slog.Logger
	dl       *forward.Dealer

	stateMu     sync.Mutex
	lastPong    time.Time
	router      string
	incarnation uint64
}

func newLink(w *Writer, endpoint string) (*link, error) {
	l := &link{w: w, endpoint: endpoint, log: w.logger.With("router_endpoint", endpoint)}
	dl, err := forward.NewDealer(forward.DealerConfig{
		Endpoint:    endpoint,
		Link:        clusterlink.LinkStore,
		Security:    w.sec,
		Identity:    forward.SocketIdentity(w.cfg.Name),
		SendTimeout: sendTimeout,
		DialRetry:   dialRetry,
		Heartbeat:   heartbeat,
		// subscribe, on connect and every heartbeat
		HeartbeatMessage: func() forward.Message {
			w.updateRoutersUp()
			return forward.Message{Type: forward.TypeSubscribe, Name: w.cfg.Name, Nonce: uint64(time.Now().UnixNano())}
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

// start opens the socket and starts connecting; the router may come up at
// any time.
func (l *link) start() { l.dl.Start() }

// stop closes the socket and waits for the link's goroutines.
func (l *link) stop() { l.dl.Stop() }

// send hands a message to the send goroutine; it never blocks. A message
// zmq4 drops is resent by the router, which does not see it acked.
func (l *link) send(m forward.Message) {
	if err := l.dl.SendMessage(m); err != nil {
		l.log.Error("storage-writer: cannot encode message", "type", m.Type, "err", err)
	}
}

// up reports whether the router answered a recent heartbeat.
func (l *link) up(now time.Time) bool {
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	return !l.lastPong.IsZero() && now.Sub(l.lastPong) < routerDownAfter
}

func (l *link) receive(m forward.Message, err error) {
	if err != nil {
		reason := "malformed"
		switch {
		case errors.Is(err, forward.ErrVersion):
			reason = "version"
		case errors.Is(err, forward.ErrUnknownType):
			reason = "unknown_type"
		}
		l.w.m.badMessages.WithLabelValues(reason).Inc()
		l.log.Debug("storage-writer: bad message from router", "err", err)
		return
	}
	switch m.Type {
	case forward.TypePong:
		l.pong(m)
	case forward.TypeBatch:
		l.w.receive(l, m)
	default:
		l.w.m.badMessages.WithLabelValues("unexpected_type").Inc()
		l.log.Debug("storage-writer: unexpected message type from router", "type", m.Type)
	}
}

func (l *link) pong(m forward.Message) {
	l.stateMu.Lock()
	wasUp := !l.lastPong.IsZero() && time.Since(l.lastPong) < routerDownAfter
	changed := l.router != m.Router || l.incarnation != m.Incarnation
	l.lastPong = time.Now()
	l.router, l.incarnation = m.Router, m.Incarnation
	l.stateMu.Unlock()
	if !wasUp || changed {
		l.log.Info("storage-writer: router up", "router", m.Router, "incarnation", m.Incarnation)
	}
	l.w.updateRoutersUp()
}
