package router

import (
	"context"
	"errors"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// Receiving: the socket's messages, each batch admitted in its sender's
// order (order.go) and stored by a goroutine of its own (ingest), and the
// replies: acks, busy, rejections.

// recvLoop takes messages off the socket. It never waits on the disk:
// batches are stored by goroutines of their own.
func (r *Router) recvLoop(ctx context.Context) {
	for {
		msg, err := r.sock.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			r.logger.Debug("router: receive", "err", err)
			continue
		}
		if len(msg.Frames) < 2 {
			r.bad(nil, forward.Message{}, errors.New("no identity or no header frame"))
			continue
		}
		id, frames := msg.Frames[0], msg.Frames[1:]
		m, err := forward.Decode(frames)
		if err != nil {
			if m.Type == forward.TypeBatch && errors.Is(err, forward.ErrMalformed) && m.Last >= m.First && m.First > 0 {
				r.m.rejected.WithLabelValues("malformed").Inc()
				r.reply(id, forward.Message{Type: forward.TypeReject, First: m.First, Last: m.Last, Reason: err.Error()})
			}
			r.bad(id, m, err)
			continue
		}
		switch m.Type {
		case forward.TypePing:
			// A stopping router stops answering: frontends see it go down.
			if r.Ready() == nil {
				r.reply(id, forward.Message{Type: forward.TypePong, Nonce: m.Nonce, Incarnation: r.incarnation, Router: r.cfg.ID})
			}
		case forward.TypeBatch:
			r.onBatch(id, m)
		default:
			r.bad(id, m, errors.New("unexpected message type from a frontend"))
		}
	}
}

func (r *Router) bad(id []byte, m forward.Message, err error) {
	reason := "malformed"
	switch {
	case errors.Is(err, forward.ErrVersion):
		reason = "version"
	case errors.Is(err, forward.ErrUnknownType):
		reason = "type"
	}
	r.m.badMessages.WithLabelValues(reason).Inc()
	r.logger.Warn("router: message dropped", "peer", string(id), "type", m.Type, "sender", m.Sender, "first", m.First, "last", m.Last, "err", err)
}

func (r *Router) onBatch(id []byte, m forward.Message) {
	r.m.batches.Inc()
	r.m.entries.Add(float64(len(m.Entries)))
	r.admit.Lock()
	defer r.admit.Unlock()
	if r.stopping {
		r.refuse(id, m, "stopping", nil)
		return
	}
	select {
	case r.slots <- struct{}{}:
	default:
		r.refuse(id, m, "overloaded", nil)
		return
	}
	r.m.pending.Inc()
	r.ingests.Add(1)
	if r.order == nil {
		r.order = make(map[string]*queue.Turn)
	}
	prev := r.order[m.Sender]
	mine := queue.NewTurn()
	r.order[m.Sender] = mine
	go r.ingest(id, m, prev, mine)
}

// refuse answers busy: the sender keeps the batch and resends it later.
func (r *Router) refuse(id []byte, m forward.Message, reason string, err error) {
	r.m.busy.WithLabelValues(reason).Inc()
	text := reason
	if err != nil {
		text = err.Error()
	}
	if r.busyLogged.CompareAndSwap(false, true) {
		r.logger.Warn("router: refusing batches (busy); frontends keep them and resend", "sender", m.Sender, "first", m.First, "last", m.Last, "reason", reason, "err", err)
	}
	r.reply(id, forward.Message{Type: forward.TypeBusy, First: m.First, Last: m.Last, Reason: text})
}

func (r *Router) reject(id []byte, m forward.Message, reason string, err error) {
	r.m.rejected.WithLabelValues(reason).Inc()
	r.logger.Error("router: batch rejected", "sender", m.Sender, "first", m.First, "last", m.Last, "err", err)
	r.reply(id, forward.Message{Type: forward.TypeReject, First: m.First, Last: m.Last, Reason: err.Error()})
}

func (r *Router) reply(id []byte, m forward.Message) {
	frames, err := m.Frames()
	if err != nil {
		r.logger.Error("router: encode reply", "type", m.Type, "err", err) // a bug
		return
	}
	r.replies.push(append([][]byte{id}, frames...))
}
