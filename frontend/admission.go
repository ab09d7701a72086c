package frontend

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// AdmissionConfig is how a frontend takes back a herd of devices (after an
// outage, a restart, another frontend's loss) without the connections it
// already holds noticing. See docs/ingest.md, "Stampedes".
type AdmissionConfig struct {
	// Rate is how many new device connections per second are let in, at
	// most; Burst how many at once. Past it a connection is answered 503
	// before any token hashing, with a Retry-After that gives the device a
	// place in line: the n-th device refused comes back after n ÷ rate
	// seconds, so that a herd spreads over the time it takes to take it
	// back. 0: no limit (and no governor).
	Rate  float64
	Burst int
	// MinRate is the least the governor lowers Rate to.
	MinRate float64
	// DelayTarget is the governor's target: when the Go scheduler's delay
	// (how long a runnable goroutine, a device's read loop with a frame to
	// ack among them, waits for a CPU) has a p99 above it over half a
	// second, the accept rate (and the TLS handshake budget with it) is cut
	// by 30%; below half of it, it grows back by 5% of Rate a step. So
	// admission takes only the CPU that acks leave. 0: a fixed rate.
	DelayTarget time.Duration
	// Flap limits devices that reconnect too often: a device whose
	// connection is the one past FlapConnects within FlapWindow is held
	// back: answered 429 with a Retry-After for FlapBlock, doubling with
	// each repeat up to FlapMaxBlock (its open connection is not closed).
	// The count lives with the device's other state (connected devices and
	// up to -max-idle-devices others), so it costs no memory of its own.
	// 0 connects: no limit.
	FlapConnects int
	FlapWindow   time.Duration
	FlapBlock    time.Duration
	FlapMaxBlock time.Duration
}

// DefaultAdmissionConfig returns the admission of a frontend sized for the
// reference machine: 2,000 connections a second (a 2-core frontend takes
// 5,000+ plain or 3,000+ TLS a second; the governor finds what is left),
// a burst of one second's worth, a floor of 100 a second, a 10 ms
// scheduling delay target, and 15 connections a minute before a device is
// held back as flapping (EMQX's flapping detection default), for a minute
// doubling to ten.
func DefaultAdmissionConfig() AdmissionConfig {
	return AdmissionConfig{
		Rate: 2000, Burst: 2000, MinRate: 100, DelayTarget: 10 * time.Millisecond,
		FlapConnects: 15, FlapWindow: time.Minute, FlapBlock: time.Minute, FlapMaxBlock: 10 * time.Minute,
	}
}

func (c *AdmissionConfig) registerFlags(fs *flag.FlagSet) {
	fs.Float64Var(&c.Rate, "accept-rate", c.Rate,
		"new device connections let in per second, at most; past it, 503 with a Retry-After giving each refused device its place in line (docs/ingest.md); 0: no limit (`number`)")
	fs.IntVar(&c.Burst, "accept-burst", c.Burst,
		"new device connections let in at once before -accept-rate applies (`number`)")
	fs.Float64Var(&c.MinRate, "accept-rate-min", c.MinRate,
		"least the governor lowers -accept-rate to while the CPU is short (`number` per second)")
	fs.DurationVar(&c.DelayTarget, "admission-delay-target", c.DelayTarget,
		"p99 of the Go scheduler's delay above which the accept rate and the TLS handshake budget are lowered, so that acks keep the CPU (`duration`); 0: a fixed -accept-rate")
	fs.IntVar(&c.FlapConnects, "flap-connects", c.FlapConnects,
		"connections of one device within -flap-window after which it is answered 429 with a Retry-After (`number`); 0: no limit")
	fs.DurationVar(&c.FlapWindow, "flap-window", c.FlapWindow, "period over which a device's connections are counted (`duration`)")
	fs.DurationVar(&c.FlapBlock, "flap-block", c.FlapBlock,
		"how long a flapping device is refused (`duration`), doubling with each repeat up to -flap-block-max")
	fs.DurationVar(&c.FlapMaxBlock, "flap-block-max", c.FlapMaxBlock, "longest refusal of a flapping device (`duration`)")
}

func (c AdmissionConfig) validate() error {
	var errs []error
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		errs = append(errs, fmt.Errorf("accept-rate: %v: want 0 (no limit) or more", c.Rate))
	}
	if c.Rate > 0 {
		if c.Burst < 1 {
			errs = append(errs, fmt.Errorf("accept-burst: %d: want at least 1", c.Burst))
		}
		if !(c.MinRate > 0) || c.MinRate > c.Rate {
			errs = append(errs, fmt.Errorf("accept-rate-min: %v: want more than 0 and at most -accept-rate (%v)", c.MinRate, c.Rate))
		}
	}
	if c.DelayTarget < 0 {
		errs = append(errs, fmt.Errorf("admission-delay-target: %v: want 0 (off) or more", c.DelayTarget))
	}
	if c.FlapConnects < 0 {
		errs = append(errs, fmt.Errorf("flap-connects: %d: want 0 (no limit) or more", c.FlapConnects))
	}
	if c.FlapConnects > 0 {
		if c.FlapWindow <= 0 {
			errs = append(errs, fmt.Errorf("flap-window: %v: want more than 0", c.FlapWindow))
		}
		if c.FlapBlock <= 0 {
			errs = append(errs, fmt.Errorf("flap-block: %v: want more than 0", c.FlapBlock))
		}
		if c.FlapMaxBlock < c.FlapBlock {
			errs = append(errs, fmt.Errorf("flap-block-max: %v: want at least -flap-block (%v)", c.FlapMaxBlock, c.FlapBlock))
		}
	}
	return errors.Join(errs...)
}

// maxRetryAfter bounds a Retry-After: a herd larger than ten minutes of
// accepts is told to come back in ten minutes and asks again then.
const maxRetryAfter = 10 * time.Minute

// Reservations: a refused device's place in line is kept from a second
// before its slot (it may round down) until reservationGrace after it.
const (
	reservationEarly = time.Second
	reservationGrace = 10 * time.Second
)

// gate lets new connections in at a rate, GCRA-style: tat is the time at
// which the next connection is due if connections came evenly at the
// rate; one that comes while tat is at most Burst-1 intervals ahead is let
// in and pushes tat one interval on. One that comes too early is given the
// slot at which it would be let in (tat less those Burst-1 intervals; tat
// moves on): its Retry-After is the time to it, and
// the slot is held for it by device id, so that when it comes back it is
// let in without competing again. A herd of n refused at once is thus told
// to come back over n ÷ rate seconds, in the order it came. Devices that
// never come back leave their slots unused; slots expire. It is safe for
// concurrent use.
type gate struct {
	mu       sync.Mutex
	rate     float64 // connections a second in force; 0 or less: no limit
	burst    float64
	tat      time.Time
	resv     map[string]time.Time // device id → its slot
	order    []reservation        // the same, in slot order, for expiry
	maxResv  int
	reserved int // reservations made, for metrics
}

type reservation struct {
	id   string
	slot time.Time
}

func newGate(rate float64, burst, maxResv int) *gate {
	return &gate{rate: rate, burst: float64(burst), resv: make(map[string]time.Time), maxResv: maxResv}
}

// setRate changes the rate in force (the governor's).
func (g *gate) setRate(r float64) {
	g.mu.Lock()
	g.rate = r
	g.mu.Unlock()
}

// admit says whether the device id may connect at now, and otherwise how
// long it should wait. id may be empty (no credentials given): such a
// request gets a slot but no reservation.
func (g *gate) admit(id string, now time.Time) (ok bool, wait time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.rate <= 0 {
		return true, 0
	}
	g.expire(now)
	if slot, held := g.resv[id]; held && id != "" {
		if now.Before(slot.Add(-reservationEarly)) {
			return false, slot.Sub(now) // too early: same slot, not a new one
		}
		delete(g.resv, id)
		return true, 0
	}
	interval := time.Duration(float64(time.Second) / g.rate)
	tolerance := time.Duration((g.burst - 1) * float64(interval))
	if g.tat.Before(now) {
		g.tat = now
	}
	if g.tat.Sub(now) <= tolerance {
		g.tat = g.tat.Add(interval)
		return true, 0
	}
	// The earliest time the rate lets one more in.
	slot := g.tat.Add(-tolerance)
	if slot.Sub(now) > maxRetryAfter {
		// The line is longer than anyone should be told to wait: come back
		// then and ask again, without a place.
		return false, maxRetryAfter
	}
	g.tat = g.tat.Add(interval)
	if id != "" && len(g.resv) < g.maxResv {
		g.resv[id] = slot
		g.order = append(g.order, reservation{id, slot})
		g.reserved++
	}
	return false, slot.Sub(now)
}

// expire forgets the reservations whose time has passed. Call with mu.
func (g *gate) expire(now time.Time) {
	n := 0
	for n < len(g.order) && now.After(g.order[n].slot.Add(reservationGrace)) {
		r := g.order[n]
		if s, ok := g.resv[r.id]; ok && s.Equal(r.slot) {
			delete(g.resv, r.id)
		}
		n++
	}
	if n > 0 {
		g.order = append(g.order[:0], g.order[n:]...)
	}
}

// reservations returns the slots held now.
func (g *gate) reservations() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.resv)
}

// admissionMetrics is what admission counts, besides the refusals
// (drover_frontend_refusals_total{reason="accept_rate"|"flapping"}).
type admissionMetrics struct {
	rate       prometheus.Gauge
	delay      prometheus.Gauge
	retryAfter prometheus.Histogram
	flapHolds  prometheus.Counter
}

func newAdmissionMetrics(reg prometheus.Registerer, g *gate) (*admissionMetrics, error) {
	m := &admissionMetrics{
		rate: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_frontend_admission_rate",
			Help: "New device connections let in per second now: -accept-rate, lowered by the governor while the CPU is short; 0: no limit.",
		}),
		delay: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "drover_frontend_scheduler_delay_p99_seconds",
			Help: "p99 of the Go scheduler's delay (runnable goroutine waiting for a CPU) over the governor's last half second: what an ack waits before its read loop runs.",
		}),
		retryAfter: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "drover_frontend_retry_after_seconds",
			Help:    "Retry-After given with 503 refusals of the accept rate: each refused device's place in line ÷ the rate.",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600},
		}),
		flapHolds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "drover_frontend_flapping_holds_total",
			Help: "Times a device reconnected more than -flap-connects times within -flap-window and was held back (429 until the hold ends).",
		}),
	}
	cs := []prometheus.Collector{m.rate, m.delay, m.retryAfter, m.flapHolds,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "drover_frontend_admission_reservations",
			Help: "Places in line held for devices refused by the accept rate, until they come back (or the place expires).",
		}, func() float64 { return float64(g.reservations()) }),
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register admission metrics: %w", err)
		}
	}
	return m, nil
}

// newAdmission builds the gate, the governor and the flapping limiter.
func (f *Frontend) newAdmission(reg prometheus.Registerer) error {
	a := f.cfg.Admission
	f.gate = newGate(a.Rate, a.Burst, max(2*f.cfg.MaxConnections, 10000))
	m, err := newAdmissionMetrics(reg, f.gate)
	if err != nil {
		return err
	}
	f.am = m
	m.rate.Set(a.Rate)
	if a.Rate > 0 && a.DelayTarget > 0 {
		f.gov = newGovernor(a, func(r float64) {
			f.gate.setRate(r)
			m.rate.Set(r)
			if f.tlsLn != nil {
				f.tlsLn.SetRateFactor(r / a.Rate)
			}
		})
	}
	return nil
}

// runEdge runs the TLS reloads and the governor until ctx ends; the
// channel is closed when both have stopped.
func (f *Frontend) runEdge(ctx context.Context) <-chan struct{} {
	var wg sync.WaitGroup
	if f.tls != nil {
		wg.Go(func() { f.tls.Run(ctx) })
	}
	if f.gov != nil {
		wg.Go(func() { f.gov.run(ctx, func(d time.Duration) { f.am.delay.Set(d.Seconds()) }) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done
}

// admitNew decides, before any token hashing, whether a new connection of
// the device id (as claimed: not yet authenticated) may go on: not over the
// accept rate (503 with its place in line as Retry-After). It answers the
// refusal itself and returns false then.
func (f *Frontend) admitNew(w http.ResponseWriter, id string, now time.Time) bool {
	ok, wait := f.gate.admit(id, now)
	if ok {
		return true
	}
	s := retrySeconds(wait)
	f.am.retryAfter.Observe(float64(s))
	w.Header().Set("Retry-After", strconv.Itoa(s))
	f.refuseHTTP(w, http.StatusServiceUnavailable, reasonAcceptRate, "server busy, retry later", "")
	return false
}

// notFlapping says whether the authenticated device id may connect now,
// and answers 429 with the hold's end as Retry-After when it is held back.
// After the authentication, not before: a 429 for an id nobody
// authenticated as would tell which ids exist.
func (f *Frontend) notFlapping(w http.ResponseWriter, id string, now time.Time) bool {
	left, held := f.devs.flapping(id, now)
	if !held {
		return true
	}
	w.Header().Set("Retry-After", strconv.Itoa(retrySeconds(left)))
	f.refuseHTTP(w, http.StatusTooManyRequests, reasonFlapping, "reconnecting too often, retry later", id)
	return false
}

// connected counts a device's new connection towards flapping, and logs
// the device once each time it is held back.
func (f *Frontend) connected(d *device, now time.Time) {
	if hold := f.devs.countConnect(d, now, &f.cfg.Admission); hold > 0 {
		f.am.flapHolds.Inc()
		f.logger.Warn("frontend: device reconnects too often; holding it back", "device", d.id,
			"connections", f.cfg.Admission.FlapConnects+1, "within", f.cfg.Admission.FlapWindow, "for", hold)
	}
}

// retrySeconds is d as a Retry-After: whole seconds, rounded up, at least 1.
func retrySeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}
