package router

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
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
	// batchBytes is the entry bytes read from the log per batch, and the
	// most PublishBatch bytes one protocol batch (srun) carries unless it
	// is a single entry. A batch holds whole log records, and one record
	// can be larger (the group commit of a backlog arriving at once); sent
	// whole, it was one append at the writer, which refuses it as full for
	// ever when it exceeds the writer's whole queue bound (issue 20).
	batchBytes int
	// tick is how often timeouts and retention are checked.
	tick time.Duration
	// stuckAfter of its cursor full makes a sender log its state, again
	// every stuckEvery while it stays full (stuck.go).
	stuckAfter, stuckEvery time.Duration
}

func defaultStoreTiming() storeTiming {
	return storeTiming{
		downAfter:  3 * time.Second,
		ackTimeout: 5 * time.Second,
		window:     8,
		batchBytes: 256 << 10,
		tick:       100 * time.Millisecond,
		stuckAfter: 30 * time.Second,
		stuckEvery: time.Minute,
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

// subscriber is one durable subscriber at the router: its cursor in the
// router's log (the main queue) and the goroutine that sends what the
// cursor reads over the store lane. old is the subscriber's queue of a
// router from before the log (QueueDir/subs/NAME/), drained first and
// then deleted (migration; see doc.go).
type subscriber struct {
	name string
	dir  string
	cur  *queue.Cursor
	r    *Router
	log  *slog.Logger

	oldMu      sync.Mutex
	old        *queue.Queue // nil once drained (or when there was none)
	oldDrained atomic.Bool  // old has been read to its end

	events chan subEvent
	// lastHeard is the UnixNano of the last subscribe (or of registration).
	lastHeard atomic.Int64
	dropped   atomic.Bool
	full      bool // its cursor was full at the last check (fullLoop)
	cancel    context.CancelFunc
	done      chan struct{}

	sent, acked, busy prometheus.Counter
	resent            *prometheus.CounterVec
	connected         prometheus.Gauge
}

// source is what a subscriber's batches are read from: its cursor, or its
// queue from before the log.
type source interface {
	Read(ctx context.Context, maxBytes int) (queue.Batch, error)
	Ack(queue.Batch)
	Nack(queue.Batch)
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
	reason      string // of a busy answer
}

// srun is one protocol batch: a run of consecutive sequences of a queue
// batch (sequences jump across a restart of the router), of at most
// storeTiming.batchBytes unless it is one entry.
type srun struct {
	first, last uint64
	frames      [][]byte
	bytes       int // entry bytes
	b           *sbatch
	sent, acked bool
	sentAt      time.Time
	why         string // why the next send is a resend; "" for the first
}

type sbatch struct {
	qb   queue.Batch   // as read, to ack or give back to src
	ents []queue.Entry // what is sent: PublishBatches, seq set
	src  source
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
	batches := make(chan *sbatch)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		if !s.r.waitLanes(ctx) {
			return
		}
		for {
			select {
			case tokens <- struct{}{}:
			case <-ctx.Done():
				return
			}
			sb, err := s.readBatch(ctx, t.batchBytes)
			if err != nil {
				<-tokens
				if ctx.Err() != nil || errors.Is(err, queue.ErrClosed) {
					return
				}
				s.log.Error("router: read subscriber's batches; retrying", "err", err)
				select {
				case <-time.After(time.Second):
				case <-ctx.Done():
					return
				}
				continue
			}
			if len(sb.ents) == 0 {
				// Nothing in it could be built (counted, logged): passed.
				sb.src.Ack(sb.qb)
				<-tokens
				continue
			}
			select {
			case batches <- sb:
			case <-ctx.Done():
				sb.src.Nack(sb.qb)
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
		stuck        stuckReport
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
		case sb := <-batches:
			b := sb.ents
			for i := 0; i < len(b); {
				j, n := i+1, len(b[i].Data)
				for j < len(b) && b[j].Seq == b[j-1].Seq+1 && j-i < forward.MaxEntries && n+len(b[j].Data) <= t.batchBytes {
					n += len(b[j].Data)
					j++
				}
				ents := make([][]byte, j-i)
				for k := range ents {
					ents[k] = b[i+k].Data
				}
				m := forward.Message{Type: forward.TypeBatch, Packed: storePacked, Sender: s.r.cfg.ID, First: b[i].Seq, Last: b[j-1].Seq, Entries: ents}
				frames, err := m.Frames()
				if err != nil {
					// Cannot happen (the router's ID is valid, runs are
					// consecutive); keep the batch rather than lose it.
					s.log.Error("router: encode store batch", "first", m.First, "last", m.Last, "err", err)
				}
				inflight = append(inflight, &srun{first: m.First, last: m.Last, frames: frames, bytes: n, b: sb})
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
						rn.b.src.Ack(rn.b.qb)
						<-tokens
						s.oldAcked(rn.b.src)
					}
				}
				stuck.acked += n
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
				stuck.busy++
				stuck.lastBusy = ev.reason
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
			s.reportStuck(&stuck, now, subSenderState{inflight: inflight, held: len(tokens), window: cap(tokens), up: up, backoffUntil: backoffUntil})
		}
	}
	<-readerDone
	s.connected.Set(0)
	// What is in flight stays in the log (the cursor has not passed it; it
	// is closed next): it is sent again after a restart.
}
