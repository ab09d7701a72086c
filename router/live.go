package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/go-zeromq/zmq4"
)

// LiveTopic is the first frame of every message of the live lane: exactly
// these five bytes. The second frame is a serialized telemetry.PublishBatch.
const LiveTopic = "live."

// liveSendTimeout bounds one write of the live PUB socket to a subscriber.
const liveSendTimeout = 2 * time.Second

// live is the best-effort live lane: a PUB socket fed from a bounded
// channel by one goroutine. Offering never blocks; what does not fit is
// dropped and counted.
type live struct {
	sock zmq4.Socket
	c    chan []byte
	m    *metrics
	log  *slog.Logger
	done chan struct{}
}

// openLive binds the live lane's PUB socket at endpoint and returns it with
// the address it is bound to.
func openLive(ctx context.Context, endpoint string, buffer int, m *metrics, logger *slog.Logger) (*live, string, error) {
	sock := zmq4.NewPub(ctx,
		zmq4.WithTimeout(liveSendTimeout),
		zmq4.WithLogger(slog.NewLogLogger(logger.Handler(), slog.LevelWarn)),
	)
	if err := sock.Listen(endpoint); err != nil {
		_ = sock.Close()
		return nil, "", fmt.Errorf("router: live lane: listen on %s: %w", endpoint, err)
	}
	addr := endpoint
	if a := sock.Addr(); a != nil && strings.HasPrefix(addr, "tcp://") {
		addr = "tcp://" + a.String()
	}
	return &live{sock: sock, c: make(chan []byte, buffer), m: m, log: logger, done: make(chan struct{})}, addr, nil
}

// offer queues one serialized PublishBatch for publication, or drops it
// (counted) when the lane is behind. It never blocks.
func (l *live) offer(pb []byte) {
	select {
	case l.c <- pb:
	default:
		l.m.liveDropped.Inc()
	}
}

// run publishes until close is called. zmq4's PUB socket writes to its
// subscribers one after another and may itself drop (HWM) with Send
// returning nil: this lane is best effort.
func (l *live) run() {
	defer close(l.done)
	topic := []byte(LiveTopic)
	for pb := range l.c {
		if err := l.sock.Send(zmq4.NewMsgFrom(topic, pb)); err != nil {
			l.m.liveDropped.Inc()
			if !errors.Is(err, context.Canceled) {
				l.log.Debug("router: live publish failed", "err", err)
			}
			continue
		}
		l.m.livePublished.Inc()
	}
}

// close stops taking batches, publishes what is queued, and closes the
// socket. Call it once, after the last offer.
func (l *live) close() {
	close(l.c)
	<-l.done
	_ = l.sock.Close()
}
