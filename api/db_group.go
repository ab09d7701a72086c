package api

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"
)

// Group commit for the small, frequent writes of commands (creates, the
// marks of a dispatch, the reports of devices). Each of them alone is a
// transaction whose commit is an fsync; on SQLite they queue behind one
// writer connection, and on PostgreSQL each statement is a round trip to
// the server. At hundreds of commands per second that queue is the round
// trip's latency (docs/performance.md, "Commands round trip").
// writeGroup runs the writes that arrive while a commit is in progress
// together in the next transaction: one commit, one fsync, for all of
// them. A caller returns only after the transaction holding its write has
// committed, so "returned nil" still means "on disk".
//
// Each write still has its own outcome. A group runs first without
// savepoints (a write alone in its group needs none: its transaction is
// its own); if one of several writes fails, the transaction is rolled back
// and the group runs again with each write in its own SAVEPOINT, where the
// one that fails is rolled back to it alone. Failures are rare (a full
// queue, an unknown device), so most groups pay no savepoint statement.
//
// Transactions in flight: one on SQLite (one writer). On PostgreSQL one
// per lane, store.lanes (pgGroups of them): a group's statements are round
// trips to the server, so one group at a time left the server waiting on
// the api and the api on the server (at 500 commands/s the api fell behind
// by seconds: docs/performance.md). Several in flight are safe there
// because a command group takes no change version — it locks no
// feed_state row — and what it reads to decide is locked first: a create
// locks its device's row (lockDeviceCommands) before it reads the next
// seq, the waiting count and the idempotency key, so creates of one device
// serialise and commit in seq order; dispatch marks and reports are
// conditional UPDATEs of command rows, which creates never lock.
//
// Lanes keep groups in flight from locking each other's rows in opposite
// orders. A create goes to the lane of its device (a hash; lanes 1..n-1),
// so two groups in flight never hold the same device, whatever the order
// of their writes; dispatch marks and reports, which touch the commands of
// many devices, share lane 0. Without lanes, groups of creates that met on
// a device deadlocked under load: PostgreSQL detects a deadlock only after
// deadlock_timeout (1 s), and a group that lost three times failed every
// write in it (measured: 3,326 answers 500 of 15,000 at 500 commands/s).
// A group PostgreSQL still aborts (a campaign's offers lock several
// devices outside the lanes) runs again, up to groupAttempts times.
//
// In each lane the first caller that finds no group running leads: it
// takes what is queued (itself included), runs it, commits, and hands the
// lead to the oldest caller still queued, so that no caller serves batches
// beyond its own. There is no goroutine to start or stop.

// maxGroup bounds the writes of one group transaction, so that a burst
// does not make one commit, and the wait of everyone in it, long.
const maxGroup = 256

// groupTimeout bounds one group transaction (SQLite's busy timeout is 10 s).
const groupTimeout = 30 * time.Second

// groupAttempts bounds the runs of a group that PostgreSQL aborted as a
// deadlock victim or a serialization failure.
const groupAttempts = 3

// pgGroups is how many group transactions run at once on PostgreSQL (its
// lanes): half the replica's connections (-db-max-conns), so that reads
// keep the other half, and at most 4 (beyond that, on a few cores, more
// transactions only mean more lock waits).
func pgGroups(maxConns int) int { return min(4, max(1, maxConns/2)) }

// lane is the queue of writes for device (db_group.go): lane 0 for the
// writes of many devices (device ""), else the device's by hash.
func (s *store) lane(device string) *grouper {
	n := len(s.lanes)
	if n == 1 || device == "" {
		return &s.lanes[0]
	}
	h := fnv.New32a()
	h.Write([]byte(device))
	return &s.lanes[1+int(h.Sum32()%uint32(n-1))]
}

// groupReq is one write waiting for its group.
type groupReq struct {
	ctx context.Context
	fn  func(*tx) error
	res chan error // its outcome, or errLead: it leads the next group
}

var errLead = errors.New("lead the next group")

// errWriteFailed rolls back a group run without savepoints in which a
// write failed (its error is in its outcome).
var errWriteFailed = errors.New("a write of the group failed")

// grouper queues the writes of writeGroup.
type grouper struct {
	mu    sync.Mutex
	busy  bool // a leader is running a group of this lane
	queue []*groupReq
}

// writeGroup runs fn in a write transaction shared with the writeGroup
// calls that queue meanwhile, and returns once that transaction has
// committed (nil) or fn's error, which rolls back fn's writes only. fn
// must use t.ctx (not a context of its own) for its statements: a
// cancelled statement on SQLite may abort the whole transaction, so t.ctx
// is not cancelled mid-statement; a caller gone before its turn is not
// run. fn may run more than once (a group run again); each run starts
// from the transaction as it is then, and only the last run's effects and
// outcome count. fn must take no change version (t.next): the group's
// transaction holds no feed_state lock.
//
// device names the one device whose rows fn locks (a create), which picks
// its lane; "" for a write that touches several (dispatch, reports).
func (s *store) writeGroup(ctx context.Context, device string, fn func(*tx) error) error {
	g := s.lane(device)
	r := &groupReq{ctx: ctx, fn: fn, res: make(chan error, 1)}
	g.mu.Lock()
	g.queue = append(g.queue, r)
	if g.busy {
		g.mu.Unlock()
		// Waits without ctx: a queued caller may be handed the lead, and
		// a leader must run. The group it is in is bounded.
		if err := <-r.res; err != errLead {
			return err
		}
		g.mu.Lock()
	}
	g.busy = true
	for r.pending() {
		n := min(len(g.queue), maxGroup)
		batch := g.queue[:n:n]
		g.queue = g.queue[n:]
		g.mu.Unlock()
		s.runGroup(batch)
		g.mu.Lock()
	}
	// Done with our own write: the oldest queued caller leads next.
	if len(g.queue) > 0 {
		g.queue[0].res <- errLead
	} else {
		g.busy = false
	}
	g.mu.Unlock()
	return <-r.res
}

// pending reports whether r has no outcome yet (it is still queued).
func (r *groupReq) pending() bool { return len(r.res) == 0 }

// runOne runs one write of a group; a panic in it is its caller's error,
// not the group's end (a leader that died mid-group would leave every
// later writer waiting for a lead that never comes).
func runOne(t *tx, fn func(*tx) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("grouped write panicked: %v", p)
		}
	}()
	return fn(t)
}

// runGroup runs batch in one transaction and gives each request its
// outcome.
func (s *store) runGroup(batch []*groupReq) {
	if s.groupSize != nil {
		s.groupSize(len(batch))
	}
	// The transaction outlives any one caller: it is not cancelled with
	// the leader's request, but bounded, since its callers wait for it
	// whatever their own contexts say.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(batch[0].ctx), groupTimeout)
	defer cancel()
	outs := make([]error, len(batch))
	if gone(batch) {
		for _, r := range batch {
			r.res <- r.ctx.Err() // nothing to write: no transaction
		}
		return
	}
	var err error
	for attempt := 1; ; attempt++ {
		err = s.runBatch(ctx, batch, outs, false)
		if err == errWriteFailed {
			if len(batch) == 1 {
				err = nil // alone: its transaction rolled back its write, outs[0] says why
			} else {
				err = s.runBatch(ctx, batch, outs, true)
			}
		}
		if !isRetryable(err) || attempt == groupAttempts {
			break
		}
		if s.groupRetries != nil {
			s.groupRetries()
		}
		s.log.Debug("api: a group of command writes runs again", "writes", len(batch), "attempt", attempt+1, "err", err)
	}
	for i, r := range batch {
		if err != nil {
			r.res <- err
		} else {
			r.res <- outs[i]
		}
	}
}

// gone reports whether every caller of batch left before its turn.
func gone(batch []*groupReq) bool {
	for _, r := range batch {
		if r.ctx.Err() == nil {
			return false
		}
	}
	return true
}

// runBatch runs batch in one transaction, each write's outcome in outs.
// Without savepoints, a failing write ends the run (errWriteFailed: the
// transaction rolled back). A write that failed as a deadlock victim fails
// the whole run with that error, to be run again.
func (s *store) runBatch(ctx context.Context, batch []*groupReq, outs []error, savepoints bool) error {
	return s.writeTx(ctx, false, func(t *tx) error {
		for i, r := range batch {
			outs[i] = nil
			if err := r.ctx.Err(); err != nil {
				outs[i] = err // the caller left before its turn: nothing to write
				continue
			}
			t.ctx = ctx
			if savepoints {
				if _, err := t.execW(`SAVEPOINT w`); err != nil {
					return fmt.Errorf("savepoint: %w", err)
				}
			}
			t.ctx, t.now = context.WithoutCancel(r.ctx), time.Now()
			notes := len(t.notes)
			err := runOne(t, r.fn)
			t.ctx = ctx
			if err != nil {
				outs[i] = err
				if isRetryable(err) {
					return err
				}
				if !savepoints {
					return errWriteFailed
				}
				t.notes = t.notes[:notes]
				if _, err := t.execW(`ROLLBACK TO SAVEPOINT w`); err != nil {
					return fmt.Errorf("rollback to savepoint: %w", err)
				}
			}
			if savepoints {
				if _, err := t.execW(`RELEASE SAVEPOINT w`); err != nil {
					return fmt.Errorf("release savepoint: %w", err)
				}
			}
		}
		return nil
	})
}
