package router

// A sender's batches take their places in the main queue in the order they
// arrived (see ingest).

import "sync"

// turn is one batch's place in its sender's order: placed is closed once
// the batch has its place in the main queue (its last append begun), or
// needs none (duplicates, refused, rejected).
type turn struct {
	placed chan struct{}
	once   sync.Once
}

func (t *turn) done() { t.once.Do(func() { close(t.placed) }) }

// endTurn marks mine placed and forgets the sender's order if mine is its
// last batch, so that the map holds only senders with batches in flight.
func (r *Router) endTurn(sender string, mine *turn) {
	mine.done()
	r.admit.Lock()
	if r.order[sender] == mine {
		delete(r.order, sender)
	}
	r.admit.Unlock()
}
