package alerts

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// The engine is a durable subscriber of the routers' store lane, speaking
// the same protocol as a storage writer (internal/forward/doc.go, "The
// store lane"; storagewriter/writer.go): subscribe every heartbeat,
// append each batch to the queue (dropping entries appended before, by
// router and queue sequence), ack once durable, answer busy when full.
const (
	heartbeat       = time.Second
	routerDownAfter = 3 * heartbeat
	sendTimeout     = 2 * time.Second
	dialRetry       = 250 * time.Millisecond
	maxAppenders    = 64
	dedupIntervals  = 4096
	maxRecordBytes  = 4 << 20
)

// routerSeqs is what the engine knows of one router's queue sequences.
type routerSeqs struct {
	done    *forward.SeqSet
	pending []forward.Interval
	// last is placed when the batch received last from this router has
	// its place in the queue (queue.Begin of its last append) or is done:
	// the next waits for it, so that a router's batches enter the queue in
	// the order they arrived, and still share group commits. Appends in parallel raced to
	// the queue, and a batch overtaken by later ones left its devices'
	// readings after theirs: more than ReorderMax readings of a device
	// held for the gap made the evaluator go over it, and the overtaken
	// readings became a late stretch (events that evaluating in order
	// does not raise).
	last *queue.Turn
}

// link is the engine's connection to one router endpoint.
type link struct {
	e        *Engine
	endpoint string
	log      *slog.Logger
	dl       *forward.Dealer

	stateMu  sync.Mutex
	lastPong time.Time
	router   string
}

func newLink(e *Engine, endpoint string) (*link, error) {
	l := &link{e: e, endpoint: endpoint, log: e.logger.With("router_endpoint", endpoint)}
	dl, err := forward.NewDealer(forward.DealerConfig{
		Endpoint:    endpoint,
		Link:        clusterlink.LinkStore,
		Security:    e.sec,
		Identity:    forward.SocketIdentity(e.cfg.Name),
		SendTimeout: sendTimeout,
		DialRetry:   dialRetry,
		Heartbeat:   heartbeat,
		HeartbeatMessage: func() forward.Message {
			e.updateRoutersUp()
			return forward.Message{Type: forward.TypeSubscribe, Name: e.cfg.Name, Nonce: uint64(time.Now().UnixNano())}
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

func (l *link) send(m forward.Message) {
	if err := l.dl.SendMessage(m); err != nil {
		l.log.Error("alerts: cannot encode message", "type", m.Type, "err", err)
	}
}

func (l *link) up(now time.Time) bool {
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	return !l.lastPong.IsZero() && now.Sub(l.lastPong) < routerDownAfter
}

func (l *link) receive(m forward.Message, err error) {
	if err != nil {
		l.e.m.badMessages.Inc()
		l.log.Debug("alerts: bad message from router", "err", err)
		return
	}
	switch m.Type {
	case forward.TypePong:
		l.stateMu.Lock()
		wasUp := !l.lastPong.IsZero() && time.Since(l.lastPong) < routerDownAfter
		l.lastPong, l.router = time.Now(), m.Router
		l.stateMu.Unlock()
		if !wasUp {
			l.log.Info("alerts: router up", "router", m.Router, "incarnation", m.Incarnation)
		}
		l.e.updateRoutersUp()
	case forward.TypeBatch:
		l.e.receive(l, m)
	default:
		l.e.m.badMessages.Inc()
	}
}

// receive handles a batch from a router: drops what was appended before,
// starts an append of the rest, and answers. It never blocks.
func (e *Engine) receive(l *link, m forward.Message) {
	n := uint64(len(m.Entries))
	e.mu.Lock()
	rs := e.routers[m.Sender]
	if rs == nil {
		rs = &routerSeqs{done: forward.NewSeqSet(dedupIntervals)}
		e.routers[m.Sender] = rs
	}
	missing := rs.done.Missing(m.First, m.Last, nil)
	if len(missing) == 0 {
		e.mu.Unlock()
		e.m.duplicates.Add(float64(n))
		l.send(forward.Message{Type: forward.TypeAck, First: m.First, Last: m.Last})
		return
	}
	var todo []forward.Interval
	for _, iv := range missing {
		todo = forward.Subtract(iv, rs.pending, todo)
	}
	if len(todo) == 0 {
		e.mu.Unlock() // an earlier copy is being appended and will answer
		return
	}
	select {
	case e.appendSem <- struct{}{}:
	default:
		e.mu.Unlock()
		l.send(forward.Message{Type: forward.TypeBusy, First: m.First, Last: m.Last, Reason: "alerts: too many appends in flight"})
		return
	}
	rs.pending = append(rs.pending, todo...)
	prev, mine := rs.last, queue.NewTurn()
	rs.last = mine
	e.appendWG.Add(1)
	e.mu.Unlock()
	go e.appendBatch(l, rs, m, todo, prev, mine)
}

// appendBatch appends the entries todo of batch m to the queue, each as a
// readings entry, once the router's batch before it (prev, nil for none)
// has its place in the queue, and acks the batch when all of it is
// durable. It marks mine placed once its own last append has its place
// (queue.Begin), or when it returns: the router's next batch then begins
// its appends and shares the commit.
func (e *Engine) appendBatch(l *link, rs *routerSeqs, m forward.Message, todo []forward.Interval, prev, mine *queue.Turn) {
	defer e.appendWG.Done()
	defer func() { <-e.appendSem }()
	defer mine.Placed()
	q := e.q.Load()
	var failed error
	if prev.Wait(e.appendCtx) != nil {
		failed = fmt.Errorf("%w: stopping", queue.ErrClosed)
	}
	for i, iv := range todo {
		if failed != nil {
			break
		}
		for first := iv.First; first <= iv.Last; {
			entries, size := make([][]byte, 0, 16), 0
			last := first
			for seq := first; seq <= iv.Last; seq++ {
				en := readingsEntry(m.Entries[seq-m.First], m.Sender)
				if len(entries) > 0 && size+len(en)+16 > maxRecordBytes-1024 {
					break
				}
				entries = append(entries, en)
				size += len(en) + 16
				last = seq
			}
			pend, err := q.Begin(entries...)
			if i == len(todo)-1 && last == iv.Last {
				mine.Placed()
			}
			if err == nil {
				_, err = pend.Wait(e.appendCtx)
			}
			if err != nil && !(errors.Is(err, queue.ErrTooLarge) && len(entries) == 1) {
				failed = err
				break
			} else if err != nil {
				// One entry larger than a queue record: an enormous batch a
				// router would never send; counted and skipped.
				e.m.oversized.Inc()
				l.log.Error("alerts: router entry larger than a queue record; skipped", "router", m.Sender, "seq", first, "bytes", size)
			}
			e.mu.Lock()
			rs.done.Add(first, last)
			e.mu.Unlock()
			first = last + 1
		}
	}
	e.mu.Lock()
	for _, iv := range todo {
		rs.pending = forward.RemoveInterval(rs.pending, iv)
	}
	complete := rs.done.Contains(m.First, m.Last)
	e.mu.Unlock()
	switch {
	case failed != nil:
		if !queue.Retryable(failed) && !errors.Is(failed, queue.ErrClosed) {
			e.logger.Error("alerts: append failed", "router", m.Sender, "first", m.First, "last", m.Last, "err", failed)
		}
		e.m.busy.Inc()
		l.send(forward.Message{Type: forward.TypeBusy, First: m.First, Last: m.Last, Reason: "alerts: " + failed.Error()})
	case complete:
		l.send(forward.Message{Type: forward.TypeAck, First: m.First, Last: m.Last})
	}
}

// Kinds of queue entry: the queue is the journal of everything the
// evaluation depends on, in the order it happened.
const (
	entryReadings byte = 1 // a serialized PublishBatch (router field set)
	entryTick     byte = 2 // the clock: wall time, ms (8 bytes LE)
	entryRules    byte = 3 // a rule set became current: its version (8 bytes LE)
)

// readingsEntry is a readings entry for a router's entry (a serialized
// PublishBatch), with its router field set: protobuf takes the last value
// of a field, so appending it sets it without decoding.
func readingsEntry(entry []byte, router string) []byte {
	out := make([]byte, 0, 1+len(entry)+len(router)+3)
	out = append(out, entryReadings)
	out = append(out, entry...)
	out = protowire.AppendTag(out, 1, protowire.BytesType)
	return protowire.AppendString(out, router)
}
