package forward

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/drover-telemetry/drover/internal/backoff"
)

// link is the drainer's connection to one router: one DEALER socket (a
// zmq4 DEALER copies each message to all its connections, so it must have
// exactly one), a goroutine that sends (batches queued by the loop, and
// heartbeats), and one that receives.
type link struct {
	d        *Drainer
	idx      int
	endpoint string
	log      *slog.Logger

	ctx    context.Context // the socket's life; cancelled before Close
	cancel context.CancelFunc
	sock   zmq4.Socket
	wg     sync.WaitGroup

	outMu   sync.Mutex
	out     []outMsg
	outKick chan struct{}

	// Owned by the drainer's loop.
	up          bool
	lastPong    time.Time
	incarnation uint64
	router      string
	busyUntil   time.Time
	backoff     backoff.Backoff
	inflight    int // batches sent here and not settled
}

// outMsg is one message waiting for the send goroutine.
type outMsg struct {
	frames      [][]byte
	first, last uint64
}

func newLink(d *Drainer, idx int, endpoint string) *link {
	return &link{
		d:        d,
		idx:      idx,
		endpoint: endpoint,
		log:      d.log.With("router_endpoint", endpoint),
		outKick:  make(chan struct{}, 1),
		backoff:  backoff.New(minBusyBackoff, maxBusyBackoff, nil),
	}
}

// start opens the socket and starts connecting; it does not wait for the
// router, which may come up at any time.
func (l *link) start() {
	cfg := l.d.cfg
	l.ctx, l.cancel = context.WithCancel(context.Background())
	l.sock = NewDealer(l.ctx, l.d.identity, sendTimeout(cfg.Heartbeat), dialRetry(cfg.Heartbeat), l.log)
	l.wg.Add(3)
	go l.dial()
	go l.sendLoop()
	go l.recvLoop()
}

// stop closes the socket and waits for the link's goroutines.
func (l *link) stop() {
	l.cancel()
	// Dial returns once it sees the cancelled context (within one retry
	// interval); closing only after it has returned means no connection is
	// added to a socket that is already closed.
	l.wg.Wait()
	if err := l.sock.Close(); err != nil {
		l.log.Debug("forward: close dealer", "err", err)
	}
}

// dial connects once; zmq4 then reconnects by itself. With unlimited
// retries Dial fails only when the ZMTP handshake does (a router going down
// in the middle of it, something that is not a router), so try again.
func (l *link) dial() {
	defer l.wg.Done()
	Dial(l.ctx, l.sock, l.endpoint, dialRetry(l.d.cfg.Heartbeat), l.log)
}

// enqueue hands a message to the send goroutine; it never blocks.
func (l *link) enqueue(m outMsg) {
	l.outMu.Lock()
	l.out = append(l.out, m)
	l.outMu.Unlock()
	select {
	case l.outKick <- struct{}{}:
	default:
	}
}

func (l *link) take() []outMsg {
	l.outMu.Lock()
	defer l.outMu.Unlock()
	out := l.out
	l.out = nil
	return out
}

func (l *link) sendLoop() {
	defer l.wg.Done()
	t := time.NewTicker(l.d.cfg.Heartbeat)
	defer t.Stop()
	l.ping()
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-t.C:
			l.ping()
		case <-l.outKick:
			for _, m := range l.take() {
				// Send returns nil when zmq4 drops the message (no
				// connection at the moment): acks and timeouts cover that.
				// An error means it was surely not delivered.
				if err := l.sock.SendMulti(zmq4.NewMsgFrom(m.frames...)); err != nil {
					if l.ctx.Err() != nil {
						return
					}
					l.d.post(l.ctx, event{kind: evSendFailed, link: l, msg: Message{First: m.first, Last: m.last}, err: err})
				}
			}
		}
	}
}

func (l *link) ping() {
	frames, _ := Message{Type: TypePing, Nonce: uint64(time.Now().UnixNano())}.Frames()
	if err := l.sock.SendMulti(zmq4.NewMsgFrom(frames...)); err != nil && l.ctx.Err() == nil {
		l.log.Debug("forward: heartbeat not sent", "err", err)
	}
}

func (l *link) recvLoop() {
	defer l.wg.Done()
	for {
		msg, err := l.sock.Recv()
		if err != nil {
			if l.ctx.Err() != nil {
				return
			}
			// zmq4 reports a lost connection (after it has reconnected)
			// as a receive error; heartbeats tell what state the router
			// is in.
			l.log.Debug("forward: connection to router lost", "err", err)
			continue
		}
		m, err := Decode(msg.Frames)
		if err != nil {
			l.d.badMessage(l, m, err)
			continue
		}
		switch m.Type {
		case TypePong, TypeAck, TypeBusy, TypeReject:
			if !l.d.post(l.ctx, event{kind: evMessage, link: l, msg: m}) {
				return
			}
		default:
			l.d.badMessage(l, m, errors.New("unexpected message type from a router"))
		}
	}
}
