package storagewriter

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// errNotBuilt is what the skeleton's Run and Ready return until the writer is
// written.
var errNotBuilt = errors.New("storage-writer: not yet built")

// Writer is one durable subscriber with its queue and sink.
type Writer struct {
	cfg    Config
	logger *slog.Logger
	reg    prometheus.Registerer
}

// New checks cfg and returns a writer that logs to logger and registers its
// metrics with reg. Its metrics carry a "writer" label set to its subscriber
// name, so that several writers can share one registry (drover all). A nil
// logger discards; a nil reg keeps the metrics unregistered. New opens
// nothing: [Writer.Run] does.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Writer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.clone()
	cfg.Name = cfg.SubscriberName()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"writer": cfg.Name}, reg)
	return &Writer{
		cfg:    cfg,
		logger: logger.With("component", "storage-writer", "writer", cfg.Name, "sink", cfg.Sink),
		reg:    reg,
	}, nil
}

// Name returns the durable subscriber name the writer uses.
func (w *Writer) Name() string { return w.cfg.Name }

// Run subscribes, queues, acks and writes to the sink until ctx ends, then
// closes its subscriptions, flushes what the sink accepts in time, closes the
// queue, and returns nil. It returns an error when it cannot start or goes
// wrong; a failing sink is not such an error (the queue grows, and metrics
// and logs say so).
func (w *Writer) Run(ctx context.Context) error {
	return errNotBuilt
}

// Ready reports whether the writer accepts and acks batches: nil once its
// queue is open and it has subscribed, an error saying why not otherwise. A
// failing sink does not make it unready. It is cheap and never blocks, for
// /readyz.
func (w *Writer) Ready() error {
	return errNotBuilt
}
