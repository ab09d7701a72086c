package frontend

import (
	"context"
	"math"
	rtmetrics "runtime/metrics"
	"time"
)

// governorInterval is how often the governor looks at the scheduler.
const governorInterval = 500 * time.Millisecond

// governor sets the accept rate (and the TLS handshake budget) from what
// the connections already open need: the Go scheduler's delay, the time
// a runnable goroutine waits for a CPU, is what a device's read loop waits
// before it can decode, store and ack a frame that has arrived. When its
// p99 over the last interval is above the target, the CPU is short and
// new connections (upgrades, token hashing, TLS handshakes, first frames)
// would take it from acks: the rate is cut by 30%, down to the floor.
// Below half the target it grows back by 5% of the configured rate a step
// (ten seconds from the floor to the full rate). In between it holds.
// AIMD, as TCP does for the same reason: back off fast, return slowly.
type governor struct {
	max, min float64
	target   time.Duration
	cur      float64
	apply    func(rate float64)
	// delay returns the scheduler delay's p99 since the last call, and
	// false when too few goroutines ran to tell. Tests replace it.
	delay func() (time.Duration, bool)
}

func newGovernor(cfg AdmissionConfig, apply func(float64)) *governor {
	g := &governor{max: cfg.Rate, min: cfg.MinRate, target: cfg.DelayTarget, cur: cfg.Rate, apply: apply}
	g.delay = newDelaySignal()
	return g
}

// newDelaySignal makes the governor's signal; tests replace it.
var newDelaySignal = newSchedDelay

// run adjusts the rate every governorInterval until ctx ends.
func (g *governor) run(ctx context.Context, observe func(time.Duration)) {
	t := time.NewTicker(governorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			d, ok := g.delay()
			if ok {
				observe(d)
			}
			g.step(d, ok)
		}
	}
}

// step adjusts the rate after one interval whose scheduler delay p99 was
// d (ok false: no sample, which is an idle process: grow).
func (g *governor) step(d time.Duration, ok bool) {
	next := g.cur
	switch {
	case ok && d > g.target:
		next = max(g.min, g.cur*0.7)
	case !ok || d < g.target/2:
		next = min(g.max, g.cur+g.max*0.05)
	}
	if next != g.cur {
		g.cur = next
		g.apply(next)
	}
}

// schedLatencies is the runtime metric of the scheduler's delay: a
// cumulative histogram of the time goroutines spent runnable before
// running.
const schedLatencies = "/sched/latencies:seconds"

// newSchedDelay returns a function giving the p99 of the scheduler delay
// since its last call, from the difference of the runtime's cumulative
// histograms.
func newSchedDelay() func() (time.Duration, bool) {
	sample := []rtmetrics.Sample{{Name: schedLatencies}}
	var prev []uint64
	return func() (time.Duration, bool) {
		rtmetrics.Read(sample)
		if sample[0].Value.Kind() != rtmetrics.KindFloat64Histogram {
			return 0, false
		}
		h := sample[0].Value.Float64Histogram()
		delta := make([]uint64, len(h.Counts))
		var total uint64
		for i, c := range h.Counts {
			if i < len(prev) {
				delta[i] = c - prev[i]
			} else {
				delta[i] = c
			}
			total += delta[i]
		}
		prev = append(prev[:0], h.Counts...)
		// The runtime samples a fraction of scheduling events: below a
		// hundred samples the p99 says nothing.
		if total < 100 {
			return 0, false
		}
		want := total - total/100 // the 99th percentile's rank
		var seen uint64
		for i, c := range delta {
			seen += c
			if seen >= want {
				// Bucket i spans Buckets[i] to Buckets[i+1]: its upper bound,
				// or its lower one for the last, open bucket.
				b := h.Buckets[i+1]
				if math.IsInf(b, 1) {
					b = h.Buckets[i]
				}
				return time.Duration(b * float64(time.Second)), true
			}
		}
		return 0, false
	}
}
