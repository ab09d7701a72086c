package storagewriter

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

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

// link is the writer's connection to one router endpoint: one DEALER (a
// zmq4 DEALER copies each message to all its connections, so it must have
// exactly one), a goroutine that receives and hands batches to appenders,
// and one that sends (acks, busy answers and subscribe heartbeats), so that
// the receive loop never waits on a socket write or an fsync.
type link struct {
	w        *Writer
	endpoint string
	log      *slog.Logger

	ctx    context.Context
	cancel context.CancelFunc
	sock   zmq4.Socket
	wg     sync.WaitGroup

	outMu   sync.Mutex
	out     [][][]byte
	outKick chan struct{}

	stateMu     sync.Mutex
	lastPong    time.Time
	router      string
	incarnation uint64
}

func newLink(w *Writer, endpoint string) *link {
	return &link{
		w:        w,
		endpoint: endpoint,
		log:      w.logger.With("router_endpoint", endpoint),
		outKick:  make(chan struct{}, 1),
	}
}

// socketIdentity is the subscriber name and a random suffix, so that a
// router never routes to a connection of a previous incarnation.
func socketIdentity(name string) string {
	var b [4]byte
	_, _ = crand.Read(b[:])
	return name + "." + hex.EncodeToString(b[:])
}

// start opens the socket and starts connecting; the router may come up at
// any time.
func (l *link) start() {
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.sock = forward.NewDealer(l.ctx, socketIdentity(l.w.cfg.Name), sendTimeout, dialRetry, l.log)
	l.wg.Add(3)
	go l.dial()
	go l.sendLoop()
	go l.recvLoop()
}

// stop closes the socket and waits for the link's goroutines.
func (l *link) stop() {
	l.cancel()
	l.wg.Wait()
	if err := l.sock.Close(); err != nil {
		l.log.Debug("storage-writer: close dealer", "err", err)
	}
}

// dial connects once; zmq4 then reconnects by itself.
func (l *link) dial() {
	defer l.wg.Done()
	forward.Dial(l.ctx, l.sock, l.endpoint, dialRetry, l.log)
}

// send hands a message to the send goroutine; it never blocks.
func (l *link) send(m forward.Message) {
	frames, err := m.Frames()
	if err != nil {
		l.log.Error("storage-writer: cannot encode message", "type", m.Type, "err", err)
		return
	}
	l.outMu.Lock()
	l.out = append(l.out, frames)
	l.outMu.Unlock()
	select {
	case l.outKick <- struct{}{}:
	default:
	}
}

func (l *link) take() [][][]byte {
	l.outMu.Lock()
	defer l.outMu.Unlock()
	out := l.out
	l.out = nil
	return out
}

func (l *link) sendLoop() {
	defer l.wg.Done()
	t := time.NewTicker(heartbeat)
	defer t.Stop()
	l.subscribe()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
			l.subscribe()
		case <-l.outKick:
			for _, frames := range l.take() {
				// Send returns nil when zmq4 drops a message: the router
				// resends what it does not see acked.
				if err := l.sock.SendMulti(zmq4.NewMsgFrom(frames...)); err != nil {
					if l.ctx.Err() != nil {
						return
					}
					l.log.Debug("storage-writer: answer not sent", "err", err)
				}
			}
		}
	}
}

// subscribe sends TypeSubscribe: on connect and every heartbeat.
func (l *link) subscribe() {
	frames, err := forward.Message{Type: forward.TypeSubscribe, Name: l.w.cfg.Name, Nonce: uint64(time.Now().UnixNano())}.Frames()
	if err != nil {
		l.log.Error("storage-writer: cannot encode subscribe", "err", err)
		return
	}
	if err := l.sock.SendMulti(zmq4.NewMsgFrom(frames...)); err != nil && l.ctx.Err() == nil {
		l.log.Debug("storage-writer: heartbeat not sent", "err", err)
	}
	l.w.updateRoutersUp()
}

// up reports whether the router answered a recent heartbeat.
func (l *link) up(now time.Time) bool {
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	return !l.lastPong.IsZero() && now.Sub(l.lastPong) < routerDownAfter
}

func (l *link) recvLoop() {
	defer l.wg.Done()
	for {
		msg, err := l.sock.Recv()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			l.log.Debug("storage-writer: connection to router lost", "err", err)
			continue
		}
		m, err := forward.Decode(msg.Frames)
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
			continue
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
