package api

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Group commit for the small, frequent writes of commands (creates, the
// marks of a dispatch, the reports of devices). Each of them alone is a
// transaction whose commit is an fsync; on SQLite they queue behind one
// writer connection, and on PostgreSQL behind the feed_state row every
// write transaction locks. At hundreds of commands per second that queue
// is the round trip's latency (docs/performance.md, "Commands round
// trip"). writeGroup runs the writes that arrive while one commit is in
// progress together in the next transaction: one commit, one fsync, for
// all of them. Each still has its own outcome: it runs inside a SAVEPOINT,
// and one that fails is rolled back to it alone (a write alone in its
// group needs none: its transaction is its own). A caller returns only
// after the transaction holding its write has committed, so "returned
// nil" still means "on disk".
//
// The first caller that finds no commit in progress leads: it takes what
// is queued (itself included), runs it, commits, and hands the lead to the
// oldest caller still queued, so that no caller serves batches beyond its
// own. There is no goroutine to start or stop.

// maxGroup bounds the writes of one group transaction, so that a burst
// does not make one commit, and the wait of everyone in it, long.
const maxGroup = 256

// groupTimeout bounds one group transaction (SQLite's busy timeout is 10 s).
const groupTimeout = 30 * time.Second

// groupReq is one write waiting for its group.
type groupReq struct {
	ctx context.Context
	fn  func(*tx) error
	res chan error // its outcome, or errLead: it leads the next group
}

var errLead = errors.New("lead the next group")

// grouper queues the writes of writeGroup.
type grouper struct {
	mu    sync.Mutex
	busy  bool // a leader is running a group
	queue []*groupReq
}

// writeGroup runs fn in a write transaction shared with the writeGroup
// calls that queue meanwhile, and returns once that transaction has
// committed (nil) or fn's error, which rolls back fn's writes only. fn
// must use t.ctx (not a context of its own) for its statements: a
// cancelled statement on SQLite may abort the whole transaction, so t.ctx
// is not cancelled mid-statement; a caller gone before its turn is not
// run.
func (s *store) writeGroup(ctx context.Context, fn func(*tx) error) error {
	g := &s.group
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
	if len(batch) == 1 {
		// Alone in its group: its error rolls back the transaction, which
		// holds nothing else, so it needs no savepoint (two statements
		// fewer, and most groups are one write when the load is light).
		r := batch[0]
		err := r.ctx.Err()
		if err == nil {
			err = s.write(ctx, func(t *tx) error {
				t.ctx = context.WithoutCancel(r.ctx)
				return runOne(t, r.fn)
			})
		}
		r.res <- err
		return
	}
	err := s.write(ctx, func(t *tx) error {
		for i, r := range batch {
			outs[i] = nil
			if err := r.ctx.Err(); err != nil {
				outs[i] = err // the caller left before its turn: nothing to write
				continue
			}
			t.ctx = ctx
			if _, err := t.execW(`SAVEPOINT w`); err != nil {
				return fmt.Errorf("savepoint: %w", err)
			}
			t.ctx, t.now = context.WithoutCancel(r.ctx), time.Now()
			version := t.version
			err := runOne(t, r.fn)
			t.ctx = ctx
			if err != nil {
				outs[i] = err
				t.version = version
				if _, err := t.execW(`ROLLBACK TO SAVEPOINT w`); err != nil {
					return fmt.Errorf("rollback to savepoint: %w", err)
				}
			}
			if _, err := t.execW(`RELEASE SAVEPOINT w`); err != nil {
				return fmt.Errorf("release savepoint: %w", err)
			}
		}
		return nil
	})
	for i, r := range batch {
		if err != nil {
			r.res <- err
		} else {
			r.res <- outs[i]
		}
	}
}
