package forward

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/daemon"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/queue"
)

// Defaults of DrainerConfig.
const (
	DefaultMaxBatchBytes = 256 << 10
	DefaultMaxInflight   = 16
	DefaultAckTimeout    = 5 * time.Second
	DefaultHeartbeat     = time.Second
	DefaultDownAfter     = 3 * time.Second
	DefaultLinger        = 10 * time.Millisecond
)

const (
	// dialTimeout bounds one TCP connect (the net.Dialer default is none).
	dialTimeout = 2 * time.Second
	// Backoff after a "busy" answer or an ack timeout, per router, doubled
	// each time.
	minBusyBackoff = 50 * time.Millisecond
	maxBusyBackoff = 5 * time.Second
	// ackedIntervals bounds the drainer's memory of acked ranges.
	ackedIntervals = 4096
	// settleGrace bounds how long a stopping drainer waits for the acks of
	// what it has in flight.
	settleGrace = time.Second
)

// sendTimeout bounds one zmq4 Send. It must be short: when a connection
// dies under a write, zmq4 reconnects from inside that write while the
// socket's writer lock is held, and the new connection is added only once
// the Send has timed out. A timed-out write goes on in the background; the
// cluster link's connection writes each message whole, under a lock, so a
// later message cannot corrupt it.
func sendTimeout(heartbeat time.Duration) time.Duration {
	return min(max(2*heartbeat, 250*time.Millisecond), 2*time.Second)
}

// dialRetry is how long zmq4 waits between two connection attempts.
func dialRetry(heartbeat time.Duration) time.Duration {
	return min(max(heartbeat/4, 10*time.Millisecond), 250*time.Millisecond)
}

// DrainerConfig configures a Drainer. Zero durations and sizes mean their
// defaults.
type DrainerConfig struct {
	// Sender is the frontend's stable, unique name (daemon.ValidateID):
	// routers recognise resent entries by (Sender, queue sequence).
	Sender string
	// Routers are the ZeroMQ endpoints of every router; the drainer
	// connects one DEALER to each. A dns+tcp://name:port entry stands for
	// every address the name resolves to, looked up again every
	// Resolve.Interval: routers that appear are connected to and those that
	// disappear are let go, while the drainer runs (internal/endpoints).
	Routers []string
	// Resolve says how dns+tcp:// entries of Routers are looked up; zero
	// means endpoints.DefaultConfig.
	Resolve endpoints.Config
	// MaxBatchBytes is the entry bytes read from the queue for one batch
	// (a single queue record larger than that is sent whole). Default 256 KiB.
	MaxBatchBytes int
	// MaxInflight is how many queue batches may be read and not yet acked.
	// Default 16.
	MaxInflight int
	// AckTimeout is how long a batch waits for its ack before it is sent
	// again. Default 5 s.
	AckTimeout time.Duration
	// Heartbeat is the interval of pings to each router. Default 1 s.
	Heartbeat time.Duration
	// DownAfter is how long without a pong makes a router count as down.
	// Default 3 s; at least two heartbeats.
	DownAfter time.Duration
	// Linger is how long the drainer waits, after reading a batch smaller
	// than half of MaxBatchBytes, before it reads the queue again. Under
	// light load it turns one batch per frontend group commit into one per
	// Linger, so each router fsyncs less often and spends less CPU per
	// reading; under heavy load batches are full and nothing waits. It adds
	// at most Linger to a reading's way to the router, never to the device's
	// ack. Default 10 ms (docs/performance.md, "The drainer's linger");
	// negative means none.
	Linger time.Duration
	// Links secures the connections to the routers: a cluster key (mutual
	// TLS 1.3) or insecure (plain ZMTP); see internal/clusterlink.
	Links clusterlink.Config
}

func (c DrainerConfig) withDefaults() DrainerConfig {
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = DefaultAckTimeout
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.DownAfter == 0 {
		c.DownAfter = DefaultDownAfter
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.Resolve == (endpoints.Config{}) {
		c.Resolve = endpoints.DefaultConfig()
	}
	return c
}

// Validate reports every problem of the configuration (after defaults) at
// once.
func (c DrainerConfig) Validate() error {
	c = c.withDefaults()
	var errs []error
	if err := daemon.ValidateID(c.Sender); err != nil {
		errs = append(errs, fmt.Errorf("sender: %w", err))
	}
	if err := daemon.ValidateEndpoints(c.Routers); err != nil {
		errs = append(errs, fmt.Errorf("routers: %w", err))
	}
	if err := c.Links.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := c.Resolve.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.MaxBatchBytes < 1 {
		errs = append(errs, fmt.Errorf("max batch bytes %d: want at least 1", c.MaxBatchBytes))
	}
	if c.MaxInflight < 1 {
		errs = append(errs, fmt.Errorf("max inflight %d: want at least 1", c.MaxInflight))
	}
	if c.AckTimeout <= 0 || c.Heartbeat <= 0 || c.DownAfter <= 0 {
		errs = append(errs, fmt.Errorf("ack timeout %s, heartbeat %s, down after %s: want positive durations", c.AckTimeout, c.Heartbeat, c.DownAfter))
	} else if c.DownAfter < 2*c.Heartbeat {
		errs = append(errs, fmt.Errorf("down after %s: want at least two heartbeats (%s)", c.DownAfter, 2*c.Heartbeat))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("drainer config: %w", err)
	}
	return nil
}

// Drainer sends a frontend's queue to the routers and removes from the queue
// only what a router has acknowledged. See doc.go for the protocol and the
// rules it follows.
type Drainer struct {
	cfg      DrainerConfig
	q        *queue.Queue
	log      *slog.Logger
	m        *metrics
	identity string
	sec      *clusterlink.Security
	watch    *endpoints.Watcher
	// links are the routers of the current endpoint list, in the order
	// this frontend prefers them (see choose); owned by the loop.
	links    []*link
	stopping sync.WaitGroup // links removed from the list, closing
	total    atomic.Int32
	up       atomic.Int32
	started  atomic.Bool

	events  chan event
	batches chan queue.Batch
	readErr chan error
	tokens  chan struct{} // one per queue batch that may be held

	// Owned by the loop.
	waiting  []*fbatch
	inflight map[*fbatch]struct{}
	byFirst  map[uint64]*run // runs in flight, by first sequence
	acked    *SeqSet         // ranges some router acked, late acks included
}

// fbatch is one queue batch on its way: its runs of consecutive sequences,
// and where it was sent.
type fbatch struct {
	qb       queue.Batch
	runs     []*run
	open     int // runs not yet acked
	link     *link
	sentAt   time.Time
	deadline time.Time
}

// run is a part of a queue batch with consecutive sequences, sent as one
// protocol batch.
type run struct {
	b           *fbatch
	first, last uint64
	entries     [][]byte
	bytes       int
	acked       bool
}

type eventKind uint8

const (
	evMessage eventKind = iota
	evSendFailed
	evEndpoints
)

type event struct {
	kind eventKind
	link *link
	msg  Message
	err  error
	eps  []string // evEndpoints: the new endpoint list
}

// NewDrainer checks cfg and returns a drainer of q. It opens nothing:
// [Drainer.Run] does. logger nil discards; reg nil keeps the metrics
// unregistered.
func NewDrainer(cfg DrainerConfig, q *queue.Queue, logger *slog.Logger, reg prometheus.Registerer) (*Drainer, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if q == nil {
		return nil, errors.New("drainer: nil queue")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.Routers = append([]string(nil), cfg.Routers...)
	d := &Drainer{
		cfg:      cfg,
		q:        q,
		log:      logger.With("sender", cfg.Sender),
		m:        newMetrics(reg),
		identity: SocketIdentity(cfg.Sender),
		events:   make(chan event, 256),
		batches:  make(chan queue.Batch),
		readErr:  make(chan error, 1),
		tokens:   make(chan struct{}, cfg.MaxInflight),
		inflight: make(map[*fbatch]struct{}),
		byFirst:  make(map[uint64]*run),
		acked:    NewSeqSet(ackedIntervals),
	}
	watch, err := endpoints.NewWatcher(cfg.Routers, cfg.Resolve, "frontend", logger, reg)
	if err != nil {
		return nil, fmt.Errorf("drainer: routers: %w", err)
	}
	d.watch = watch
	sec, err := clusterlink.New(cfg.Links, clusterlink.RoleFrontend, cfg.Sender, logger, reg)
	if err != nil {
		return nil, fmt.Errorf("drainer: %w", err)
	}
	d.sec = sec
	for _, ep := range endpoints.Static(cfg.Routers) {
		if _, err := sec.Endpoint(clusterlink.LinkIngest, ep); err != nil {
			sec.Close()
			return nil, fmt.Errorf("drainer: routers: %w", err)
		}
	}
	// The static endpoints now; dns+tcp:// names once Run has looked them up.
	if err := d.setEndpoints(watch.Current(), false); err != nil {
		sec.Close()
		return nil, fmt.Errorf("drainer: %w", err)
	}
	return d, nil
}

// Routers returns how many routers answer heartbeats, and how many there
// are in the endpoint list.
func (d *Drainer) Routers() (up, total int) {
	return int(d.up.Load()), int(d.total.Load())
}

// Run drains the queue to the routers until ctx ends. It then sends
// nothing more, waits up to a second (at most AckTimeout) for the acks of
// what is in flight, gives back to the queue what stays unacked (read again
// by the next Run, resent, recognised by the routers), closes its sockets
// and returns nil. It does not close the queue: stop the drainer first. It
// returns an error when the queue fails (a read error, or the queue closed
// under it). Run may be called once.
func (d *Drainer) Run(ctx context.Context) error {
	if !d.started.CompareAndSwap(false, true) {
		return errors.New("drainer: Run called twice")
	}
	for range d.cfg.MaxInflight {
		d.tokens <- struct{}{}
	}
	for _, l := range d.links {
		l.start()
	}
	readCtx, stopRead := context.WithCancel(ctx)
	var readWG sync.WaitGroup
	readWG.Add(2)
	go func() {
		defer readWG.Done()
		d.readLoop(readCtx)
	}()
	go func() {
		defer readWG.Done()
		d.watch.Run(readCtx, func(eps []string) { d.post(readCtx, event{kind: evEndpoints, eps: eps}) })
	}()
	preferred := ""
	if len(d.links) > 0 {
		preferred = d.links[0].endpoint
	}
	d.log.Info("forward: draining to routers", "routers", len(d.links), "preferred", preferred,
		"endpoints", strings.Join(d.cfg.Routers, ","))

	err := d.loop(ctx)

	stopRead()
	readWG.Wait()
	held := len(d.waiting)
	for _, b := range d.waiting {
		d.q.Nack(b.qb)
	}
	d.waiting = nil
	d.settle(min(d.cfg.AckTimeout, settleGrace))
	for b := range d.inflight {
		d.q.Nack(b.qb)
		held++
	}
	d.waiting, d.inflight = nil, map[*fbatch]struct{}{}
	d.m.inflight.Set(0)
	d.m.waiting.Set(0)
	var wg sync.WaitGroup
	for _, l := range d.links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.stop()
		}()
	}
	wg.Wait()
	d.stopping.Wait()
	d.sec.Close()
	d.up.Store(0)
	d.m.routersUp.Set(0)
	d.log.Info("forward: drainer stopped", "batches_given_back", held)
	return err
}

// settle waits up to grace for the acks of the batches in flight, sending
// nothing new, so that a restart resends less.
func (d *Drainer) settle(grace time.Duration) {
	if len(d.inflight) == 0 {
		return
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	for len(d.inflight) > 0 {
		select {
		case <-t.C:
			return
		case ev := <-d.events:
			if ev.kind == evMessage && ev.msg.Type == TypeAck {
				d.onAck(ev.link, ev.msg, time.Now())
			}
		}
	}
}

// readLoop reads queue batches while the loop has room for them.
func (d *Drainer) readLoop(ctx context.Context) {
	var linger *time.Timer
	for {
		select {
		case <-d.tokens:
		case <-ctx.Done():
			return
		}
		b, err := d.q.Read(ctx, d.cfg.MaxBatchBytes)
		if err != nil {
			if ctx.Err() == nil {
				d.readErr <- err
			}
			return
		}
		select {
		case d.batches <- b:
		case <-ctx.Done():
			d.q.Nack(b)
			return
		}
		if d.cfg.Linger > 0 && 2*b.Bytes < d.cfg.MaxBatchBytes {
			if linger == nil {
				linger = time.NewTimer(d.cfg.Linger)
			} else {
				linger.Reset(d.cfg.Linger)
			}
			select {
			case <-linger.C:
			case <-ctx.Done():
				return
			}
		}
	}
}

// post hands an event to the loop, unless ctx ends first.
func (d *Drainer) post(ctx context.Context, ev event) bool {
	select {
	case d.events <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

func (d *Drainer) badMessage(l *link, m Message, err error) {
	reason := "malformed"
	switch {
	case errors.Is(err, ErrVersion):
		reason = "version"
	case errors.Is(err, ErrUnknownType):
		reason = "type"
	}
	d.m.badMessages.WithLabelValues(reason).Inc()
	l.log.Warn("forward: message from router dropped", "type", m.Type, "err", err)
}

// tick is how often the loop checks heartbeats, ack deadlines and backoffs.
func (d *Drainer) tick() time.Duration {
	t := min(d.cfg.Heartbeat, d.cfg.AckTimeout, d.cfg.DownAfter) / 4
	return min(max(t, 5*time.Millisecond), 250*time.Millisecond)
}

// loop owns the drainer's state: every batch and router state change goes
// through it, so none of it needs a lock.
func (d *Drainer) loop(ctx context.Context) error {
	t := time.NewTicker(d.tick())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-d.readErr:
			d.log.Error("forward: queue read failed; drainer stops", "err", err)
			return fmt.Errorf("drainer: read queue: %w", err)
		case qb := <-d.batches:
			d.onBatch(qb, time.Now())
		case ev := <-d.events:
			d.onEvent(ev, time.Now())
		case now := <-t.C:
			d.onTick(now)
		}
	}
}

func (d *Drainer) onBatch(qb queue.Batch, now time.Time) {
	b := &fbatch{qb: qb}
	var r *run
	for _, e := range qb.Entries {
		if r == nil || e.Seq != r.last+1 || len(r.entries) == MaxEntries {
			r = &run{b: b, first: e.Seq}
			b.runs = append(b.runs, r)
		}
		r.last = e.Seq
		r.entries = append(r.entries, e.Data)
		r.bytes += len(e.Data)
	}
	d.waiting = append(d.waiting, b)
	d.trySend(now)
}

// choose returns the router to send to: the preferred one (see
// preference) if it is up and not busy, else the next one that is.
func (d *Drainer) choose(now time.Time) *link {
	for _, l := range d.links {
		if l.up && !now.Before(l.busyUntil) {
			return l
		}
	}
	return nil
}

// trySend sends waiting batches, oldest first, while a router is available.
func (d *Drainer) trySend(now time.Time) {
	for len(d.waiting) > 0 {
		b := d.waiting[0]
		b.open = 0
		for _, r := range b.runs {
			if !r.acked && d.acked.Contains(r.first, r.last) {
				r.acked = true // a late ack covered it already
			}
			if !r.acked {
				b.open++
			}
		}
		if b.open == 0 {
			d.waiting = d.waiting[1:]
			d.complete(b)
			continue
		}
		l := d.choose(now)
		if l == nil {
			break
		}
		d.waiting = d.waiting[1:]
		for _, r := range b.runs {
			if r.acked {
				continue
			}
			d.byFirst[r.first] = r
			l.enqueue(outMsg{frames: packedBatchFrames(d.cfg.Sender, r.first, r.last, r.entries), first: r.first, last: r.last})
			d.m.sentBatches.Inc()
			d.m.sentEntries.Add(float64(len(r.entries)))
			d.m.sentBytes.Add(float64(r.bytes))
		}
		b.link, b.sentAt, b.deadline = l, now, now.Add(d.cfg.AckTimeout)
		l.inflight++
		d.inflight[b] = struct{}{}
	}
	d.m.waiting.Set(float64(len(d.waiting)))
	d.m.inflight.Set(float64(len(d.inflight)))
}

// complete removes a fully acked batch from the queue.
func (d *Drainer) complete(b *fbatch) {
	for _, r := range b.runs {
		if !d.acked.Contains(r.first, r.last) {
			// Cannot happen: a run is acked only by a router ack that
			// covers it. Said loudly, with what would be lost, because the
			// entries are removed all the same (the alternative is a queue
			// that never drains).
			d.m.badMessages.WithLabelValues("invariant").Inc()
			d.log.Error("forward: BUG: removing a queue batch that no router ack covers", "first", r.first, "last", r.last,
				"runs", len(b.runs), "link", b.link != nil, "acked_intervals", d.acked.Len())
		}
	}
	d.q.Ack(b.qb)
	d.m.queueReleased.Add(float64(len(b.qb.Entries)))
	d.tokens <- struct{}{}
}

// giveBack returns an unacked batch to the queue, to be read and sent again.
func (d *Drainer) giveBack(b *fbatch, reason string) {
	delete(d.inflight, b)
	b.link.inflight--
	for _, r := range b.runs {
		if !r.acked && d.byFirst[r.first] == r {
			delete(d.byFirst, r.first)
		}
	}
	d.q.Nack(b.qb)
	d.m.resent.WithLabelValues(reason).Inc()
	d.m.inflight.Set(float64(len(d.inflight)))
	d.tokens <- struct{}{}
}

func (d *Drainer) onEvent(ev event, now time.Time) {
	l := ev.link
	switch {
	case ev.kind == evEndpoints:
		_ = d.setEndpoints(ev.eps, true) // with start set, it logs and skips what it cannot use
	case l.removed && ev.msg.Type != TypeAck:
		// A link let go: only its acks still matter (the entries are
		// durable at that router).
	case ev.kind == evSendFailed:
		if r := d.byFirst[ev.msg.First]; r != nil && r.b.link == l {
			l.log.Warn("forward: send to router failed; sending elsewhere", "first", ev.msg.First, "last", ev.msg.Last, "err", ev.err)
			d.giveBack(r.b, reasonRouterDown)
		}
		d.setDown(l, "send failed")
	case ev.msg.Type == TypePong:
		d.onPong(l, ev.msg, now)
	case ev.msg.Type == TypeAck:
		d.onAck(l, ev.msg, now)
	case ev.msg.Type == TypeBusy, ev.msg.Type == TypeReject:
		d.onRefused(l, ev.msg, now)
	}
	d.trySend(now)
}
