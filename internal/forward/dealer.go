package forward

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/zmqsock"
)

// DealerConfig configures a [Dealer].
type DealerConfig struct {
	// Endpoint is the router endpoint as flags name it (tcp://host:port).
	Endpoint string
	// Link is the cluster link the connection belongs to
	// (clusterlink.LinkIngest for a frontend, LinkStore for a storage
	// writer), and Security the component's side of the links: the
	// connection is mutual TLS under the cluster key, or plain when
	// Security is insecure.
	Link     clusterlink.Link
	Security *clusterlink.Security
	// Identity is the socket's ZeroMQ identity: unique per socket (see
	// [SocketIdentity]), so that a router never routes to a connection of
	// an earlier incarnation.
	Identity string
	// SendTimeout bounds one zmq4 Send. It must be short: when a
	// connection dies under a write, zmq4 reconnects from inside that
	// write while the socket's writer lock is held, and the new connection
	// is added only once the Send has timed out.
	SendTimeout time.Duration
	// DialRetry is the wait between two connection attempts.
	DialRetry time.Duration
	// Heartbeat is how often HeartbeatMessage is sent; it is also sent as
	// soon as the Dealer starts.
	Heartbeat        time.Duration
	HeartbeatMessage func() Message
	// Receive is called, from the receive goroutine, with each message from
	// the router; err is not nil when it did not decode (m then holds what
	// could be read of it).
	Receive func(m Message, err error)
	// SendFailed, if set, is called from the send goroutine when a message
	// given to Send surely did not leave (zmq4's Send also returns nil
	// while dropping: acks and timeouts cover that).
	SendFailed func(first, last uint64, err error)
	// Logger receives the Dealer's and zmq4's lines (the latter at warning
	// level).
	Logger *slog.Logger
}

// Dealer is one DEALER connection to one router endpoint, the part of a
// link that the frontend's drainer and the storage writer share: the
// socket (one per endpoint: a zmq4 DEALER copies each message to all its
// connections), dialling in the background and zmq4's reconnects, a send
// goroutine that takes queued messages and sends the heartbeat, and a
// receive goroutine that decodes what the router sends. Neither goroutine
// waits on the other, nor on the caller: Send never blocks.
type Dealer struct {
	cfg      DealerConfig
	endpoint string // as given to zmq4: the link's transport

	ctx    context.Context // the socket's life; cancelled before Close
	cancel context.CancelFunc
	sock   zmq4.Socket
	wg     sync.WaitGroup

	outMu   sync.Mutex
	out     []outMsg
	outKick chan struct{}
}

// outMsg is one message waiting for the send goroutine.
type outMsg struct {
	frames      [][]byte
	first, last uint64
}

// NewDealer checks cfg and returns a Dealer; [Dealer.Start] opens it.
func NewDealer(cfg DealerConfig) (*Dealer, error) {
	if cfg.Security == nil || cfg.HeartbeatMessage == nil || cfg.Receive == nil || cfg.Heartbeat <= 0 {
		return nil, errors.New("forward: dealer: security, heartbeat and receive are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ep, err := cfg.Security.Endpoint(cfg.Link, cfg.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("forward: %w", err)
	}
	return &Dealer{cfg: cfg, endpoint: ep, outKick: make(chan struct{}, 1)}, nil
}

// SocketIdentity is name and a random suffix: the ZeroMQ identity of one
// socket, so that a router never routes an answer to a connection of a
// previous incarnation, or of another process misconfigured with the same
// name. (ZeroMQ identities are at most 255 bytes.)
func SocketIdentity(name string) string {
	var b [4]byte
	_, _ = crand.Read(b[:])
	if len(name) > 200 {
		name = name[:200]
	}
	return name + "." + hex.EncodeToString(b[:])
}

// Start opens the socket and starts connecting; it does not wait for the
// router, which may come up at any time.
func (d *Dealer) Start() {
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.sock = zmq4.NewDealer(d.ctx,
		zmq4.WithID(zmq4.SocketIdentity(d.cfg.Identity)),
		zmq4.WithTimeout(d.cfg.SendTimeout),
		zmq4.WithDialerRetry(d.cfg.DialRetry),
		zmq4.WithDialerTimeout(dialTimeout),
		zmq4.WithDialerMaxRetries(-1),
		zmq4.WithAutomaticReconnect(true),
		zmq4.WithLogger(slog.NewLogLogger(d.cfg.Logger.Handler(), slog.LevelWarn)),
	)
	d.wg.Add(3)
	go d.dial()
	go d.sendLoop()
	go d.recvLoop()
}

// Stop closes the socket and waits for the Dealer's goroutines.
func (d *Dealer) Stop() {
	d.cancel()
	// Dial returns once it sees the cancelled context (within one retry
	// interval); closing only after it has returned means no connection is
	// added to a socket that is already closed.
	d.wg.Wait()
	if err := zmqsock.Close(d.sock); err != nil {
		d.cfg.Logger.Debug("forward: close dealer", "err", err)
	}
}

// Context ends when Stop begins: callbacks that hand work on use it to give
// up instead of blocking a stopping Dealer.
func (d *Dealer) Context() context.Context { return d.ctx }

// dial connects once; zmq4 then reconnects by itself. With unlimited
// retries Dial fails only when the handshake does (the peer going down in
// the middle of it, a peer without the cluster key, something that is not
// a router), so try again every retry until it works or the Dealer stops.
func (d *Dealer) dial() {
	defer d.wg.Done()
	for {
		err := d.sock.Dial(d.endpoint)
		if err == nil || d.ctx.Err() != nil {
			return
		}
		d.cfg.Logger.Debug("forward: connect to router failed; retrying", "endpoint", d.cfg.Endpoint, "err", err)
		select {
		case <-time.After(d.cfg.DialRetry):
		case <-d.ctx.Done():
			return
		}
	}
}

// Send hands a message to the send goroutine; it never blocks. first and
// last are given back to SendFailed.
func (d *Dealer) Send(frames [][]byte, first, last uint64) {
	d.outMu.Lock()
	d.out = append(d.out, outMsg{frames: frames, first: first, last: last})
	d.outMu.Unlock()
	select {
	case d.outKick <- struct{}{}:
	default:
	}
}

// SendMessage encodes m and hands it to the send goroutine.
func (d *Dealer) SendMessage(m Message) error {
	frames, err := m.Frames()
	if err != nil {
		return fmt.Errorf("forward: encode %s: %w", m.Type, err)
	}
	d.Send(frames, m.First, m.Last)
	return nil
}

func (d *Dealer) take() []outMsg {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	out := d.out
	d.out = nil
	return out
}

func (d *Dealer) sendLoop() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.Heartbeat)
	defer t.Stop()
	d.heartbeat()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
			d.heartbeat()
		case <-d.outKick:
			for _, m := range d.take() {
				// Send returns nil when zmq4 drops the message (no
				// connection at the moment): acks and timeouts cover that.
				// An error means it was surely not delivered.
				if err := d.sock.SendMulti(zmq4.NewMsgFrom(m.frames...)); err != nil {
					if d.ctx.Err() != nil {
						return
					}
					if d.cfg.SendFailed != nil {
						d.cfg.SendFailed(m.first, m.last, err)
					} else {
						d.cfg.Logger.Debug("forward: message not sent", "err", err)
					}
				}
			}
		}
	}
}

func (d *Dealer) heartbeat() {
	frames, err := d.cfg.HeartbeatMessage().Frames()
	if err != nil {
		d.cfg.Logger.Error("forward: cannot encode heartbeat", "err", err) // a bug
		return
	}
	if err := d.sock.SendMulti(zmq4.NewMsgFrom(frames...)); err != nil && d.ctx.Err() == nil {
		d.cfg.Logger.Debug("forward: heartbeat not sent", "err", err)
	}
}

func (d *Dealer) recvLoop() {
	defer d.wg.Done()
	for {
		msg, err := d.sock.Recv()
		if err != nil {
			if d.ctx.Err() != nil {
				return
			}
			// zmq4 reports a lost connection (after it has reconnected)
			// as a receive error; heartbeats tell what state the router
			// is in.
			d.cfg.Logger.Debug("forward: connection to router lost", "err", err)
			continue
		}
		m, err := Decode(msg.Frames)
		d.cfg.Receive(m, err)
	}
}
