// Package backoff is drover's one retry policy: exponential backoff with
// jitter. Every component that retries (the frontend's drainer towards a
// busy router, the router towards a busy subscriber, a storage writer
// towards a failing sink, a simulated device towards a frontend) waits
// what a [Backoff] says, so that they all behave alike and a fix to the
// policy is made once.
//
// The n-th failure in a row waits a time drawn uniformly from [d/2, d],
// where d = min(Max, Min·2^(n-1)) ("equal jitter"): the wait grows fast
// enough to spare a store that is down, never exceeds Max so that recovery
// is noticed soon, and the random half spreads the retries of many clients
// refused at the same moment, so that they do not all come back at the
// same moment either.
//
// [NewFull] draws from [0, d] instead ("full jitter", the AWS SDKs'
// default): for many independent clients refused by one server, such as a
// fleet of devices after an outage, it spreads the retries evenly over the
// whole interval, where equal jitter crowds them into its second half.
// That is the device side's contract (docs/ingest.md).
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the state of one retrier: how many failures in a row it has
// seen. Build it with [New]; it is not safe for concurrent use (each
// retrying loop owns its own).
type Backoff struct {
	min, max time.Duration
	rnd      *rand.Rand
	cur      time.Duration // d of the last failure; 0 after Reset
	full     bool          // draw from [0, d], not [d/2, d]
}

// New returns a Backoff whose first wait is about lo and whose waits never
// exceed hi. A lo of 0 or less is taken as 1 ns; a hi below lo as lo.
// rnd draws the jitter; nil uses math/rand/v2's global source (a seeded
// source makes the waits reproducible, as the simulator needs).
func New(lo, hi time.Duration, rnd *rand.Rand) Backoff {
	lo = max(lo, time.Nanosecond)
	return Backoff{min: lo, max: max(lo, hi), rnd: rnd}
}

// NewFull is [New] with full jitter: each wait is uniform in [0, d].
func NewFull(lo, hi time.Duration, rnd *rand.Rand) Backoff {
	b := New(lo, hi, rnd)
	b.full = true
	return b
}

// Next records one more failure and returns how long to wait before the
// next attempt: uniform in [d/2, d] ([0, d] with [NewFull]), d doubling
// from lo to at most hi (see [New]).
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	base, span := int64(b.cur/2), int64(b.cur/2)
	if b.full {
		base, span = 0, int64(b.cur)
	}
	var r int64
	if b.rnd != nil {
		r = b.rnd.Int64N(span + 1)
	} else {
		r = rand.Int64N(span + 1)
	}
	return time.Duration(base + r)
}

// Reset forgets the failures: the next Next waits about lo again. Call it
// after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Active reports whether a failure was recorded since the last Reset, i.e.
// whether the retrier is backing off.
func (b *Backoff) Active() bool { return b.cur != 0 }

// Sleep waits d or until ctx ends, and reports whether it waited it all.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
