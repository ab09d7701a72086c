package alerts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/drover-telemetry/drover/alerts/eval"
	"github.com/drover-telemetry/drover/internal/apiclient"
	"github.com/drover-telemetry/drover/internal/clusterlink"
	"github.com/drover-telemetry/drover/internal/endpoints"
	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/internal/publane"
	"github.com/drover-telemetry/drover/queue"
)

// Engine is one alert engine: a durable subscriber of the store lane, the
// evaluator, the outbox and the outputs.
type Engine struct {
	cfg    Config
	logger *slog.Logger
	reg    prometheus.Registerer
	m      *metrics
	sec    *clusterlink.Security // the store link (as a durable subscriber)
	laneSc *clusterlink.Security // the alert lane (as its server)
	watch  *endpoints.Watcher    // the router list, followed in DNS
	apiTr  *http.Transport       // to the control plane: its CA, TLS 1.2+

	running atomic.Bool
	q       atomic.Pointer[queue.Queue]
	ready   atomic.Pointer[error]
	out     *outbox
	rules   *ruleStore
	lane    *publane.Publisher
	laneAt  atomic.Pointer[string]

	// compiling is set while a rule set is compiled (nothing is evaluated
	// meanwhile); startRules while the rule set found at start waits for
	// the evaluation to put it in force. Both keep /readyz unready, saying
	// why (compile.go).
	compiling  atomic.Pointer[compileState]
	startRules atomic.Pointer[compileState]

	subs *forward.Subscription // the routers' store lanes (receive.go)
	recv *forward.Receiver     // router batches into the queue (receive.go)

	// Owned by the evaluation goroutine.
	ev      *eval.Evaluator
	applied uint64 // the last queue entry evaluated (and in the state)
	logged  uint64 // the outbox has the events of entries up to this
	evBuf   []eval.Event
	held    []queue.Batch
	heldB   int
	unsaved bool // events were lost before reaching the outbox: no more snapshots

	// now is the wall clock (tests set it).
	now func() time.Time
	// hooks, set by tests, are called at named points of the evaluation
	// ("after-outbox", "after-snapshot") and of the outputs
	// ("delivered-NAME": a delivery went, its cursor is not yet saved).
	hook func(point string)
}

// shutdownGrace bounds the wait for the appends in flight at shutdown
// (the storage writer's bound): past it they are abandoned, unanswered,
// and the routers send their batches again to the next run. Without a
// bound an engine whose disk hangs never stops, and its orchestrator
// kills it anyway, later.
const shutdownGrace = 10 * time.Second

var (
	errNotRunning = errors.New("alerts: not running")
	errNoRules    = errors.New("alerts: waiting for the first rule set")
)

// New checks cfg and returns an engine that logs to logger and registers
// its metrics with reg (nil: discarded, unregistered). New opens nothing:
// [Engine.Run] does.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	logger = logger.With("component", "alerts")
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	// To the routers the engine is a durable subscriber like a storage
	// writer, and its certificate says so; to livefeeds it is the alert
	// lane's server.
	sec, err := clusterlink.New(cfg.Links, clusterlink.RoleStorageWriter, cfg.Name, logger, reg)
	if err != nil {
		return nil, fmt.Errorf("alerts: %w", err)
	}
	for _, ep := range endpoints.Static(cfg.Routers) {
		if _, err := sec.Endpoint(clusterlink.LinkStore, ep); err != nil {
			sec.Close()
			return nil, fmt.Errorf("alerts: routers: %w", err)
		}
	}
	watch, err := endpoints.NewWatcher(cfg.Routers, cfg.Resolve, "alerts/"+cfg.Name, logger, reg)
	if err != nil {
		sec.Close()
		return nil, fmt.Errorf("alerts: routers: %w", err)
	}
	apiTr, err := apiclient.Transport(cfg.APICAFile)
	if err != nil {
		sec.Close()
		return nil, fmt.Errorf("alerts: api-ca-file: %w", err)
	}
	e := &Engine{cfg: cfg, logger: logger, reg: reg, m: m, sec: sec, watch: watch, apiTr: apiTr, now: time.Now}
	e.recv = e.newReceiver()
	e.subs = forward.NewSubscription(forward.SubscriptionConfig{
		Name: cfg.Name, Component: "alerts", Security: sec, Logger: logger,
		Receive:   e.recv.Receive,
		Bad:       func(string) { m.badMessages.Inc() },
		RoutersUp: func(n int) { m.routersUp.Set(float64(n)) },
	})
	if cfg.AlertPub != "" {
		if e.laneSc, err = clusterlink.New(cfg.Links, clusterlink.RoleAlerts, cfg.Name, logger, nil); err != nil {
			sec.Close()
			return nil, fmt.Errorf("alerts: %w", err)
		}
	}
	e.setReady(errNotRunning)
	return e, nil
}

func (e *Engine) setReady(err error) { e.ready.Store(&err) }

// Ready reports whether the engine takes readings and evaluates them: nil
// once its queue is open, its state recovered and a rule set known and
// compiled. While fences are compiled (seconds for thousands of them) the
// error says so. Cheap, for /readyz.
func (e *Engine) Ready() error {
	if err := e.compileReady(); err != nil {
		return err
	}
	return *e.ready.Load()
}

// AlertLaneAddr is the address the alert lane is bound to (tests: port 0).
func (e *Engine) AlertLaneAddr() string {
	if a := e.laneAt.Load(); a != nil {
		return *a
	}
	return ""
}

// Run recovers, subscribes, evaluates and delivers until ctx ends, then
// stops taking batches, evaluates what it has, saves a last snapshot,
// closes everything and returns nil. A failure to start is an error.
func (e *Engine) Run(ctx context.Context) error {
	if !e.running.CompareAndSwap(false, true) {
		return errors.New("alerts: Run called twice")
	}
	defer e.sec.Close()
	if e.laneSc != nil {
		defer e.laneSc.Close()
	}
	dir := e.cfg.DataDir
	out, err := openOutbox(filepath.Join(dir, "outbox"), e.cfg.OutboxMaxBytes, e.logger)
	if err != nil {
		return fmt.Errorf("alerts: %w", err)
	}
	out.overflow = func(n uint64) { e.m.outboxDropped.Add(float64(n)) }
	e.out = out
	defer func() {
		if err := out.close(); err != nil {
			e.logger.Error("alerts: close outbox", "err", err)
		}
	}()
	if e.rules, err = openRuleStore(filepath.Join(dir, "rules"), e.logger); err != nil {
		return fmt.Errorf("alerts: %w", err)
	}
	if err := e.recover(); err != nil {
		return fmt.Errorf("alerts: %w", err)
	}
	q, err := queue.Open(filepath.Join(dir, "queue"), queue.Options{
		Name: "alerts", MaxBytes: e.cfg.QueueMaxBytes, MaxRecordBytes: maxRecordBytes,
	}, e.logger, e.reg)
	if err != nil {
		return fmt.Errorf("alerts: open queue: %w", err)
	}
	e.q.Store(q)
	defer func() {
		e.q.Store(nil)
		if err := q.Close(); err != nil {
			e.logger.Error("alerts: close queue", "err", err)
		}
	}()
	if e.cfg.AlertPub != "" {
		lane, addr, err := e.openLane()
		if err != nil {
			return err
		}
		e.lane = lane
		e.laneAt.Store(&addr)
		defer lane.Close()
	}

	var bg sync.WaitGroup
	bgCtx, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { stopBg(); bg.Wait() }()

	// The first rule set: the followed source's, before any reading, so
	// that nothing is evaluated with rules that are not the operator's.
	follow := newFollower(e)
	if err := follow.first(ctx); err != nil {
		return err
	}
	if rs, _ := follow.current(); rs != nil && rs.Version != e.ev.Version() {
		// Journaled by first: in force once the evaluation gets to it.
		e.startRules.Store(&compileState{version: rs.Version, fences: len(rs.Geofences), since: time.Now()})
	}
	bg.Go(func() { follow.run(bgCtx) })
	bg.Go(func() { e.tickLoop(bgCtx, q) })
	e.startOutputs(bgCtx, &bg, follow)

	evalCtx, stopEval := context.WithCancel(context.WithoutCancel(ctx))
	evalDone := make(chan error, 1)
	go func() { evalDone <- e.evalLoop(evalCtx, q) }()

	defer e.recv.Abandon()
	e.subs.SetRouters(e.watch.Current())
	watchCtx, stopWatch := context.WithCancel(ctx)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		e.watch.Run(watchCtx, e.subs.SetRouters)
	}()
	e.setReady(nil)
	e.logger.Info("alerts: started", "routers", e.cfg.Routers, "data_dir", dir, "alert_lane", e.AlertLaneAddr(),
		"rules_version", follow.version())

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-evalDone:
		evalDone <- runErr
	}
	e.setReady(errNotRunning)
	// Stop taking batches (the routers resend what is not acked), let the
	// appends finish, then the evaluation evaluates what is queued in
	// memory and saves its last snapshot.
	stopWatch()
	<-watchDone
	e.subs.Stop()
	if e.recv.Stop(shutdownGrace) {
		e.logger.Warn("alerts: appends still running at shutdown were abandoned (routers resend)", "grace", shutdownGrace)
	}
	stopEval()
	if err := <-evalDone; err != nil && runErr == nil {
		runErr = err
	}
	e.logger.Info("alerts: stopped")
	return runErr
}

func (e *Engine) openLane() (*publane.Publisher, string, error) {
	m := e.m.lane
	p, addr, err := publane.Open(e.laneSc, clusterlink.LinkAlerts, e.cfg.AlertPub, e.cfg.Name, publane.Config{
		Topic: AlertTopic, Buffer: 4096, BufferBytes: 8 << 20, Stall: 10 * time.Second, CloseGrace: time.Second,
		MaxSubscribers: 256, MaxLabels: 256, Name: "alerts: lane",
	}, publane.Metrics{Published: m.published, Dropped: m.dropped, Sent: m.sent, SubDropped: m.subDropped,
		Subscribers: m.subscribers, Disconnects: m.disconnects}, e.logger)
	if err != nil {
		return nil, "", fmt.Errorf("alerts: alert lane: %w", err)
	}
	return p, addr, nil
}

// AlertTopic is the first frame of every alert lane message; the second is
// one alert event, JSON (docs/live-api.md, "Alerts").
const AlertTopic = "alert."
