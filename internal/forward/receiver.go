package forward

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/drover-telemetry/drover/queue"
)

// Receiver is the receiving side of a durable subscriber (a storage
// writer, the alerts engine): it takes a router's store batches,
// deduplicates them by (router, sequence), appends what is new to the
// subscriber's own queue and answers each batch: an ack once all of it is
// durable there, busy when it cannot be taken now (the router keeps it and
// resends). A router has several batches in flight; they enter the queue
// in the order they arrived, as they sit in the router's log, and still
// share group commits: a batch begins its first append (queue.Begin) only
// once the batch received before it from the same router has begun its
// last (a queue.Turn per batch, chained per router), and only then waits
// for its fsync. Receive never blocks: the appends run in goroutines of
// their own, at most ReceiverConfig.MaxAppends at once.
//
// What was appended is remembered per router (a SeqSet of
// ReceiverConfig.DedupIntervals intervals), and what is being appended
// too, so that a resend of a batch whose append is under way is not
// appended twice: the append under way answers for its own batch, and the
// resend's range is acked when the router sends it again after that.
type Receiver struct {
	cfg     ReceiverConfig
	mu      sync.Mutex
	routers map[string]*routerSeqs
	sem     chan struct{}
	wg      sync.WaitGroup
	ctx     context.Context // the appends' waits; cancelled by Abandon
	cancel  context.CancelFunc
}

// ReceiverConfig is what a Receiver needs of its subscriber. Queue,
// Entry, ChunkBytes and MaxAppends are required; the other functions may
// be nil.
type ReceiverConfig struct {
	// Name prefixes the reasons of busy answers ("storage-writer: ...").
	Name string
	// Queue returns the queue to append to.
	Queue func() *queue.Queue
	// Entry is the queue entry for a router's entry (a serialized
	// PublishBatch) of the batch from router.
	Entry func(entry []byte, router string) []byte
	// ChunkBytes is the most entry bytes appended at once to q: at most
	// what one of its records holds.
	ChunkBytes func(q *queue.Queue) int
	// MaxAppends bounds the batches being appended at once; beyond it a
	// batch is answered busy.
	MaxAppends int
	// DedupIntervals bounds the memory of appended sequences per router.
	DedupIntervals int
	// TooLarge takes entry seq of batch m, which alone is larger than a
	// queue record (err wraps queue.ErrTooLarge). It returns nil when it
	// disposed of it (counted and skipped, or kept elsewhere): the batch
	// goes on. Nil: the batch fails with err (busy).
	TooLarge func(m Message, seq uint64, entry []byte, err error) error
	// Appended counts entries appended to the queue.
	Appended func(n int)
	// Duplicates counts entries received that were appended before or
	// are being appended.
	Duplicates func(n int)
	// Busy is told of every busy answer: batch m could not be taken, for
	// err (ErrTooManyAppends when MaxAppends were under way); last is
	// what the failing append held, nil if none was tried.
	Busy func(m Message, err error, last [][]byte)
}

// ErrTooManyAppends: a batch arrived while ReceiverConfig.MaxAppends
// batches were being appended.
var ErrTooManyAppends = errors.New("too many appends in flight")

// routerSeqs is what a Receiver knows of one router's sequences.
type routerSeqs struct {
	done    *SeqSet    // appended to the queue
	pending []Interval // being appended
	last    *queue.Turn
}

// NewReceiver returns a receiver taking batches until Stop.
func NewReceiver(cfg ReceiverConfig) *Receiver {
	ctx, cancel := context.WithCancel(context.Background())
	return &Receiver{cfg: cfg, routers: map[string]*routerSeqs{}, sem: make(chan struct{}, cfg.MaxAppends), ctx: ctx, cancel: cancel}
}

// Stop waits for the appends under way (stop the links first, so that no
// batch arrives meanwhile), at most grace (0: as long as they take); their
// batches are answered if their links still are, or resent by the routers.
// Appends still running after grace are abandoned (Abandon) and waited
// for; Stop reports whether any was.
func (r *Receiver) Stop(grace time.Duration) (abandoned bool) {
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	var timeout <-chan time.Time
	if grace > 0 {
		t := time.NewTimer(grace)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-done:
		return false
	case <-timeout:
		r.Abandon()
		<-done
		return true
	}
}

// Abandon cancels the appends still waiting for the disk or for their
// turn: they answer nothing (the routers resend). For a stop that cannot
// wait longer.
func (r *Receiver) Abandon() { r.cancel() }

// Appended reports whether router's sequences first..last are all in the
// queue.
func (r *Receiver) Appended(router string, first, last uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.routers[router]
	return rs != nil && rs.done.Contains(first, last)
}

// Receive handles batch m from a router, answering through send: it drops
// what was appended before and starts an append of the rest. It never
// blocks.
func (r *Receiver) Receive(send func(Message), m Message) {
	n := len(m.Entries)
	r.mu.Lock()
	rs := r.routers[m.Sender]
	if rs == nil {
		rs = &routerSeqs{done: NewSeqSet(r.cfg.DedupIntervals)}
		r.routers[m.Sender] = rs
	}
	missing := rs.done.Missing(m.First, m.Last, nil)
	if len(missing) == 0 {
		r.mu.Unlock()
		r.count(r.cfg.Duplicates, n)
		send(Message{Type: TypeAck, First: m.First, Last: m.Last})
		return
	}
	var todo []Interval
	for _, iv := range missing {
		todo = Subtract(iv, rs.pending, todo)
	}
	if len(todo) == 0 {
		// Everything new is being appended by an earlier copy of these
		// entries, whose append answers for its own batch.
		r.mu.Unlock()
		r.count(r.cfg.Duplicates, n)
		return
	}
	select {
	case r.sem <- struct{}{}:
	default:
		r.mu.Unlock()
		r.busy(send, m, ErrTooManyAppends, nil)
		return
	}
	rs.pending = append(rs.pending, todo...)
	prev, mine := rs.last, queue.NewTurn()
	rs.last = mine
	r.wg.Add(1)
	r.mu.Unlock()
	r.count(r.cfg.Duplicates, n-int(TotalLen(todo)))
	go r.appendBatch(send, rs, m, todo, prev, mine)
}

// appendBatch appends the entries todo of batch m, once the router's batch
// before it (prev, nil for none) has its place in the queue, and acks the
// batch when all of it is durable. It marks mine placed once its own last
// append has its place (queue.Begin), or when it returns: the router's
// next batch then begins its appends and shares the commit.
func (r *Receiver) appendBatch(send func(Message), rs *routerSeqs, m Message, todo []Interval, prev, mine *queue.Turn) {
	defer r.wg.Done()
	defer func() { <-r.sem }()
	defer mine.Placed()
	q := r.cfg.Queue()
	chunk := r.cfg.ChunkBytes(q)
	var failed error
	var last [][]byte
	if prev.Wait(r.ctx) != nil {
		failed = fmt.Errorf("%w: stopping", queue.ErrClosed)
	}
	for i, iv := range todo {
		if failed != nil {
			break
		}
		for first := iv.First; first <= iv.Last; {
			entries, size := make([][]byte, 0, 16), 0
			end := first
			for seq := first; seq <= iv.Last; seq++ {
				e := r.cfg.Entry(m.Entries[seq-m.First], m.Sender)
				if len(entries) > 0 && size+len(e)+16 > chunk {
					break
				}
				entries = append(entries, e)
				size += len(e) + 16
				end = seq
			}
			pend, err := q.Begin(entries...)
			if i == len(todo)-1 && end == iv.Last {
				mine.Placed()
			}
			if err == nil {
				_, err = pend.Wait(r.ctx)
			}
			if err == nil {
				r.count(r.cfg.Appended, len(entries))
			} else if errors.Is(err, queue.ErrTooLarge) && len(entries) == 1 && r.cfg.TooLarge != nil {
				err = r.cfg.TooLarge(m, first, entries[0], err)
			}
			if err != nil {
				failed, last = err, entries
				break
			}
			r.mu.Lock()
			rs.done.Add(first, end)
			r.mu.Unlock()
			first = end + 1
		}
	}
	r.mu.Lock()
	for _, iv := range todo {
		rs.pending = RemoveInterval(rs.pending, iv)
	}
	complete := rs.done.Contains(m.First, m.Last)
	r.mu.Unlock()
	switch {
	case failed != nil:
		r.busy(send, m, failed, last)
	case complete:
		send(Message{Type: TypeAck, First: m.First, Last: m.Last})
	}
}

// busy answers batch m busy for err.
func (r *Receiver) busy(send func(Message), m Message, err error, last [][]byte) {
	if r.cfg.Busy != nil {
		r.cfg.Busy(m, err, last)
	}
	send(Message{Type: TypeBusy, First: m.First, Last: m.Last, Reason: r.cfg.Name + ": " + err.Error()})
}

// count adds n to counter, if any.
func (r *Receiver) count(counter func(int), n int) {
	if counter != nil && n > 0 {
		counter(n)
	}
}
