package frontend

import (
	"context"
	"fmt"

	"github.com/drover-telemetry/drover/internal/forward"
	"github.com/drover-telemetry/drover/queue"
)

// drainer sends the queue's batches to the routers and removes them once a
// router has acked them. Run returns after ctx ends, having finished the
// acks in flight; it does not close the queue. *forward.Drainer is one.
type drainer interface {
	Run(ctx context.Context) error
}

// forwardDrainer is the default newDrainer: a forward.Drainer towards every
// router, named by the frontend's ID, lingering DrainLinger after a small
// batch, with forward's defaults for batch size, in-flight window, ack
// timeout and heartbeats.
func (f *Frontend) forwardDrainer(q *queue.Queue) (drainer, error) {
	linger := f.cfg.DrainLinger
	if linger <= 0 {
		linger = -1 // forward's "none"; its zero means its default
	}
	d, err := forward.NewDrainer(forward.DrainerConfig{
		Sender:  f.cfg.ID,
		Routers: f.cfg.Routers,
		Resolve: f.cfg.Resolve,
		Linger:  linger,
		Links:   f.cfg.Links,
	}, q, f.logger, f.reg)
	if err != nil {
		return nil, fmt.Errorf("new drainer: %w", err)
	}
	return d, nil
}
