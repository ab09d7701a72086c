package router

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/drover-telemetry/drover/internal/atomicfile"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/zmqsock"
)

const (
	// subRecordBytes is the largest record of a subscriber queue of a
	// router from before the log (read once, at migration).
	subRecordBytes = 4 << 20
	// storeSendTimeout bounds one write on the store lane's ROUTER socket:
	// zmq4 holds the socket's lock while writing, so a subscriber whose
	// connection stalls delays the others by up to this much. The
	// per-subscriber window keeps that from happening in normal operation.
	storeSendTimeout = 2 * time.Second
	// subsFile lists the registered subscribers, one name a line, under
	// QueueDir/subs/.
	subsFile = "subscribers"
	// maxSubscribers caps the subscribers registered on subscribe: each
	// costs a cursor, a goroutine and a send of every batch.
	maxSubscribers = 64
)

func (r *Router) subsDir() string { return filepath.Join(r.cfg.QueueDir, "subs") }

// openStoreLane binds the store lane's ROUTER socket.
func (r *Router) openStoreLane(ctx context.Context) (string, error) {
	r.storeSock = zmq4.NewRouter(ctx,
		zmq4.WithID(zmq4.SocketIdentity(r.cfg.ID)),
		zmq4.WithTimeout(storeSendTimeout),
		zmq4.WithLogger(slogLogLogger(r.logger)),
	)
	ep, err := r.sec.Endpoint(clusterlink.LinkStore, r.cfg.StoreListen)
	if err == nil {
		err = r.storeSock.Listen(ep)
	}
	if err != nil {
		_ = zmqsock.Close(r.storeSock)
		return "", fmt.Errorf("router: store lane: listen on %s: %w", r.cfg.StoreListen, err)
	}
	addr := r.cfg.StoreListen
	if a := r.storeSock.Addr(); a != nil && strings.HasPrefix(addr, "tcp://") {
		addr = "tcp://" + a.String()
	}
	return addr, nil
}

// openSubscribers opens the cursor of every subscriber of the static list
// and of the persisted set, and starts their senders.
func (r *Router) openSubscribers() error {
	if err := os.MkdirAll(r.subsDir(), 0o755); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	names, err := readSubsFile(filepath.Join(r.subsDir(), subsFile))
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	for _, n := range r.cfg.Subscribers {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	r.subsMu.Lock()
	defer r.subsMu.Unlock()
	// A log without cursors (a first start, or the first with the log):
	// every subscriber starts at its head, since what it holds has no
	// durable home yet.
	fresh := len(r.q.CursorNames()) == 0
	for _, n := range names {
		if err := forward.ValidateSubscriberName(n); err != nil {
			r.logger.Error("router: ignoring a bad name in the subscriber list", "file", filepath.Join(r.subsDir(), subsFile), "err", err)
			continue
		}
		if _, err := r.addSubLocked(n, fresh); err != nil {
			return err
		}
	}
	r.dropOrphanCursorsLocked()
	if err := r.persistSubsLocked(); err != nil {
		return err
	}
	if len(r.subs) > 0 {
		r.logger.Info("router: durable subscribers", "names", strings.Join(slices.Sorted(mapsKeys(r.subs)), ","))
	}
	return nil
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// subscribe handles a subscribe: it registers an unknown name (logged
// loudly, persisted), notes when the subscriber was last heard, and hands
// its identity to its sender.
func (r *Router) subscribe(id []byte, name string) {
	r.subsMu.Lock()
	if r.subsClosed {
		r.subsMu.Unlock()
		return
	}
	s := r.subs[name]
	if s == nil && r.cfg.FixedSubscribers {
		r.subsMu.Unlock()
		r.m.badMessages.WithLabelValues("subscriber_unknown").Inc()
		if _, logged := r.unknownSubs.LoadOrStore(name, true); !logged { // once per name
			r.logger.Error("router: subscribe refused: unknown durable subscriber (-fixed-subscribers); add it to -subscribers if it is meant to be one",
				"subscriber", name, "peer", string(id), "known", r.cfg.Subscribers)
		}
		return
	}
	if s == nil && len(r.subs) >= maxSubscribers {
		r.subsMu.Unlock()
		r.m.badMessages.WithLabelValues("subscribers").Inc()
		r.logger.Error("router: subscribe refused: too many durable subscribers", "subscriber", name, "peer", string(id), "max", maxSubscribers)
		return
	}
	if s == nil {
		var err error
		// A new subscriber reads what arrives from now on; the first one
		// takes what the log holds, which had no durable home.
		if s, err = r.addSubLocked(name, len(r.q.CursorNames()) == 0); err != nil {
			r.subsMu.Unlock()
			r.logger.Error("router: cannot register subscriber", "subscriber", name, "err", err)
			return
		}
		r.m.subsRegistered.Inc()
		r.logger.Warn("router: NEW durable subscriber registered on its first subscribe; the router keeps a queue for it from now on (until -subscriber-retention without hearing from it)",
			"subscriber", name, "peer", string(id), "retention", r.cfg.SubscriberRetention)
		if err := r.persistSubsLocked(); err != nil {
			r.logger.Error("router: persist subscriber set; it is kept while this process runs", "err", err)
		}
	}
	if r.peers[string(id)] != s {
		for other, p := range r.peers {
			if p == s {
				delete(r.peers, other) // an earlier connection of that subscriber
			}
		}
		r.peers[string(id)] = s
	}
	r.subsMu.Unlock()
	s.lastHeard.Store(time.Now().UnixNano())
	s.post(subEvent{kind: evSubscribe, id: id})
}

// snapshotSubs returns the subscribers registered now.
func (r *Router) snapshotSubs() []*subscriber {
	r.subsMu.Lock()
	defer r.subsMu.Unlock()
	out := make([]*subscriber, 0, len(r.subs))
	for _, s := range r.subs {
		out = append(out, s)
	}
	return out
}

// retentionLoop drops the subscribers not heard from for longer than
// SubscriberRetention.
func (r *Router) retentionLoop(ctx context.Context) {
	t := time.NewTicker(min(r.timing.tick*10, max(r.cfg.SubscriberRetention/10, r.timing.tick)))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, s := range r.snapshotSubs() {
				if silent := now.Sub(time.Unix(0, s.lastHeard.Load())); silent > r.cfg.SubscriberRetention {
					r.dropSubscriber(s, silent)
				}
			}
		}
	}
}

// dropSubscriber deletes a subscriber and its cursor in the log.
func (r *Router) dropSubscriber(s *subscriber, silent time.Duration) {
	r.subsMu.Lock()
	defer r.subsMu.Unlock()
	if r.subsClosed || r.subs[s.name] != s {
		return
	}
	delete(r.subs, s.name)
	for id, p := range r.peers {
		if p == s {
			delete(r.peers, id)
		}
	}
	s.dropped.Store(true)
	s.cancel()
	<-s.done
	depth, size, err := s.deleteSub()
	perr := r.persistSubsLocked()
	r.m.subsDropped.WithLabelValues(s.name).Inc()
	r.m.subscribers.Set(float64(len(r.subs)))
	r.m.subConnected.DeleteLabelValues(s.name)
	r.logger.Error("router: durable subscriber DROPPED: not heard from for longer than -subscriber-retention; its cursor in the log is deleted and what it had not acked will not reach it",
		"subscriber", s.name, "silent_for", silent.Round(time.Second), "retention", r.cfg.SubscriberRetention,
		"entries_dropped", depth, "bytes_dropped", size, "static", slices.Contains(r.cfg.Subscribers, s.name), "err", err)
	if perr != nil {
		r.logger.Error("router: persist subscriber set", "err", perr)
	}
}

// closeSubscribers stops every sender and closes every cursor (writing
// its position).
func (r *Router) closeSubscribers() error {
	r.subsMu.Lock()
	r.subsClosed = true
	subs := make([]*subscriber, 0, len(r.subs))
	for _, s := range r.subs {
		subs = append(subs, s)
	}
	r.subsMu.Unlock()
	var errs []error
	for _, s := range subs {
		s.cancel()
	}
	for _, s := range subs {
		<-s.done
		if err := s.closeSub(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// persistSubsLocked writes the subscriber set atomically and durably
// (internal/atomicfile: temporary file, fsync, rename, directory fsync).
func (r *Router) persistSubsLocked() error {
	names := slices.Sorted(mapsKeys(r.subs))
	path := filepath.Join(r.subsDir(), subsFile)
	if err := atomicfile.WriteFile(path, []byte(strings.Join(names, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("write subscriber set: %w", err)
	}
	return nil
}

func readSubsFile(path string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read subscriber set: %w", err)
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n := strings.TrimSpace(sc.Text()); n != "" {
			names = append(names, n)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read subscriber set %s: %w", path, err)
	}
	return names, nil
}

// storeRecvLoop takes the store lane's messages off its socket.
func (r *Router) storeRecvLoop(ctx context.Context) {
	for {
		msg, err := r.storeSock.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.logger.Debug("router: store lane receive", "err", err)
			continue
		}
		if len(msg.Frames) < 2 {
			r.bad(nil, forward.Message{}, errors.New("store lane: no identity or no header frame"))
			continue
		}
		id, frames := msg.Frames[0], msg.Frames[1:]
		m, err := forward.Decode(frames)
		if err != nil {
			r.bad(id, m, fmt.Errorf("store lane: %w", err))
			continue
		}
		switch m.Type {
		case forward.TypeSubscribe:
			if r.Ready() != nil {
				continue // stopping: the writer sees no pong
			}
			r.storeReply(id, forward.Message{Type: forward.TypePong, Nonce: m.Nonce, Incarnation: r.incarnation, Router: r.cfg.ID})
			r.subscribe(id, m.Name)
		case forward.TypeAck, forward.TypeBusy:
			r.subsMu.Lock()
			s := r.peers[string(id)]
			r.subsMu.Unlock()
			if s == nil {
				r.bad(id, m, errors.New("store lane: ack or busy from a peer that has not subscribed"))
				continue
			}
			kind := evAck
			if m.Type == forward.TypeBusy {
				kind = evBusy
				s.log.Debug("router: subscriber busy", "first", m.First, "last", m.Last, "reason", m.Reason)
			}
			s.post(subEvent{kind: kind, first: m.First, last: m.Last, reason: m.Reason})
		default:
			r.bad(id, m, errors.New("store lane: unexpected message type from a subscriber"))
		}
	}
}

func (r *Router) storeReply(id []byte, m forward.Message) {
	frames, err := m.Frames()
	if err != nil {
		r.logger.Error("router: encode store-lane reply", "type", m.Type, "err", err) // a bug
		return
	}
	r.storeOut.push(append([][]byte{id}, frames...))
}

// storeWriteLoop sends everything the store lane sends: one writer, as the
// ROUTER socket serialises its writes anyway.
func (r *Router) storeWriteLoop() {
	for {
		batch, ok := r.storeOut.wait()
		if !ok {
			return
		}
		for _, frames := range batch {
			// A lost message is resent: after its ack timeout, or when its
			// subscriber is seen connected anew.
			if err := r.storeSock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
				r.logger.Debug("router: store lane send failed", "peer", string(frames[0]), "err", err)
			}
		}
	}
}
