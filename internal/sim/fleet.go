package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
)

// Fleet is a running (or ready to run) simulated fleet. Its methods are safe for concurrent use.
type Fleet struct {
	cfg     Config
	log     *slog.Logger
	urls    []string
	devices []*device
	dialers []*websocket.Dialer
	tls     *tlsClient

	started atomic.Bool
	done    chan struct{}
	mu      sync.Mutex
	// epoch is when Run started: device clocks and send times count from it. Set under mu before
	// any device goroutine starts and never changed after, so that devices read it without mu.
	epoch   time.Time
	endTime time.Time // when Run ended, zero while running
	// warm is the ack latency histogram at the end of Config.Warmup, nil before. Under mu.
	warm *histSnapshot

	c counters
	// cc counts what devices did with commands (commands.go).
	cc cmdCounters
	fc fwCounters
	// ctx is Run's context (firmware downloads end with it). Under mu.
	ctx context.Context
	// stampedeC is closed to make every connected device drop its connection (then replaced).
	// Under mu.
	stampedeC chan struct{}
	// noted holds the kinds of trouble already logged at warning level; repeats go to debug, so
	// that a fleet of 10,000 devices losing its frontend logs one line, not 10,000.
	noted sync.Map
}

// counters are the fleet's statistics, updated by every device.
type counters struct {
	connected   atomic.Int64
	acking      atomic.Int64 // devices whose current connection has had an ack
	connects    atomic.Uint64
	generated   atomic.Uint64
	sent        atomic.Uint64
	resent      atomic.Uint64
	frames      atomic.Uint64
	bytes       atomic.Uint64
	acked       atomic.Uint64
	drops       atomic.Uint64
	errors      atomic.Uint64
	inFlight    atomic.Int64
	outbox      atomic.Int64
	devicesDone atomic.Int64
	stampedes   atomic.Uint64
	tlsFull     atomic.Uint64
	tlsResumed  atomic.Uint64

	mu              sync.Mutex
	disconnects     map[string]uint64
	connectFailures map[string]uint64

	latency histogram
}

func (c *counters) count(m *map[string]uint64, key string) {
	c.mu.Lock()
	if *m == nil {
		*m = make(map[string]uint64)
	}
	(*m)[key]++
	c.mu.Unlock()
}

// New builds a fleet from cfg (defaults applied to zero fields). logger receives the fleet's logs;
// reg, if not nil, gets the fleet's metrics (drover_sim_*). The fleet starts with Run.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Fleet, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{cfg: cfg, log: logger, done: make(chan struct{}), stampedeC: make(chan struct{})}
	var err error
	for _, s := range cfg.URLs {
		u, _ := ingestURL(s) // checked by Validate
		f.urls = append(f.urls, u)
	}
	if f.tls, err = newTLSClient(cfg); err != nil {
		return nil, fmt.Errorf("sim: %w", err)
	}
	f.dialers = f.newDialers()
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	f.devices = make([]*device, cfg.Devices)
	for k := range f.devices {
		f.devices[k] = newDevice(f, k, seed)
	}
	if reg != nil {
		if err := reg.Register(&collector{f: f}); err != nil {
			return nil, fmt.Errorf("register sim metrics: %w", err)
		}
	}
	return f, nil
}

// newDialers returns one WebSocket dialer per source address (or one for the system's choice).
func (f *Fleet) newDialers() []*websocket.Dialer {
	cfg := f.cfg
	// Acks are a few bytes; frames go out through a shared pool of write buffers, so that an idle
	// connection holds no write buffer at all.
	perReading := 100
	if cfg.JSON {
		perReading = 400
	}
	writeBuf := min(64<<10, max(4096, cfg.FrameReadings*perReading+64))
	pool := &sync.Pool{}
	mk := func(local net.Addr) *websocket.Dialer {
		nd := &net.Dialer{LocalAddr: local, KeepAlive: 30 * time.Second}
		if local != nil {
			// The source port is picked at connect, not at bind: a source
			// address then gives ~28k ports per frontend address, not ~28k
			// in all.
			nd.Control = bindAddressNoPort
		}
		return &websocket.Dialer{
			NetDialContext:    wrapBatch(nd.DialContext),
			NetDialTLSContext: wrapBatch(f.dialTLS(nd)),
			HandshakeTimeout:  cfg.HandshakeTimeout,
			ReadBufferSize:    512,
			WriteBufferSize:   writeBuf,
			WriteBufferPool:   pool,
		}
	}
	if len(cfg.LocalAddrs) == 0 {
		return []*websocket.Dialer{mk(nil)}
	}
	var ds []*websocket.Dialer
	for _, a := range cfg.LocalAddrs {
		ds = append(ds, mk(&net.TCPAddr{IP: net.ParseIP(a)}))
	}
	return ds
}

// Run runs the fleet until every device has stopped: its Readings all acked, its Duration (and
// Drain) over, or ctx done. It returns nil then; an error only when called twice.
func (f *Fleet) Run(ctx context.Context) error {
	if !f.started.CompareAndSwap(false, true) {
		return errors.New("sim: fleet already run")
	}
	f.run(ctx)
	return nil
}

func (f *Fleet) run(ctx context.Context) {
	f.mu.Lock()
	f.epoch = time.Now()
	f.ctx = ctx
	f.mu.Unlock()
	f.log.Info("sim fleet starting", "devices", len(f.devices), "first", f.devices[0].id,
		"frontends", len(f.urls), "rate", f.cfg.Rate, "frame_readings", f.cfg.FrameReadings,
		"window", f.cfg.Window, "json", f.cfg.JSON, "connect_rate", f.cfg.ConnectRate)
	if f.cfg.Warmup > 0 {
		t := time.AfterFunc(f.cfg.Warmup, func() {
			h := f.c.latency.snapshot()
			f.mu.Lock()
			f.warm = h
			f.mu.Unlock()
		})
		defer t.Stop()
	}
	var wg sync.WaitGroup
	for _, d := range f.devices {
		wg.Go(func() { d.run(ctx) })
	}
	devicesDone := make(chan struct{})
	stampederDone := make(chan struct{})
	go func() {
		defer close(stampederDone)
		if f.cfg.StampedeEvery <= 0 {
			return
		}
		t := time.NewTicker(f.cfg.StampedeEvery)
		defer t.Stop()
		for {
			select {
			case <-devicesDone:
				return
			case <-t.C:
				f.Stampede()
			}
		}
	}()
	wg.Wait()
	close(devicesDone)
	<-stampederDone
	f.mu.Lock()
	f.endTime = time.Now()
	f.mu.Unlock()
	close(f.done)
	s := f.Stats()
	f.log.Info("sim fleet stopped", "elapsed", s.Elapsed.Round(time.Millisecond), "sent", s.Sent,
		"acked", s.Acked, "unacked", s.Outbox, "drops", s.OutboxDrops, "errors", s.Errors,
		"ack_p50", s.AckLatency.P50, "ack_p99", s.AckLatency.P99)
}

// Start builds a fleet (see New, without metrics) and runs it in its own goroutine until it
// finishes or ctx ends. Wait for it with Wait or Done.
func Start(ctx context.Context, cfg Config, logger *slog.Logger) (*Fleet, error) {
	f, err := New(cfg, logger, nil)
	if err != nil {
		return nil, err
	}
	f.started.Store(true)
	go f.run(ctx)
	return f, nil
}

// Wait waits until the fleet has stopped (Run has returned) and returns its final summary.
func (f *Fleet) Wait() Summary {
	<-f.done
	return f.Summary()
}

// Stampede makes every connected device drop its connection at once, without a close frame, as
// in a network outage: they reconnect with their usual jittered backoff and resend what was not
// acked. Config.StampedeEvery calls it periodically; it may be called any time.
func (f *Fleet) Stampede() {
	f.mu.Lock()
	close(f.stampedeC)
	f.stampedeC = make(chan struct{})
	f.mu.Unlock()
	n := f.c.stampedes.Add(1)
	f.log.Info("sim stampede: every device drops its connection", "stampede", n, "connected", f.c.connected.Load())
}

// stampedeSignal returns the channel the next stampede closes.
func (f *Fleet) stampedeSignal() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stampedeC
}

// Done is closed when Run has returned.
func (f *Fleet) Done() <-chan struct{} { return f.done }

// Ready returns nil once Run has started, for /readyz.
func (f *Fleet) Ready() error {
	if !f.started.Load() {
		return errors.New("sim: not started")
	}
	return nil
}

// Config returns the fleet's configuration, with defaults applied.
func (f *Fleet) Config() Config { return f.cfg }

// since returns the time since the fleet's epoch.
func (f *Fleet) since() time.Duration { return time.Since(f.epoch) }

// elapsed returns how long the fleet has run (so far, or in all once stopped).
func (f *Fleet) elapsed() time.Duration {
	f.mu.Lock()
	start, end := f.epoch, f.endTime
	f.mu.Unlock()
	switch {
	case start.IsZero():
		return 0
	case end.IsZero():
		return time.Since(start)
	}
	return end.Sub(start)
}

// note logs trouble of a kind at warning level the first time, at debug level after that.
func (f *Fleet) note(kind, msg string, args ...any) {
	if _, seen := f.noted.LoadOrStore(kind, struct{}{}); !seen {
		f.log.Warn(msg+" (further ones at debug level)", args...)
		return
	}
	f.log.Debug(msg, args...)
}

// Stats is a snapshot of a fleet's counters.
type Stats struct {
	// Elapsed is how long the fleet has run.
	Elapsed time.Duration
	// Devices is the number of devices; DevicesDone of them have stopped.
	Devices, DevicesDone int
	// Connected is the number of devices connected now; Acking of them, those whose current
	// connection has had an ack (back and acking, after a stampede).
	Connected, Acking int64
	// Connects counts successful WebSocket upgrades.
	Connects uint64
	// ConnectFailures counts failed connection attempts by cause: "http_401", "http_503" (any
	// HTTP status), "refused", "timeout", "tls" (the TLS handshake failed, or the server closed
	// the connection before it: it waited too long for its handshake), "dial".
	ConnectFailures map[string]uint64
	// Disconnects counts connections ended other than by the device's own stop, by cause: the
	// close code the server sent ("1001", "1013", "4000"; "1006" when the connection ended without
	// a close frame), "error" (a network error while reading), "write" (a frame's write failed, the
	// server having sent no close), "ack_timeout", "protocol" (an undecodable downlink or an ack
	// of unsent readings), "error_N" (a downlink Error of code N) and "stampede" (dropped by a
	// stampede).
	Disconnects map[string]uint64
	// Stampedes counts stampedes: every device dropping its connection at once.
	Stampedes uint64
	// TLSFull and TLSResumed count the TLS handshakes of wss:// connections: full, and resumed
	// with the session of an earlier connection.
	TLSFull, TLSResumed uint64
	// Generated counts readings taken (given a seq).
	Generated uint64
	// Sent counts readings written to sockets, resends included; Resent counts those that had
	// been sent before.
	Sent, Resent uint64
	// FramesSent and BytesSent count frames written to sockets and their encoded bytes
	// (WebSocket framing excluded), resends included.
	FramesSent, BytesSent uint64
	// Acked counts readings newly acked: each seq once, however often it was sent.
	Acked uint64
	// InFlight is the readings sent on current connections and not yet acked.
	InFlight int64
	// Outbox is the readings held in outboxes (not yet acked), in flight or not.
	Outbox int64
	// OutboxDrops counts readings not taken because the outbox was full.
	OutboxDrops uint64
	// Errors counts failed connection attempts, protocol violations by the server, downlink
	// Errors and local failures (encode, write).
	Errors uint64
	// AckLatency is the distribution, since the start, of the time from a reading's first write to
	// the socket to the receipt of the ack that covers it.
	AckLatency Latency
}

// Stats returns a snapshot of the fleet's counters.
func (f *Fleet) Stats() Stats {
	c := &f.c
	s := Stats{
		Elapsed:     f.elapsed(),
		Devices:     len(f.devices),
		DevicesDone: int(c.devicesDone.Load()),
		Connected:   c.connected.Load(),
		Acking:      c.acking.Load(),
		Connects:    c.connects.Load(),
		Generated:   c.generated.Load(),
		Sent:        c.sent.Load(),
		Resent:      c.resent.Load(),
		FramesSent:  c.frames.Load(),
		BytesSent:   c.bytes.Load(),
		Acked:       c.acked.Load(),
		InFlight:    c.inFlight.Load(),
		Outbox:      c.outbox.Load(),
		OutboxDrops: c.drops.Load(),
		Errors:      c.errors.Load(),
		Stampedes:   c.stampedes.Load(),
		TLSFull:     c.tlsFull.Load(),
		TLSResumed:  c.tlsResumed.Load(),
		AckLatency:  c.latency.snapshot().latency(),
	}
	c.mu.Lock()
	s.ConnectFailures = maps.Clone(c.connectFailures)
	s.Disconnects = maps.Clone(c.disconnects)
	c.mu.Unlock()
	return s
}

// Acked returns every device's highest acked seq (0: none yet). A device's seqs are contiguous
// from Config.FirstSeq (default 1), so every reading (device, seq) with FirstSeq ≤ seq ≤
// Acked()[device] was acknowledged as durably stored.
func (f *Fleet) Acked() map[string]uint64 {
	m := make(map[string]uint64, len(f.devices))
	for _, d := range f.devices {
		m[d.id] = d.ackedSeq.Load()
	}
	return m
}

// DeviceIDs returns the ids of the fleet's devices, in order.
func (f *Fleet) DeviceIDs() []string {
	ids := make([]string, len(f.devices))
	for i, d := range f.devices {
		ids[i] = d.id
	}
	return ids
}

// runCtx is Run's context.
func (f *Fleet) runCtx() context.Context {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ctx == nil {
		return context.Background()
	}
	return f.ctx
}
