package forward

import (
	"context"
	"log/slog"
	"time"

	"github.com/go-zeromq/zmq4"
)

// NewDealer returns a zmq4 DEALER set up the way both ends of drover's
// links need it: identity (unique per socket: a peer must be able to tell a
// restarted process from the old one), a short send timeout (zmq4 adds a
// reconnected peer only after a timed-out send), dials retried every
// dialRetry without limit and reconnection by itself, zmq4's own log lines
// at warning level into logger.
func NewDealer(ctx context.Context, identity string, sendTimeout, dialRetry time.Duration, logger *slog.Logger) zmq4.Socket {
	return zmq4.NewDealer(ctx,
		zmq4.WithID(zmq4.SocketIdentity(identity)),
		zmq4.WithTimeout(sendTimeout),
		zmq4.WithDialerRetry(dialRetry),
		zmq4.WithDialerTimeout(dialTimeout),
		zmq4.WithDialerMaxRetries(-1),
		zmq4.WithAutomaticReconnect(true),
		zmq4.WithLogger(slog.NewLogLogger(logger.Handler(), slog.LevelWarn)),
	)
}

// Dial connects sock to endpoint once; zmq4 then reconnects by itself. With
// unlimited retries Dial fails only when the ZMTP handshake does (the peer
// going down in the middle of it, something that is not a drover peer), so
// try again every retry until it works or ctx ends.
func Dial(ctx context.Context, sock zmq4.Socket, endpoint string, retry time.Duration, logger *slog.Logger) {
	for {
		err := sock.Dial(endpoint)
		if err == nil || ctx.Err() != nil {
			return
		}
		logger.Warn("connect to router failed; retrying", "endpoint", endpoint, "err", err)
		select {
		case <-time.After(retry):
		case <-ctx.Done():
			return
		}
	}
}
