package router

// A sender's batches take their places in the main queue in the order they
// arrived (see ingest).

import "github.com/drover-telemetry/drover/queue"

// endTurn marks mine placed and forgets the sender's order if mine is its
// last batch, so that the map holds only senders with batches in flight.
func (r *Router) endTurn(sender string, mine *queue.Turn) {
	mine.Placed()
	r.admit.Lock()
	if r.order[sender] == mine {
		delete(r.order, sender)
	}
	r.admit.Unlock()
}
