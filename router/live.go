package router

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/publane"
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

// live is the best-effort live lane: a bounded publisher of our own
// (internal/publane), because zmq4's PUB queues without bound and writes to
// its subscribers one after another, so one stalled subscriber held every
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
	*publane.Publisher
}

// openLive binds the live lane at endpoint through sec and returns it with
// the address it is bound to.
func openLive(sec *clusterlink.Security, endpoint, id string, buffer int, bufferBytes int64, m *metrics, logger *slog.Logger) (*live, string, error) {
	p, addr, err := publane.Open(sec, clusterlink.LinkLive, endpoint, id, publane.Config{
		Topic: LiveTopic, Buffer: buffer, BufferBytes: bufferBytes, Stall: liveStallTimeout, CloseGrace: liveCloseGrace,
		MaxSubscribers: maxLiveSubscribers, MaxLabels: maxLiveLabels, Name: "router: live",
	}, publane.Metrics{
		Published: m.livePublished, Dropped: m.liveDropped, Sent: m.liveSent, SubDropped: m.liveSubDropped,
		Subscribers: m.liveSubscribers, Disconnects: m.liveDisconnects,
	}, logger)
	if err != nil {
		return nil, "", fmt.Errorf("router: live lane: %w", err)
	}
	return &live{p}, addr, nil
}

// offer gives one serialized PublishBatch to every subscriber. It never
// blocks.
func (l *live) offer(pb []byte) { l.Offer(pb) }

// close stops the lane: no new subscriber, what the buffers hold is sent
// for up to liveCloseGrace, then every connection is closed. Call it once,
// after the last offer.
func (l *live) close() { l.Close() }
