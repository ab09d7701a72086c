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
}

// New returns a Backoff whose first wait is about lo and whose waits never
// exceed hi. A lo of 0 or less is taken as 1 ns; a hi below lo as lo.
// rnd draws the jitter; nil uses math/rand/v2's global source (a seeded
// source makes the waits reproducible, as the simulator needs).
func New(lo, hi time.Duration, rnd *rand.Rand) Backoff {
	lo = max(lo, time.Nanosecond)
	return Backoff{min: lo, max: max(lo, hi), rnd: rnd}
}

// Next records one more failure and returns how long to wait before the
// next attempt: uniform in [d/2, d], d doubling from lo to at most hi (see [New]).
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	half := int64(b.cur / 2)
	var r int64
	if b.rnd != nil {
		r = b.rnd.Int64N(half + 1)
	} else {
		r = rand.Int64N(half + 1)
	}
	return time.Duration(half + r)
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
