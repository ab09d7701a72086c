package router

// Replies to frontends: one writer of the ROUTER socket, fed by a queue of reply frames.

import (
	"sync"

	"github.com/go-zeromq/zmq4"
)

func (r *Router) writeLoop() {
	for {
		batch, ok := r.replies.wait()
		if !ok {
			return
		}
		for _, frames := range batch {
			// An error here is a frontend that went away: it resends what
			// it did not hear about.
			if err := r.sock.Send(zmq4.NewMsgFrom(frames...)); err != nil {
				r.logger.Debug("router: reply not sent", "peer", string(frames[0]), "err", err)
			}
		}
	}
}

// replyQueue hands replies from the receive loop and the store goroutines
// to the single writer; pushing never blocks.
type replyQueue struct {
	mu     sync.Mutex
	q      [][][]byte
	kick   chan struct{}
	closed bool
}

func (rq *replyQueue) init() { rq.kick = make(chan struct{}, 1) }

func (rq *replyQueue) push(frames [][]byte) {
	rq.mu.Lock()
	if rq.closed {
		rq.mu.Unlock()
		return
	}
	rq.q = append(rq.q, frames)
	rq.mu.Unlock()
	select {
	case rq.kick <- struct{}{}:
	default:
	}
}

// wait returns what was pushed, blocking while there is nothing; ok is
// false once the queue is closed and empty.
func (rq *replyQueue) wait() (batch [][][]byte, ok bool) {
	for {
		rq.mu.Lock()
		batch, rq.q = rq.q, nil
		closed := rq.closed
		rq.mu.Unlock()
		if len(batch) > 0 {
			return batch, true
		}
		if closed {
			return nil, false
		}
		<-rq.kick
	}
}

func (rq *replyQueue) close() {
	rq.mu.Lock()
	rq.closed = true
	rq.mu.Unlock()
	select {
	case rq.kick <- struct{}{}:
	default:
	}
}
