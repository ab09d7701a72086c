package queue

import (
	"context"
	"sync"
)

// Tail follows what is committed to a queue from the moment it was made,
// independently of the consumer: it reads the segment files with a cursor
// of its own, and neither holds nor removes anything. A consumer that must
// not wait for its own acks to see new entries (the router's live lane,
// which goes on while the durable fan-out is blocked) reads a Tail.
//
// A Tail is best effort: when it falls so far behind that the consumer has
// removed a whole segment it had not read yet, it skips that segment. Each
// committed record is returned at most once by one Tail. Entries are
// copies: they stay valid after the queue removes them.
type Tail struct {
	q      *Queue
	mu     sync.Mutex
	rd     segReader
	peeked *inflight
}

// Tail returns a Tail that starts at the end of what is committed now.
func (q *Queue) Tail() *Tail {
	q.rmu.Lock()
	committed := q.committed
	q.rmu.Unlock()
	return &Tail{q: q, rd: segReader{segDir: q.segDir, cursor: committed}}
}

// Next returns the entries of the next committed records, whole records up
// to maxBytes of entry data and at least one, blocking until there are
// some. It returns ctx's error when ctx ends first, and ErrClosed once the
// queue is closed.
func (t *Tail) Next(ctx context.Context, maxBytes int) ([]Entry, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for {
		t.q.rmu.Lock()
		if t.q.rclosed {
			t.q.rmu.Unlock()
			return nil, ErrClosed
		}
		committed, avail := t.q.committed, t.q.avail
		t.q.rmu.Unlock()
		// The files are read outside the queue's lock: nothing before the
		// committed end changes but delete markers, which the reader skips.
		var out []Entry
		n := 0
		for {
			r := t.peeked
			t.peeked = nil
			if r == nil {
				var err error
				if r, err = t.rd.next(committed); err != nil {
					return out, err
				}
				if r == nil {
					break
				}
			}
			if len(out) > 0 && n+int(r.bytes) > maxBytes {
				t.peeked = r
				break
			}
			out = append(out, r.entries...) // filler records add nothing
			n += int(r.bytes)
		}
		if len(out) > 0 {
			return out, nil
		}
		select {
		case <-avail:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Close releases the Tail's file. Next must not be called after.
func (t *Tail) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rd.close()
}
