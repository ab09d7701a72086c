package livefeed

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-zeromq/zmq4"
	"google.golang.org/protobuf/proto"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/telemetry"
)

// LiveTopic is the first frame of every live. lane message; the second is a
// serialized telemetry.PublishBatch.
const LiveTopic = "live."

const (
	// zmqTimeout bounds a SUB socket's own sends (its subscription
	// messages): short, so that a dead router never holds up a reconnect.
	zmqTimeout = 5 * time.Second
	// zmqRetry is the wait between two dial attempts.
	zmqRetry = 250 * time.Millisecond
	// Bounds of a record's position, degrees × 10^7.
	maxLatE7 = 90 * 10_000_000
	maxLonE7 = 180 * 10_000_000
)

// dialSubscriber opens a SUB socket with identity id, subscribed to topic,
// and dials ep over the cluster link (what names the peer in logs): a
// refused connection or TLS handshake is retried inside Dial (the cluster
// link logs why); a failed ZMTP handshake is tried again every 5 s. It
// returns the connected socket and what closes it, or ok false when ctx
// ended or the setup failed (logged). Closing the socket is what ends a
// Dial in progress and a blocked Recv: the socket closes when ctx ends.
func (f *Feed) dialSubscriber(ctx context.Context, log *slog.Logger, id, topic string, link clusterlink.Link, ep, what string) (sock zmq4.Socket, closeSock func(), ok bool) {
	sock = zmq4.NewSub(ctx,
		zmq4.WithID(zmq4.SocketIdentity(id)),
		zmq4.WithDialerMaxRetries(-1),
		zmq4.WithAutomaticReconnect(true),
		zmq4.WithDialerRetry(zmqRetry),
		zmq4.WithTimeout(zmqTimeout),
		zmq4.WithLogger(slog.NewLogLogger(log.Handler(), slog.LevelWarn)),
	)
	// The closures hold their own copy: the failure paths below return a
	// nil sock, which must not reach a close already under way.
	s := sock
	stop := context.AfterFunc(ctx, func() { _ = zmqsock.Close(s) })
	closeSock = func() { stop(); _ = zmqsock.Close(s) }
	if err := sock.SetOption(zmq4.OptionSubscribe, topic); err != nil {
		log.Error("livefeed: subscribe to "+topic+" failed", "err", err)
		closeSock()
		return nil, nil, false
	}
	endpoint, err := f.sec.Endpoint(link, ep)
	if err != nil {
		log.Error("livefeed: "+what+" endpoint", "err", err) // New checked it: a bug
		closeSock()
		return nil, nil, false
	}
	for {
		err := sock.Dial(endpoint)
		if ctx.Err() != nil {
			closeSock()
			return nil, nil, false
		}
		if err == nil {
			return sock, closeSock, true
		}
		log.Warn("livefeed: dial "+what+" failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			closeSock()
			return nil, nil, false
		case <-time.After(5 * time.Second):
		}
	}
}

// subscribeRouter subscribes to one router's live. lane and applies what it
// publishes until ctx ends. One SUB socket per endpoint: a go-zeromq socket
// with several connections reads them through one queue, and one endpoint
// that misbehaves should not share a socket with the others.
//
// zmq4 facts this relies on (v0.17.0, socket.go and msgio.go): Dial with
// WithDialerMaxRetries(-1) retries every zmqRetry until it connects or the
// socket is closed; the topic set before Dial is sent on every (re)connect;
// with WithAutomaticReconnect a lost connection is dialled again, and Recv
// returns that connection's error once (then blocks for the next message).
func (f *Feed) subscribeRouter(ctx context.Context, i int, ep string) {
	subscribed := false
	defer func() {
		// A subscription ends when the livefeed stops or the endpoint
		// leaves the list: it no longer counts for readiness.
		if subscribed {
			f.subscribed.Add(-1)
		}
	}()
	log := f.logger.With("router_endpoint", ep)
	sock, closeSock, ok := f.dialSubscriber(ctx, log, fmt.Sprintf("%s.%d", f.cfg.ID, i), LiveTopic, clusterlink.LinkLive, ep, "router")
	if !ok {
		return
	}
	defer closeSock()
	f.subscribed.Add(1)
	subscribed = true
	f.m.routersConnected.Inc()
	connected := true
	log.Info("livefeed: subscribed to router live. lane")

	seqs := make(map[string]uint64) // last batch seq per router name
	for {
		msg, err := sock.Recv()
		if ctx.Err() != nil {
			if connected {
				f.m.routersConnected.Dec()
			}
			return
		}
		if err != nil {
			// The connection broke; zmq4 is dialling again.
			if connected {
				connected = false
				f.m.routersConnected.Dec()
				log.Info("livefeed: router connection lost; reconnecting", "err", err)
			}
			continue
		}
		if !connected {
			connected = true
			f.m.routersConnected.Inc()
			log.Info("livefeed: router connection back")
		}
		f.ingest(msg.Frames, seqs, log)
	}
}

// ingest decodes one live. message, applies its records to the vehicle
// state and dispatches the changes. It never waits for a client.
func (f *Feed) ingest(frames [][]byte, seqs map[string]uint64, log *slog.Logger) {
	if len(frames) != 2 || string(frames[0]) != LiveTopic {
		f.m.messagesInvalid.Inc()
		log.Debug("livefeed: live. message without the two frames topic, batch; dropped", "frames", len(frames))
		return
	}
	var b telemetry.PublishBatch
	if err := proto.Unmarshal(frames[1], &b); err != nil {
		f.m.messagesInvalid.Inc()
		log.Debug("livefeed: undecodable publish batch; dropped", "err", err)
		return
	}
	f.m.batchesReceived.Inc()
	// Gaps in a router's batch sequence are batches the best-effort lane
	// lost. A lower sequence is a restarted router (or a duplicate).
	if last, ok := seqs[b.GetRouter()]; ok && b.GetSeq() > last+1 {
		f.m.batchesMissed.Add(float64(b.GetSeq() - last - 1))
	}
	if b.GetSeq() != 0 {
		seqs[b.GetRouter()] = b.GetSeq()
	}
	f.apply(b.GetRecords(), time.Now())
}

// apply applies records to the state and dispatches the changes.
func (f *Feed) apply(recs []*telemetry.EnrichedRecord, now time.Time) {
	nowNs, nowMs := now.UnixNano(), now.UnixMilli()
	changes := make([]change, 0, len(recs))
	added, stale, invalid := 0, 0, 0
	for _, rec := range recs {
		if !validRecord(rec) {
			invalid++
			continue
		}
		if f.hidden(rec.GetRecord().GetDeviceId()) {
			f.m.updatesRetired.Inc()
			continue
		}
		if d := nowMs - rec.GetRecord().GetReceivedMs(); rec.GetRecord().GetReceivedMs() > 0 && d >= 0 {
			f.m.ingestDelay.Observe(float64(d) / 1e3)
		}
		ch, ok := f.store.apply(rec, nowNs)
		if !ok {
			stale++
			continue
		}
		if ch.old == nil {
			added++
		}
		changes = append(changes, ch)
	}
	f.m.updatesReceived.Add(float64(len(recs)))
	if stale > 0 {
		f.m.updatesStale.Add(float64(stale))
	}
	if invalid > 0 {
		f.m.updatesInvalid.Add(float64(invalid))
	}
	if added > 0 {
		f.m.vehicles.Add(float64(added))
	}
	f.dispatch(changes, nowNs)
}

// validRecord checks what the livefeed relies on. Routers forward what
// frontends validated; this guards the feed against anything else.
func validRecord(rec *telemetry.EnrichedRecord) bool {
	r := rec.GetRecord()
	rd := r.GetReading()
	if rd == nil || r.GetDeviceId() == "" || len(r.GetDeviceId()) > 128 || rd.GetTimeMs() <= 0 {
		return false
	}
	if (rd.LatE7 == nil) != (rd.LonE7 == nil) {
		return false
	}
	if rd.LatE7 != nil {
		lat, lon := rd.GetLatE7(), rd.GetLonE7()
		if lat < -maxLatE7 || lat > maxLatE7 || lon < -maxLonE7 || lon > maxLonE7 {
			return false
		}
	}
	return true
}
