package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/backoff"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// storeTiming is the store lane's timing; a Router field so that tests can
// shorten it.
type storeTiming struct {
	// downAfter without a subscribe makes a subscriber count as gone: its
	// batches wait (no resend into a connection nobody reads).
	downAfter time.Duration
	// ackTimeout is how long a batch waits for its ack before it is sent
	// again.
	ackTimeout time.Duration
	// window is how many queue batches (of at most batchBytes each) a
	// subscriber may have in flight.
	window int
	// batchBytes is the entry bytes read from a subscriber queue per batch.
	batchBytes int
	// tick is how often timeouts and retention are checked.
	tick time.Duration
}

func defaultStoreTiming() storeTiming {
	return storeTiming{
		downAfter:  3 * time.Second,
		ackTimeout: 5 * time.Second,
		window:     8,
		batchBytes: 256 << 10,
		tick:       100 * time.Millisecond,
	}
}

// storePacked makes the store lane send packed batches (one frame for all
// entries; see internal/forward): zmq4 reads each frame with its own read
// calls, so one frame per entry cost the receiver most of its CPU. Storage
// writers decode with forward.Decode, which reads both forms.
const storePacked = true

// Backoff after a busy answer or an ack timeout, doubled each time, with
// jitter (internal/backoff).
const (
	minSubBackoff = 50 * time.Millisecond
	maxSubBackoff = 5 * time.Second
)

// subscriber is one durable subscriber at the router: its queue and the
// goroutine that sends that queue over the store lane.
type subscriber struct {
	name   string
	dir    string
	q      *queue.Queue
	r      *Router
	log    *slog.Logger
	events chan subEvent
	// lastHeard is the UnixNano of the last subscribe (or of registration).
	lastHeard atomic.Int64
	dropped   atomic.Bool
	cancel    context.CancelFunc
	done      chan struct{}

	sent, acked, busy prometheus.Counter
	resent            *prometheus.CounterVec
	connected         prometheus.Gauge
}

type subEventKind uint8

const (
	evSubscribe subEventKind = iota
	evAck
	evBusy
)

type subEvent struct {
	kind        subEventKind
	id          []byte
	first, last uint64
}

// srun is one protocol batch: a run of consecutive sequences of a queue
// batch (sequences jump across a restart of the router).
type srun struct {
	first, last uint64
	frames      [][]byte
	b           *sbatch
	sent, acked bool
	sentAt      time.Time
	why         string // why the next send is a resend; "" for the first
}

type sbatch struct {
	qb   queue.Batch
	left int
}

func (s *subscriber) post(ev subEvent) {
	select {
	case s.events <- ev:
	default:
		// Lost: the subscriber resends its subscribe, and what it acked is
		// sent again (a duplicate) after the timeout.
		s.r.m.subEventsDropped.Inc()
	}
}

// run sends the subscriber's queue until ctx ends.
func (s *subscriber) run(ctx context.Context) {
	defer close(s.done)
	t := s.r.timing
	tokens := make(chan struct{}, t.window)
	batches := make(chan queue.Batch)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return
			}
			b, err := s.q.Read(ctx, t.batchBytes)
			if err != nil {
				<-tokens
				if ctx.Err() != nil || errors.Is(err, queue.ErrClosed) {
					return
				}
				s.log.Error("router: read subscriber queue; retrying", "err", err)
				select {
				case <-time.After(time.Second):
				case <-ctx.Done():
					return
				}
				continue
			}
			select {
			case batches <- b:
			case <-ctx.Done():
				s.q.Nack(b)
				return
			}
		}
	}()

	var (
		inflight     []*srun
		identity     []byte
		up           bool
		retry        = backoff.New(minSubBackoff, maxSubBackoff, nil)
		backoffUntil time.Time
	)
	tick := time.NewTicker(t.tick)
	defer tick.Stop()
	sendDue := func(now time.Time) {
		if !up || now.Before(backoffUntil) {
			return
		}
		for _, rn := range inflight {
			if rn.acked {
				continue
			}
			if rn.sent && now.Sub(rn.sentAt) > t.ackTimeout {
				rn.sent, rn.why = false, "timeout"
				backoffUntil = now.Add(retry.Next())
			}
			if rn.sent {
				continue
			}
			frames := make([][]byte, 0, 1+len(rn.frames))
			frames = append(frames, identity)
			s.r.storeOut.push(append(frames, rn.frames...))
			if rn.why == "" {
				s.sent.Inc()
			} else {
				s.resent.WithLabelValues(rn.why).Inc()
			}
			rn.sent, rn.sentAt = true, now
		}
	}
	resendAll := func(why string) {
		for _, rn := range inflight {
			if !rn.acked && rn.sent {
				rn.sent, rn.why = false, why
			}
		}
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case b := <-batches:
			sb := &sbatch{qb: b}
			for i := 0; i < len(b.Entries); {
				j := i + 1
				for j < len(b.Entries) && b.Entries[j].Seq == b.Entries[j-1].Seq+1 && j-i < forward.MaxEntries {
					j++
				}
				ents := make([][]byte, j-i)
				for k := range ents {
					ents[k] = b.Entries[i+k].Data
				}
				m := forward.Message{Type: forward.TypeBatch, Packed: storePacked, Sender: s.r.cfg.ID, First: b.Entries[i].Seq, Last: b.Entries[j-1].Seq, Entries: ents}
				frames, err := m.Frames()
				if err != nil {
					// Cannot happen (the router's ID is valid, runs are
					// consecutive); keep the batch rather than lose it.
					s.log.Error("router: encode store batch", "first", m.First, "last", m.Last, "err", err)
				}
				inflight = append(inflight, &srun{first: m.First, last: m.Last, frames: frames, b: sb})
				sb.left++
				i = j
			}
			sendDue(time.Now())
		case ev := <-s.events:
			now := time.Now()
			switch ev.kind {
			case evSubscribe:
				switch {
				case identity != nil && !bytes.Equal(identity, ev.id):
					s.log.Info("router: subscriber connected anew (new writer process or socket); resending what it has in flight", "in_flight", len(inflight))
					resendAll("reconnect")
					retry.Reset()
					backoffUntil = time.Time{}
				case !up && identity != nil:
					s.log.Info("router: subscriber is back; resending what it has in flight", "in_flight", len(inflight))
					resendAll("reconnect")
					retry.Reset()
					backoffUntil = time.Time{}
				case identity == nil:
					s.log.Info("router: subscriber connected", "peer", string(ev.id))
				}
				identity, up = ev.id, true
				s.connected.Set(1)
			case evAck:
				n := 0
				for _, rn := range inflight {
					if rn.acked || rn.first < ev.first || rn.last > ev.last {
						continue
					}
					rn.acked = true
					n++
					s.acked.Inc()
					if rn.b.left--; rn.b.left == 0 {
						s.q.Ack(rn.b.qb)
						<-tokens
					}
				}
				if n > 0 {
					retry.Reset()
					backoffUntil = time.Time{}
					kept := inflight[:0]
					for _, rn := range inflight {
						if !rn.acked {
							kept = append(kept, rn)
						}
					}
					clear(inflight[len(kept):])
					inflight = kept
				}
			case evBusy:
				s.busy.Inc()
				for _, rn := range inflight {
					if !rn.acked && rn.first >= ev.first && rn.last <= ev.last {
						rn.sent, rn.why = false, "busy"
					}
				}
				backoffUntil = now.Add(retry.Next())
			}
			sendDue(now)
		case now := <-tick.C:
			if up && now.Sub(time.Unix(0, s.lastHeard.Load())) > t.downAfter {
				up = false
				s.connected.Set(0)
				s.log.Warn("router: subscriber silent; holding its batches until it is back", "silent_for", now.Sub(time.Unix(0, s.lastHeard.Load())).Round(time.Millisecond), "in_flight", len(inflight))
			}
			sendDue(now)
		}
	}
	<-readerDone
	s.connected.Set(0)
	// What is in flight stays in the queue (the queue is closed next): it
	// is sent again after a restart.
}

// appendEntries appends entries to the subscriber's queue, as few appends
// as publishLimit allows (so that each fits in a record, and in the queue
// when it is empty). It returns how many entries were appended, in order,
// so that a retry after an error goes on from there.
func (s *subscriber) appendEntries(entries [][]byte) (int, error) {
	limit := s.r.publishLimit()
	done := 0
	for done < len(entries) {
		n, size := 0, 64
		for done+n < len(entries) && (n == 0 || size+len(entries[done+n])+10 <= limit) {
			size += len(entries[done+n]) + 10
			n++
		}
		if _, err := s.q.Append(context.Background(), entries[done:done+n]...); err != nil {
			return done, fmt.Errorf("append to subscriber %s: %w", s.name, err)
		}
		done += n
	}
	return done, nil
}
