package livefeed

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

// errNotBuilt is what the skeleton's Run and Ready return until the livefeed
// is written.
var errNotBuilt = errors.New("livefeed: not yet built")

// Feed is one livefeed process's worth of subscriptions, vehicle state and
// client server.
type Feed struct {
	cfg    Config
	logger *slog.Logger
	reg    prometheus.Registerer
}

// New checks cfg and returns a livefeed that logs to logger and registers its
// metrics with reg. A nil logger discards; a nil reg keeps the metrics
// unregistered. New opens nothing: [Feed.Run] does.
func New(cfg Config, logger *slog.Logger, reg prometheus.Registerer) (*Feed, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	return &Feed{cfg: cfg.clone(), logger: logger.With("component", "livefeed"), reg: reg}, nil
}

// Run subscribes and serves clients until ctx ends, then closes every client
// connection and subscription and returns nil. It returns an error when it
// cannot start or goes wrong.
func (f *Feed) Run(ctx context.Context) error {
	return errNotBuilt
}

// Ready reports whether the livefeed serves clients: nil once its server
// listens and it has subscribed, an error saying why not otherwise. It is
// cheap and never blocks, for /readyz.
func (f *Feed) Ready() error {
	return errNotBuilt
}
