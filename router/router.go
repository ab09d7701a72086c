package router

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zeromq/zmq4"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/registry"
	"github.com/drover-telemetry/drover/internal/zmqsock"
	"github.com/drover-telemetry/drover/queue"
)

const (
	// recordBytes is the router queue's largest record: a default-sized
	// frontend batch (256 KiB) is one append, one record. Larger batches
	// are split into several entries (see appendNew).
	recordBytes = 1 << 20
	// replyTimeout bounds one reply on the ROUTER socket. zmq4 holds the
	// socket's lock while it writes, so a stalled frontend delays every
	// reply by up to this much; and it lets a timed-out write go on in the
	// background, so it must be well beyond any healthy write.
	replyTimeout = 5 * time.Second
	// journalSync is how often the dedup journal is fsynced.
	journalSync = time.Second
)

// Router is one router process's worth of sockets, queue and publishers.
type Router struct {
	cfg    Config
	logger *slog.Logger
	reg    prometheus.Registerer
	m      *metrics
	sec    *clusterlink.Security

	started atomic.Bool
	state   atomic.Int32
	addr    atomic.Pointer[string]

	// admit orders taking a batch (ingests.Add) before the shutdown's
	// ingests.Wait: once stopping is set, no ingest starts.
	admit    sync.Mutex
	stopping bool
	// order holds, per sender, the turn of its batch received last (under
	// admit): each batch takes its place in the main queue after the one
	// received before it from the same sender (see ingest).
	order map[string]*queue.Turn

	// Set by Run before the socket is bound.
	q           *queue.Queue
	dd          *dedup
	sock        zmq4.Socket
	incarnation uint64
	slots       chan struct{}
	ingests     sync.WaitGroup
	replies     replyQueue
	busyLogged  atomic.Bool
	unknownSubs sync.Map // names refused by FixedSubscribers, logged once each

	// The lanes, set by Run.
	registry  *registry.Store
	live      *live
	liveAddr  atomic.Pointer[string]
	storeSock zmq4.Socket
	storeAddr atomic.Pointer[string]
	storeOut  replyQueue
	timing    storeTiming
	// subsMu guards subs, peers and subsClosed.
	subsMu     sync.Mutex
	subs       map[string]*subscriber
	peers      map[string]*subscriber // ZeroMQ identity → subscriber
	subsClosed bool

	// abrupt (tests only) makes Run close its socket first when stopping,
	// so that the acks of appends under way are lost: what a crash between
	// fsync and ack leaves.
	abrupt bool
	// queueSync (benchmarks only) is the queue's sync policy.
	queueSync queue.SyncPolicy
	// beforeAppend (tests only) is a failpoint before each main-queue
	// append: a test holds it to stand for a slow disk.
	beforeAppend func()

	// The live lane's publishing (livepub.go). liveMu orders liveSeq with
	// the offers and with closing; liveOpen is set once the registry is in
	// force, cleared for good (liveStopped) when Run stops.
	liveMu      sync.Mutex
	liveSeq     uint64
	liveOpen    atomic.Bool
	liveStopped bool
	built       *builtCache
	// lanesReady is closed once the lanes are open (the registry in
	// force): subscribers' senders wait for it.
	lanesReady chan struct{}
	// mainRefusing: the main queue's last append was refused (full, disk
	// failing). Meanwhile a batch is offered live only once stored, so
	// that the frontends' resends do not reach the live lane again each
	// time.
	mainRefusing atomic.Bool
}

const (
	stateNew int32 = iota
	stateStarting
	stateReady
	stateStopping
	stateStopped
)

// New checks cfg and returns a router that logs to logger and registers its
// metrics with reg. A nil logger discards; a nil reg keeps the metrics
// unregistered. New opens nothing: [Router.Run] does.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Router, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	logger = logger.With("component", "router", "router", cfg.ID)
	sec, err := clusterlink.New(cfg.Links, clusterlink.RoleRouter, cfg.ID, logger, reg)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	return &Router{
		cfg:        cfg,
		logger:     logger,
		reg:        reg,
		sec:        sec,
		m:          newMetrics(reg),
		timing:     defaultStoreTiming(),
		subs:       map[string]*subscriber{},
		peers:      map[string]*subscriber{},
		built:      newBuiltCache(builtCacheBytes),
		lanesReady: make(chan struct{}),
	}, nil
}

// Ready reports whether the router accepts and acks batches: nil once its
// queues are open and its three sockets (frontends, live lane, store lane)
// bound, an error saying why not otherwise. It
// is cheap and never blocks, for /readyz.
func (r *Router) Ready() error {
	switch r.state.Load() {
	case stateReady:
		return nil
	case stateNew:
		return errors.New("router: not started")
	case stateStarting:
		return errors.New("router: starting (opening its queue)")
	default:
		return errors.New("router: stopping")
	}
}

// Addr returns the endpoint the router's socket is bound to, with the port
// the system chose when Listen asked for port 0, or "" before it is bound.
func (r *Router) Addr() string {
	if p := r.addr.Load(); p != nil {
		return *p
	}
	return ""
}

// LiveAddr returns the endpoint the live lane is bound to (with the port
// the system chose for port 0), or "" before it is bound.
func (r *Router) LiveAddr() string {
	if p := r.liveAddr.Load(); p != nil {
		return *p
	}
	return ""
}

// StoreAddr returns the endpoint the store lane is bound to (with the port
// the system chose for port 0), or "" before it is bound.
func (r *Router) StoreAddr() string {
	if p := r.storeAddr.Load(); p != nil {
		return *p
	}
	return ""
}

// Run receives, deduplicates, stores and acks batches until ctx ends. It then
// stops taking batches (answering busy), waits for the appends under way and
// sends their acks, closes its socket, writes the dedup journal, closes the
// queue, and returns nil. It returns an error when it cannot start. Run may
// be called once.
func (r *Router) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("router: Run called twice")
	}
	r.state.Store(stateStarting)
	defer r.state.Store(stateStopped)
	defer r.sec.Close()

	q, err := queue.Open(r.cfg.QueueDir, queue.Options{
		Name: "router", MaxBytes: r.cfg.QueueMaxBytes, MaxRecordBytes: recordBytes, Sync: r.queueSync,
	}, r.logger, r.reg)
	if err != nil {
		return fmt.Errorf("router: open queue: %w", err)
	}
	r.q = q
	dd, err := r.openDedup(ctx)
	if err != nil {
		return errors.Join(err, r.closeQueue())
	}
	r.dd = dd
	var inc [8]byte
	_, _ = rand.Read(inc[:])
	r.incarnation = binary.LittleEndian.Uint64(inc[:]) | 1
	r.slots = make(chan struct{}, r.cfg.MaxPendingBatches)
	r.replies.init()

	sockCtx, closeSock := context.WithCancel(context.Background())
	defer closeSock()
	regCtx, stopReg := context.WithCancel(context.Background())
	defer stopReg()
	var regDone chan struct{}
	switch {
	case r.cfg.RegistryStore != nil:
		r.registry = r.cfg.RegistryStore
	case r.cfg.Follow.Enabled() || r.cfg.Registry != "":
		var st *registry.Store
		var err error
		if r.cfg.Follow.Enabled() {
			r.logger.Info("router: following the device registry from the control plane", "api", r.cfg.Follow.API.URL)
			st, err = registry.NewFollower(r.cfg.followConfig(), r.logger, r.reg)
		} else {
			st, err = registry.NewStore(r.cfg.Registry, r.logger, r.reg)
		}
		if err != nil {
			return errors.Join(fmt.Errorf("router: registry: %w", err), r.dd.close(), r.closeQueue())
		}
		r.registry = st
		regDone = make(chan struct{})
		go func() { defer close(regDone); _ = st.Run(regCtx) }()
	}
	defer func() {
		stopReg()
		if regDone != nil {
			<-regDone
		}
	}()
	if err := r.openSubscribers(); err != nil {
		return errors.Join(err, r.closeSubscribers(), r.dd.close(), r.closeQueue())
	}
	r.storeOut.init()
	storeAddr, err := r.openStoreLane(sockCtx)
	if err != nil {
		return errors.Join(err, r.closeSubscribers(), r.dd.close(), r.closeQueue())
	}
	r.storeAddr.Store(&storeAddr)
	lv, liveAddr, err := openLive(r.sec, r.cfg.LivePub, r.cfg.ID, r.cfg.LiveBuffer, r.cfg.LiveBufferBytes, r.m, r.logger)
	if err != nil {
		_ = zmqsock.Close(r.storeSock)
		return errors.Join(err, r.closeSubscribers(), r.dd.close(), r.closeQueue())
	}
	r.live = lv
	r.liveAddr.Store(&liveAddr)
	r.sock = zmq4.NewRouter(sockCtx,
		zmq4.WithID(zmq4.SocketIdentity(r.cfg.ID)),
		zmq4.WithTimeout(replyTimeout),
		zmq4.WithLogger(slog.NewLogLogger(r.logger.Handler(), slog.LevelWarn)),
	)
	ingest, err := r.sec.Endpoint(clusterlink.LinkIngest, r.cfg.Listen)
	if err == nil {
		err = r.sock.Listen(ingest)
	}
	if err != nil {
		_ = zmqsock.Close(r.sock)
		_ = zmqsock.Close(r.storeSock)
		lv.close()
		return errors.Join(fmt.Errorf("router: listen on %s: %w", r.cfg.Listen, err), r.closeSubscribers(), r.dd.close(), r.closeQueue())
	}
	addr := r.cfg.Listen
	if a := r.sock.Addr(); a != nil && strings.HasPrefix(addr, "tcp://") {
		addr = "tcp://" + a.String()
	}
	r.addr.Store(&addr)

	var wg sync.WaitGroup
	wg.Add(3)
	recvDone := make(chan struct{})
	go func() { defer wg.Done(); defer close(recvDone); r.recvLoop(sockCtx) }()
	writerDone := make(chan struct{})
	go func() { defer wg.Done(); defer close(writerDone); r.writeLoop() }()
	stopSync := make(chan struct{})
	go func() { defer wg.Done(); r.syncLoop(stopSync) }()
	var lanes sync.WaitGroup
	storeRecvDone := make(chan struct{})
	lanes.Go(func() { defer close(storeRecvDone); r.storeRecvLoop(sockCtx) })
	storeWriterDone := make(chan struct{})
	lanes.Go(func() { defer close(storeWriterDone); r.storeWriteLoop() })
	fanCtx, stopFanout := context.WithCancel(context.Background())
	defer stopFanout()
	fanoutDone := make(chan struct{})
	lanes.Go(func() { defer close(fanoutDone); r.lanesLoop(fanCtx) })
	lanes.Go(func() { r.retentionLoop(fanCtx) })

	r.state.Store(stateReady)
	depth, bytes := q.Depth()
	r.logger.Info("router: listening", "endpoint", addr, "live", liveAddr, "store", storeAddr,
		"subscribers", len(r.snapshotSubs()), "enrichment", r.registry != nil, "queue_entries", depth, "queue_bytes", bytes)

	<-ctx.Done()
	start := time.Now()
	r.state.Store(stateStopping)
	// The lanes first: the fan-out finishes the appends under way (the main
	// entries it took are acked, or given back), then the live lane
	// publishes what is queued, then each subscriber's sender stops (what
	// it has in flight is sent again after the restart).
	stopFanout()
	<-fanoutDone
	r.closeLiveLane()
	subsErr := r.closeSubscribers()
	r.storeOut.close()
	<-storeWriterDone
	if r.abrupt {
		closeSock()
		_ = zmqsock.Close(r.sock)
	}
	// Stop taking batches but keep the socket open until the appends under
	// way are durable and acked: their senders need not resend them.
	r.admit.Lock()
	r.stopping = true
	r.admit.Unlock()
	r.ingests.Wait()
	r.replies.close()
	<-writerDone
	closeSock()
	if err := zmqsock.Close(r.sock); err != nil {
		r.logger.Debug("router: close socket", "err", err)
	}
	<-recvDone
	if err := zmqsock.Close(r.storeSock); err != nil {
		r.logger.Debug("router: close store socket", "err", err)
	}
	<-storeRecvDone
	lanes.Wait()
	close(stopSync)
	wg.Wait()
	errs := []error{subsErr, r.dd.close(), r.closeQueue()}
	r.logger.Info("router: stopped", "took", time.Since(start))
	return errors.Join(errs...)
}

// ingest appends the new part of one batch to the main queue and answers it.
// Batches of one sender arrive several at a time (a frontend has several in
// flight); each is checked, planned against what is stored or being
// stored, and offered live on its own, then takes its place in the main
// queue only once the batch received before it from the same sender (prev,
// nil for none) has: the log holds a sender's batches, and so a device's
// readings, in the order they were sent, and the appends still share group
// commits (queue.Begin). A batch refused or given up on lets the next go.
func (r *Router) ingest(id []byte, m forward.Message, prev, mine *queue.Turn) {
	defer func() {
		r.endTurn(m.Sender, mine)
		<-r.slots
		r.m.pending.Dec()
		r.ingests.Done()
	}()
	records, size := 0, 0
	counts := make([]int, len(m.Entries)) // records per entry: buildEntry sizes by them
	for i, e := range m.Entries {
		n, err := forward.CountRecords(e)
		if err != nil {
			r.reject(id, m, "malformed", fmt.Errorf("entry %d (seq %d): %w", i, m.First+uint64(i), err))
			return
		}
		if len(e)+entryOverhead > recordBytes {
			r.reject(id, m, "too_large", fmt.Errorf("entry %d (seq %d) of %d bytes: larger than a router record (%d)", i, m.First+uint64(i), len(e), recordBytes))
			return
		}
		records += n
		counts[i] = n
		size += len(e)
	}
	r.m.records.Add(float64(records))
	r.m.batchRecords.Observe(float64(records))
	if size > r.cfg.MaxBatchBytes {
		r.reject(id, m, "too_large", fmt.Errorf("batch of %d bytes, max %d", size, r.cfg.MaxBatchBytes))
		return
	}

	p := r.dd.plan(m.Sender, m.First, m.Last)
	r.m.duplicates.Add(float64(p.dups))
	var err error
	if p.op != nil {
		err = r.appendNew(m, counts, p.op.missing, prev, mine)
		r.dd.finish(p.op, err)
	}
	mine.Placed()
	for _, dep := range p.deps {
		<-dep.done
		if err == nil && dep.err != nil {
			err = dep.err
		}
	}
	switch {
	case err == nil:
		r.busyLogged.Store(false)
		if !r.dd.holds(m.Sender, m.First, m.Last) {
			// Cannot happen: every part is stored by this batch or one it
			// waited for. Said loudly: the sender removes what is acked.
			r.m.badMessages.WithLabelValues("invariant").Inc()
			r.logger.Error("router: BUG: acking a batch not all stored", "sender", m.Sender, "first", m.First, "last", m.Last,
				"own", p.op != nil, "deps", len(p.deps), "dups", p.dups)
		}
		r.reply(id, forward.Message{Type: forward.TypeAck, First: m.First, Last: m.Last})
	case errors.Is(err, queue.ErrFull):
		r.refuse(id, m, "queue_full", err)
	case errors.Is(err, queue.ErrClosed):
		r.refuse(id, m, "stopping", err)
	case queue.Retryable(err):
		r.refuse(id, m, "storage", err)
	default:
		// Not back-pressure, yet not the sender's fault either: it keeps
		// the batch and resends; say so once per batch.
		r.logger.Error("router: store batch", "sender", m.Sender, "first", m.First, "last", m.Last, "err", err)
		r.refuse(id, m, "storage", err)
	}
}

// entryOverhead is what a router queue entry adds to the frontend entries
// it holds: the Batch trailer (sender, seq, last_seq) and the queue's
// framing of the entry and its record.
const entryOverhead = 2 + 253 + 2*11 + 10 + 24

// appendNew appends the sequences missing of batch m to the queue: one
// entry per interval (so that seq..last_seq is exact), an interval split
// further where it would not fit in a record, and as few appends as the
// record size allows (usually one). Each append that succeeds is recorded
// in the dedup state at once, so that a failure later in the batch does not
// make what was stored forgettable.
//
// Its first append begins once prev (the sender's batch received before,
// nil for none) is placed, and its last begun, it marks mine placed (see
// ingest). What comes before, the live offer included, does not wait: a
// batch whose append hangs holds back its sender's later batches in the
// log, not on the live lane.
func (r *Router) appendNew(m forward.Message, counts []int, missing []forward.Interval, prev, mine *queue.Turn) error {
	var (
		ents  [][]byte
		ivs   []forward.Interval
		recs  []int // records in each of ents
		size  = 24  // the queue's record trailer
		total int
	)
	flush := func(last bool) error {
		if len(ents) == 0 {
			return nil
		}
		// Live at receipt (livepub.go); after the append while the main
		// queue refuses, so that resends are not offered again and again.
		bts := r.buildLive(m.Sender, ents, ivs, recs)
		early := !r.mainRefusing.Load()
		if early {
			r.offerLive(bts)
		}
		if r.beforeAppend != nil {
			r.beforeAppend()
		}
		start := time.Now()
		// Not the Run context: an append under way at shutdown finishes
		// (the queue commits what it has accepted before it closes).
		_ = prev.Wait(context.Background()) // placed by its ingest, whatever happens to it
		prev = nil
		pend, err := r.q.Begin(ents...)
		if last {
			mine.Placed()
		}
		if err == nil {
			_, err = pend.Wait(context.Background())
		}
		if err != nil {
			r.mainRefusing.Store(true)
			return fmt.Errorf("append %d entries of %s: %w", total, m.Sender, err)
		}
		r.mainRefusing.Store(false)
		if !early {
			r.offerLive(bts)
		}
		r.m.appendSeconds.Observe(time.Since(start).Seconds())
		r.dd.stored(m.Sender, ivs)
		for _, iv := range ivs {
			r.m.stored.Add(float64(iv.Len()))
		}
		for i, e := range ents {
			r.m.storedBytes.Add(float64(len(e)))
			r.m.fanoutRecords.Add(float64(recs[i]))
		}
		r.m.fanoutEntries.Add(float64(len(ents)))
		ents, ivs, recs, size, total = ents[:0], ivs[:0], recs[:0], 24, 0
		return nil
	}
	for _, iv := range missing {
		for first := iv.First; first <= iv.Last; {
			// Grow the chunk first..last while it fits in a record.
			last, n := first, len(m.Entries[first-m.First])
			for last < iv.Last && n+len(m.Entries[last+1-m.First])+entryOverhead <= recordBytes {
				last++
				n += len(m.Entries[last-m.First])
			}
			es := m.Entries[first-m.First : last-m.First+1]
			e := forward.AppendStored(make([]byte, 0, forward.StoredSize(m.Sender, first, last, es)), m.Sender, first, last, es)
			if size+len(e)+10 > recordBytes {
				if err := flush(false); err != nil {
					return err
				}
			}
			nrec := 0
			for _, c := range counts[first-m.First : last-m.First+1] {
				nrec += c
			}
			ents = append(ents, e)
			ivs = append(ivs, forward.Interval{First: first, Last: last})
			recs = append(recs, nrec)
			size += len(e) + 10
			total += int(last - first + 1)
			first = last + 1
		}
	}
	return flush(true)
}
