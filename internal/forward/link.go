package forward

import (
	"errors"
	"log/slog"
	"time"

	"github.com/drover-telemetry/drover/internal/backoff"
	"github.com/drover-telemetry/drover/internal/clusterlink"
)

// link is the drainer's connection to one router: a [Dealer] (the socket,
// its send and receive goroutines, pings as heartbeats) and what the
// drainer's loop knows of that router.
type link struct {
	d        *Drainer
	endpoint string
	pref     uint64 // the frontend's preference for this router (see preference)
	log      *slog.Logger
	dl       *Dealer

	// Owned by the drainer's loop.
	up          bool
	lastPong    time.Time
	incarnation uint64
	router      string
	busyUntil   time.Time
	backoff     backoff.Backoff
	inflight    int  // batches sent here and not settled
	removed     bool // no longer in the endpoint list: closing, sent nothing
}

func newLink(d *Drainer, endpoint string) (*link, error) {
	l := &link{d: d, endpoint: endpoint, log: d.log.With("router_endpoint", endpoint),
		backoff: backoff.New(minBusyBackoff, maxBusyBackoff, nil)}
	dl, err := NewDealer(DealerConfig{
		Endpoint:    endpoint,
		Link:        clusterlink.LinkIngest,
		Security:    d.sec,
		Identity:    d.identity,
		SendTimeout: sendTimeout(d.cfg.Heartbeat),
		DialRetry:   dialRetry(d.cfg.Heartbeat),
		Heartbeat:   d.cfg.Heartbeat,
		HeartbeatMessage: func() Message {
			return Message{Type: TypePing, Nonce: uint64(time.Now().UnixNano())}
		},
		Receive: l.receive,
		SendFailed: func(first, last uint64, err error) {
			d.post(l.dl.Context(), event{kind: evSendFailed, link: l, msg: Message{First: first, Last: last}, err: err})
		},
		Logger: l.log,
	})
	if err != nil {
		return nil, err
	}
	l.dl = dl
	return l, nil
}

// start opens the socket and starts connecting; it does not wait for the
// router, which may come up at any time.
func (l *link) start() { l.dl.Start() }

// stop closes the socket and waits for the link's goroutines.
func (l *link) stop() { l.dl.Stop() }

// enqueue hands a message to the send goroutine; it never blocks.
func (l *link) enqueue(m outMsg) { l.dl.Send(m.frames, m.first, m.last) }

// receive hands what a router answers to the drainer's loop.
func (l *link) receive(m Message, err error) {
	if err != nil {
		l.d.badMessage(l, m, err)
		return
	}
	switch m.Type {
	case TypePong, TypeAck, TypeBusy, TypeReject:
		l.d.post(l.dl.Context(), event{kind: evMessage, link: l, msg: m})
	default:
		l.d.badMessage(l, m, errors.New("unexpected message type from a router"))
	}
}
