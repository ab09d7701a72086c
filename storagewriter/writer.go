package storagewriter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/internal/backoff"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
	"github.com/drover-telemetry/drover/storagewriter/influx"
	"github.com/drover-telemetry/drover/storagewriter/lake"
	"github.com/drover-telemetry/drover/storagewriter/sink"
)

// Limits of the writer.
const (
	// maxAppenders bounds the appends in flight (each waits for a group
	// commit); a batch that finds them all busy is answered busy.
	maxAppenders = 64
	// maxRecordBytes is the writer queue's record size: what one append
	// may carry. A router batch larger than that is appended in chunks.
	maxRecordBytes = 4 << 20
	// dedupIntervals bounds the memory of appended sequences per router.
	dedupIntervals = 4096
	// shutdownGrace bounds the sink write in flight at shutdown, and
	// closing the sink.
	shutdownGrace = 10 * time.Second
	// pingInterval is how often the writer asks a sink that has not
	// answered yet (readiness).
	pingInterval = 2 * time.Second
	// dlMaintainInterval is how often the dead-letter store closes an aged
	// file and applies its bounds.
	dlMaintainInterval = time.Minute
)

// errNotRunning is what Ready says before Run has opened the queue.
var errNotRunning = errors.New("storage-writer: not running (queue not open)")

// checker is a sink that can say whether its writes will go through
// (InfluxDB: the server answers, the database exists).
type checker interface {
	Check(ctx context.Context) error
}

// stater is a sink that can say why its store refuses the writer now (a
// database that does not exist), cheaply.
type stater interface {
	State() error
}

// Writer is one durable subscriber with its queue and sink.
type Writer struct {
	cfg    Config
	logger *slog.Logger
	sec    *clusterlink.Security
	watch  *endpoints.Watcher
	reg    prometheus.Registerer
	m      *metrics

	// newSink, when set (tests), replaces the configured sink.
	newSink func() (sink.Sink, error)

	running   atomic.Bool
	q         atomic.Pointer[queue.Queue]
	sinkOK    atomic.Bool            // the sink's first check passed
	sinkWhy   atomic.Pointer[string] // why the first check fails, for Ready
	sinkState atomic.Pointer[stater] // the open sink, when it reports a state

	subs *forward.Subscription // the routers' store lanes

	recv *forward.Receiver // router batches into the queue (receive.go)

	dl              *deadLetter
	dlMaintainEvery time.Duration // dlMaintainInterval; tests shorten it
	dlRecords       atomic.Int64  // records dead-lettered, for a replay's report
	// retryFor, when positive, is how long a transient sink failure is
	// retried before the write gives up (a replay; the writer retries
	// until it stops).
	retryFor time.Duration

	out   outage  // the sink's outage state, shared by the sink writers
	track writing // writes in flight, for the backlog age

	// overBoundLogged is the UnixNano of the last error about an entry
	// larger than the queue's whole bound (at most one a minute).
	overBoundLogged atomic.Int64
}

// New checks cfg and returns a writer that logs to logger and registers its
// metrics with reg. Its metrics carry a "writer" label set to its subscriber
// name, so that several writers can share one registry (drover all). A nil
// logger discards; a nil reg keeps the metrics unregistered. New opens
// nothing: [Writer.Run] does.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.clone()
	cfg.Name = cfg.SubscriberName()
	cfg.Lake.Name = cfg.Name
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	logger = logger.With("component", "storage-writer", "writer", cfg.Name, "sink", cfg.Sink)
	// The links' metrics are the process's (shared with the other
	// components of drover all), not labelled with the writer.
	sec, err := clusterlink.New(cfg.Links, clusterlink.RoleStorageWriter, cfg.Name, logger, reg)
	if err != nil {
		return nil, fmt.Errorf("storage-writer: %w", err)
	}
	for _, ep := range endpoints.Static(cfg.Routers) {
		if _, err := sec.Endpoint(clusterlink.LinkStore, ep); err != nil {
			sec.Close()
			return nil, fmt.Errorf("storage-writer: routers: %w", err)
		}
	}
	// Registered before the writer label is added: drover all's writers
	// share the metric with its frontend and livefeed, under their
	// consumer label.
	watch, err := endpoints.NewWatcher(cfg.Routers, cfg.Resolve, "storage-writer/"+cfg.Name, logger, reg)
	if err != nil {
		sec.Close()
		return nil, fmt.Errorf("storage-writer: routers: %w", err)
	}
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"writer": cfg.Name}, reg)
	m := newMetrics()
	if err := m.register(reg); err != nil {
		return nil, err
	}
	w := &Writer{
		cfg:             cfg,
		logger:          logger,
		sec:             sec,
		watch:           watch,
		reg:             reg,
		m:               m,
		dlMaintainEvery: dlMaintainInterval,
		out:             outage{every: outageSummaryInterval},
	}
	w.dl = newDeadLetter(cfg.deadLetterDir(), cfg.Name, cfg.Sink, cfg.deadLetterLimits(), w.logger, m)
	w.recv = w.newReceiver()
	w.subs = forward.NewSubscription(forward.SubscriptionConfig{
		Name: cfg.Name, Component: "storage-writer", Security: sec, Logger: logger,
		Receive:   w.receive,
		Bad:       func(reason string) { m.badMessages.WithLabelValues(reason).Inc() },
		RoutersUp: func(n int) { m.routersUp.Set(float64(n)) },
	})
	return w, nil
}

// Name returns the durable subscriber name the writer uses.
func (w *Writer) Name() string { return w.cfg.Name }

// Run subscribes, queues, acks and writes to the sink until ctx ends, then
// closes its subscriptions, flushes what the sink accepts in time, closes the
// queue, and returns nil. It returns an error when it cannot start or goes
// wrong; a failing sink is not such an error (the queue grows, and metrics
// and logs say so). A Writer runs once.
func (w *Writer) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("storage-writer: Run called twice")
	}
	defer w.sec.Close()
	q, err := queue.Open(w.cfg.QueueDir, queue.Options{
		Name:           "writer-" + w.cfg.Name,
		MaxBytes:       w.cfg.QueueMaxBytes,
		MaxRecordBytes: maxRecordBytes,
	}, w.logger, w.reg)
	if err != nil {
		return fmt.Errorf("storage-writer: open queue: %w", err)
	}
	if err := w.dl.open(); err != nil {
		if cerr := q.Close(); cerr != nil {
			w.logger.Error("storage-writer: close queue", "err", cerr)
		}
		return fmt.Errorf("storage-writer: %w", err)
	}
	s, err := w.openSink()
	if err != nil {
		if cerr := q.Close(); cerr != nil {
			w.logger.Error("storage-writer: close queue", "err", cerr)
		}
		return fmt.Errorf("storage-writer: open sink %s: %w", w.cfg.Sink, err)
	}
	w.q.Store(q)
	defer w.q.Store(nil)
	if st, ok := s.(stater); ok {
		w.sinkState.Store(&st)
		defer w.sinkState.Store(nil)
	}

	// The sink write in flight at shutdown gets shutdownGrace to finish.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	finished := make(chan struct{})
	var bg sync.WaitGroup
	defer func() {
		close(finished)
		wcancel()
		bg.Wait()
	}()
	bg.Add(1)
	go func() {
		defer bg.Done()
		<-ctx.Done()
		select {
		case <-time.After(shutdownGrace):
			wcancel()
		case <-finished:
		}
	}()

	bg.Add(1)
	go func() {
		defer bg.Done()
		w.watchSink(ctx, s)
	}()
	bg.Add(1)
	go func() {
		defer bg.Done()
		t := time.NewTicker(w.dlMaintainEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				w.dl.maintain()
			}
		}
	}()

	defer w.recv.Abandon()
	w.subs.SetRouters(w.watch.Current())
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		w.watch.Run(watchCtx, w.subs.SetRouters)
	}()
	w.logger.Info("storage-writer: started", "routers", w.cfg.Routers, "queue_dir", w.cfg.QueueDir)

	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		w.sinkLoop(ctx, wctx, q, s)
	}()

	<-ctx.Done()
	// Stop receiving, let the appends in flight finish (their batches are
	// acked, or not: the routers resend), then the sink write in flight.
	stopWatch()
	<-watchDone
	w.subs.Stop()
	// The appends in flight, cancelled if the disk takes longer than
	// shutdownGrace (they are then not acked).
	if w.recv.Stop(shutdownGrace) {
		w.logger.Warn("storage-writer: appends still running at shutdown were abandoned (routers resend)")
	}
	<-loopDone
	w.sinkOK.Store(false)

	var errs []error
	cctx, ccancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer ccancel()
	if err := s.Close(cctx); err != nil {
		errs = append(errs, fmt.Errorf("close sink: %w", err))
	}
	if err := w.dl.close(); err != nil {
		errs = append(errs, fmt.Errorf("close dead-letter file: %w", err))
	}
	if err := q.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close queue: %w", err))
	}
	w.logger.Info("storage-writer: stopped")
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("storage-writer: %w", err)
	}
	return nil
}

// openSink builds the configured sink.
func (w *Writer) openSink() (sink.Sink, error) {
	if w.newSink != nil {
		return w.newSink()
	}
	switch w.cfg.Sink {
	case SinkInflux:
		return influx.New(w.cfg.Influx, w.logger, w.reg)
	case SinkLake:
		return lake.New(w.cfg.Lake, w.logger, w.reg)
	}
	return nil, fmt.Errorf("unknown sink %q", w.cfg.Sink)
}

// watchSink marks the sink as ready: at once for a sink that cannot be
// checked, after its first successful check otherwise (InfluxDB answers and
// the database exists, or was created). A failing check is an outage like a
// failing write: logged once, then summarised.
func (w *Writer) watchSink(ctx context.Context, s sink.Sink) {
	c, ok := s.(checker)
	if !ok {
		w.sinkOK.Store(true)
		return
	}
	for {
		cctx, cancel := context.WithTimeout(ctx, pingInterval)
		err := c.Check(cctx)
		cancel()
		if err == nil {
			w.sinkOK.Store(true)
			w.sinkUp()
			return
		}
		if ctx.Err() != nil {
			return
		}
		why := err.Error()
		w.sinkWhy.Store(&why)
		w.sinkFailed(0, err)
		if !backoff.Sleep(ctx, pingInterval) {
			return
		}
	}
}

// Ready reports whether the writer accepts and acks batches and its sink
// can take them: nil once its queue is open and its sink has passed its
// first check (InfluxDB: it answers and the database exists), an error
// saying why not otherwise. Later, it is an error again while the store
// refuses the writer itself (InfluxDB: the database does not exist, the
// credentials are refused), which only an operator can fix; a store that
// is merely down does not make the writer unready: the queue takes the
// data meanwhile. It is cheap and never blocks, for /readyz.
func (w *Writer) Ready() error {
	if w.q.Load() == nil {
		return errNotRunning
	}
	if !w.sinkOK.Load() {
		if why := w.sinkWhy.Load(); why != nil {
			return fmt.Errorf("storage-writer: sink %s not ready: %s", w.cfg.Sink, *why)
		}
		return fmt.Errorf("storage-writer: sink %s has not answered yet", w.cfg.Sink)
	}
	if st := w.sinkState.Load(); st != nil {
		if err := (*st).State(); err != nil {
			return fmt.Errorf("storage-writer: sink %s: %w", w.cfg.Sink, err)
		}
	}
	return nil
}
