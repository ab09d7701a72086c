package sim

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Latency histogram: HDR-like logarithmic buckets over nanoseconds. Values below 16 ns have a
// bucket each; above, every power of two is split into 16 equal buckets, so a bucket's width is
// at most 1/16 of its lower bound. 976 buckets cover every int64.
const (
	subBits    = 4
	subBuckets = 1 << subBits
	numBuckets = (64-subBits)*subBuckets + subBuckets
)

// bucketOf returns the bucket of v ≥ 0 nanoseconds.
func bucketOf(v uint64) int {
	if v < subBuckets {
		return int(v)
	}
	e := bits.Len64(v) - 1 // ≥ subBits
	sub := (v >> (e - subBits)) & (subBuckets - 1)
	return (e-subBits+1)*subBuckets + int(sub)
}

// bucketUpper returns the largest value of bucket i.
func bucketUpper(i int) uint64 {
	if i < subBuckets {
		return uint64(i)
	}
	e := i/subBuckets + subBits - 1
	sub := uint64(i % subBuckets)
	lower := (subBuckets + sub) << (e - subBits)
	return lower + (1 << (e - subBits)) - 1
}

// histogram counts latencies; safe for concurrent use without locks.
type histogram struct {
	counts [numBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64 // nanoseconds
	max    atomic.Uint64
}

// recordN records n samples of d.
func (h *histogram) recordN(d time.Duration, n uint64) {
	if n == 0 {
		return
	}
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)].Add(n)
	h.total.Add(n)
	h.sum.Add(v * n)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// histSnapshot is a copy of a histogram at one moment. Counts of two snapshots subtract, to get
// the distribution over an interval (its max is then the top of its highest bucket, capped at
// the max of the whole run so far: within 1/16 of the interval's true max).
type histSnapshot struct {
	counts [numBuckets]uint64
	total  uint64
	sum    uint64
	max    uint64
}

// snapshot copies h. Concurrent records may be half in it; that is fine for reporting.
func (h *histogram) snapshot() *histSnapshot {
	s := &histSnapshot{total: h.total.Load(), sum: h.sum.Load(), max: h.max.Load()}
	for i := range h.counts {
		s.counts[i] = h.counts[i].Load()
	}
	return s
}

// sub returns s minus an earlier snapshot of the same histogram.
func (s *histSnapshot) sub(prev *histSnapshot) *histSnapshot {
	d := &histSnapshot{total: s.total - prev.total, sum: s.sum - prev.sum}
	for i := range s.counts {
		d.counts[i] = s.counts[i] - prev.counts[i]
		if d.counts[i] != 0 {
			d.max = min(bucketUpper(i), s.max)
		}
	}
	return d
}

// quantile returns the upper bound of the bucket holding quantile q (0 < q ≤ 1), capped at the
// maximum; 0 when there is no sample.
func (s *histSnapshot) quantile(q float64) time.Duration {
	var n uint64
	for i := range s.counts {
		n += s.counts[i]
	}
	if n == 0 {
		return 0
	}
	rank := uint64(q * float64(n))
	if float64(rank) < q*float64(n) || rank == 0 {
		rank++ // ceil, at least 1
	}
	var seen uint64
	for i := range s.counts {
		seen += s.counts[i]
		if seen >= rank {
			return time.Duration(min(bucketUpper(i), s.max))
		}
	}
	return time.Duration(s.max)
}

// Latency summarises a latency distribution.
type Latency struct {
	// Count is the number of samples.
	Count uint64
	// P50, P90, P99 and P999 are percentiles, each reported as the upper bound of its histogram
	// bucket (at most 6.25% high), never above Max.
	P50, P90, P99, P999 time.Duration
	// Max is the largest sample, exact.
	Max time.Duration
	// Mean is the average sample.
	Mean time.Duration
}

// latency summarises s.
func (s *histSnapshot) latency() Latency {
	l := Latency{Count: s.total, Max: time.Duration(s.max)}
	if s.total == 0 {
		l.Max = 0
		return l
	}
	l.P50, l.P90, l.P99, l.P999 = s.quantile(0.50), s.quantile(0.90), s.quantile(0.99), s.quantile(0.999)
	l.Mean = time.Duration(s.sum / s.total)
	return l
}
